"""Reward shaping for RLHF: pure torch functions, no state.

Conventions: B = batch of responses, T = response tokens; `mask` is 1 on real response tokens.
KL estimators follow Schulman, "Approximating KL Divergence" (2020): samples come from the policy and
r = p_ref(x) / p_policy(x), so log r = ref_logp - logp. Everything computes in float32 at least (bf16 log-probs
as vLLM returns them lose the KL penalty against a score of 3, and a bf16 1 - 1e-6 is 1), like OpenRLHF's
`compute_approx_kl`.
"""

from __future__ import annotations

import torch

__all__ = ["logit", "whiten", "llama2_select", "kl_k1", "kl_k2", "kl_k3", "kl_estimate", "kl_penalized_rewards",
           "KL_ESTIMATORS"]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 at least (float64 stays)."""
    return x if x.dtype == torch.float64 else x.float()


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse sigmoid, any shape, float32 at least; p is clamped to [eps, 1 - eps] so 0 and 1 stay finite."""
    p = _wide(p).clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, *, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries, any shape; masked-out entries come back unchanged.

    The variance is unbiased (Bessel-corrected), as in TRL's `masked_whiten`. With shift_mean=False
    the mean is added back, so only the scale changes (what PPO does to advantages it must not shift).
    """
    x = _wide(x)
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    mask = mask.bool()
    n = mask.sum()
    if n < 2:
        raise ValueError(f"whiten needs at least 2 unmasked values, got {int(n)}")
    vals = x[mask]
    mean = vals.mean()
    var = ((vals - mean) ** 2).sum() / (n - 1)
    kept = torch.where(mask, x, mean)  # a NaN in a masked-out entry must not reach the others' gradients
    out = (kept - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, x)


def llama2_select(safety: torch.Tensor, helpfulness: torch.Tensor, is_safety: torch.Tensor,
                  threshold: float = 0.15) -> torch.Tensor:
    """Llama 2's reward choice (Touvron et al. 2023, eq. 2), shape (B,).

    `safety if is_safety(prompt) or safety < threshold else helpfulness`; the scores are probabilities
    (sigmoid of the reward models' outputs) and the paper then uses whiten(logit(selected)).
    """
    use_safety = is_safety.bool() | (safety < threshold)
    return torch.where(use_safety, safety, helpfulness)


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """-log r = logp - ref_logp: unbiased, high variance, can be negative."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """0.5 (log r)^2: low variance, biased, never negative."""
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(r - 1) - log r: unbiased and never negative."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || ref) estimate, same shape as logp, e.g. (B, T), in float32 at least."""
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose from {', '.join(KL_ESTIMATORS)}") from None
    return fn(_wide(logp), _wide(ref_logp))


def kl_penalized_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                         beta: float | torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token PPO rewards (B, T), float32 at least: -beta * KL on every response token, plus `score` (B,)
    on the last one. `beta`: a number, or one per row (B,).

    The last token is each row's last mask-1 position (any padding side), as OpenRLHF's `compute_reward`
    and TRL place it. Rows with an empty mask get all zeros, and masked-out positions are 0 whatever their
    log-probs hold (a -inf on a pad token would otherwise give NaN).
    """
    score, logp, ref_logp, mask = (torch.as_tensor(x) for x in (score, logp, ref_logp, mask))
    if isinstance(beta, (list, tuple)):
        beta = torch.tensor(beta, dtype=torch.float32)
    if score.shape != logp.shape[:1] or logp.shape != ref_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"shapes: score {tuple(score.shape)} must be (B,), logp {tuple(logp.shape)}, "
                         f"ref_logp {tuple(ref_logp.shape)} and mask {tuple(mask.shape)} must be (B, T)")
    if isinstance(beta, torch.Tensor) and beta.dim() == 1:
        if beta.shape != score.shape:
            raise ValueError(f"beta per row must be (B,) = {tuple(score.shape)}, got {tuple(beta.shape)}")
        beta = beta[:, None]  # (B,) would broadcast over tokens, not rows
    on = mask.bool()
    rewards = torch.where(on, -beta * kl_estimate(logp, ref_logp, estimator), 0.0)
    t = mask.shape[1]
    last = t - 1 - on.long().fliplr().argmax(dim=1)  # (B,) the last token the mask keeps (any non-zero)
    bonus = torch.where(on.any(dim=1), score.to(rewards.dtype), 0.0)
    return rewards.scatter_add(1, last[:, None], bonus[:, None])
