"""Reward-model losses: pure functions of reward tensors (imports torch only; no model, no I/O).

Families, by the data they need (shapes in each docstring):
  pairwise   (chosen (B,), rejected (B,), *, margin=None, **hp) -> (B,)   `bt`, `logexp`, `internlm2`
  token      per-token values of chosen and rejected -> (B,)               `token`
  K-wise     rewards (P, K), preference (P, K), mask (P, K) -> (P,)        `kwise`
  pointwise  reward (N,), target (N,) -> (N,)                              `binary`, `regression`
  multi-objective  attribute regression -> (), gated Bradley-Terry -> (B,) `attributes`, `gating`
  stepwise   step logits (N, S), labels (N, S), mask (N, S) -> (N, S)      `prm`
  pairwise ranker  logits of both orders (B,), (B,) -> (B,)                `pairrm`
  generative judge label scores (N, L), right label (N,) -> (N,)          `judge`
Per-example losses are returned unreduced; the caller takes the mean. `center_penalty` (reward
centering) can be added to any pairwise loss. Look a loss up by name with `get_loss`: an unknown name
is an error that lists the choices, never a silent fallback to another loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[..., torch.Tensor]
PENALTIES = ("log_barrier", "l2", "none")
_BARRIER = 5.0  # InternLM2 keeps scores inside (-5, 5)
_BARRIER_EPS = 1e-3


def _delta(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None) -> torch.Tensor:
    d = chosen - rejected
    return d if margin is None else d - margin


# --------------------------------------------------------------------------- pairwise

def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | None = None) -> torch.Tensor:
    """`-logsigmoid(rc - rr - m)`, shape (B,). InstructGPT (Ouyang et al. 2022); margin: Llama 2 (Touvron et al. 2023)."""
    return -F.logsigmoid(_delta(chosen, rejected, margin))


def log_exp(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | None = None) -> torch.Tensor:
    """`log(1 + exp(rr - rc + m))`, shape (B,). Anthropic (Askell et al. 2021), computed as softplus so it
    stays finite for any |rc - rr|. Mathematically equal to `bradley_terry`."""
    return F.softplus(-_delta(chosen, rejected, margin))


def score_penalty(scores: torch.Tensor, kind: str = "log_barrier") -> torch.Tensor:
    """Elementwise penalty on raw scores, same shape as `scores` (InternLM2, Cai et al. 2024, arXiv 2403.17297).

    log_barrier: `-(log(5 - s) + log(s + 5))` with s clamped to [-5 + 1e-3, 5 - 1e-3] (finite everywhere;
                 no gradient outside the clamp, as in the authors' XTuner code);
    l2: `s**2`;  none: 0.
    """
    if kind == "log_barrier":
        s = scores.clamp(-_BARRIER + _BARRIER_EPS, _BARRIER - _BARRIER_EPS)
        return -(torch.log(_BARRIER - s) + torch.log(s + _BARRIER))
    if kind == "l2":
        return scores ** 2
    if kind == "none":
        return torch.zeros_like(scores)
    raise ValueError(f"unknown penalty {kind!r}; choose from: {', '.join(PENALTIES)}")


def internlm2(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | None = None,
              gamma: float = 2.0, penalty: str = "log_barrier", penalty_weight: float = 0.01) -> torch.Tensor:
    """Difficulty-decay ranking loss plus a score penalty, shape (B,) (InternLM2, arXiv 2403.17297).

    With d = rc - rr - m and P = sigmoid(d):
      `-(1 - 2 * max(0, P - 1/2))**gamma * logsigmoid(d) + penalty_weight * (pen(rc) + pen(rr))`
    Easy pairs (P near 1) are down-weighted. The penalty covers every score (both of each pair), so the
    batch mean equals the authors' sum over 2B scores divided by B. See `score_penalty` for `pen`.
    """
    if penalty not in PENALTIES:
        raise ValueError(f"unknown penalty {penalty!r}; choose from: {', '.join(PENALTIES)}")
    d = _delta(chosen, rejected, margin)
    decay = (1 - 2 * torch.relu(torch.sigmoid(d) - 0.5)) ** gamma
    rank = -decay * F.logsigmoid(d)
    if penalty == "none" or penalty_weight == 0:
        return rank
    return rank + penalty_weight * (score_penalty(chosen, penalty) + score_penalty(rejected, penalty))


def center_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Reward centering `(rc + rr)^2`, shape (B,) (Eisenstein et al. 2023, arXiv 2312.09244).
    Add `coef * mean(...)` to any pairwise loss to keep rewards near zero."""
    return (chosen + rejected) ** 2


# --------------------------------------------------------------------------- token level

def first_divergence(chosen_ids: torch.Tensor, rejected_ids: torch.Tensor, chosen_lengths: torch.Tensor,
                     rejected_lengths: torch.Tensor) -> torch.Tensor:
    """Index of the first token where two right-padded sequences differ, shape (B,) long.

    chosen_ids, rejected_ids: (B, T); lengths: (B,) real tokens. When one sequence is a prefix of the
    other (or they are equal) the answer is the shorter length.
    """
    t = torch.arange(chosen_ids.shape[1], device=chosen_ids.device)
    shorter = torch.minimum(chosen_lengths, rejected_lengths)
    differs = (chosen_ids != rejected_ids) & (t < shorter[:, None])
    first = torch.where(differs, t, chosen_ids.shape[1]).min(dim=1).values
    return torch.minimum(first, shorter)


def token_level(chosen_values: torch.Tensor, rejected_values: torch.Tensor, chosen_lengths: torch.Tensor,
                rejected_lengths: torch.Tensor, start: torch.Tensor, *, margin: torch.Tensor | None = None,
                ) -> torch.Tensor:
    """Token-level pairwise loss, shape (B,) (DeepSpeed-Chat's RM loss, Yao et al. 2023, arXiv 2308.01320).

    chosen_values, rejected_values: (B, T) per-token values of right-padded sequences; lengths (B,);
    start (B,): first differing token (`first_divergence`). For every position t in [start, max(lc, lr)):
      `-logsigmoid(vc[min(t, lc - 1)] - vr[min(t, lr - 1)] - m)`, averaged per pair.
    Padding is never read: past its end the shorter sequence keeps its last (final-reward) value. A pair
    with no compared position (identical sequences) has loss 0.
    """
    t = torch.arange(chosen_values.shape[1], device=chosen_values.device)[None, :]  # (1, T)
    vc = chosen_values.gather(1, torch.minimum(t, chosen_lengths[:, None] - 1).expand_as(chosen_values))
    vr = rejected_values.gather(1, torch.minimum(t, rejected_lengths[:, None] - 1).expand_as(rejected_values))
    d = vc - vr if margin is None else vc - vr - margin[:, None]
    end = torch.maximum(chosen_lengths, rejected_lengths)[:, None]
    keep = ((t >= start[:, None]) & (t < end)).to(d.dtype)
    return (-F.logsigmoid(d) * keep).sum(1) / keep.sum(1).clamp(min=1)


# --------------------------------------------------------------------------- K-wise rankings

def kwise_bt(rewards: torch.Tensor, preference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry over all ordered pairs of each prompt's completions, shape (P,) (InstructGPT,
    Ouyang et al. 2022, arXiv 2203.02155: `-1/C(K,2) * sum log sigmoid(r_w - r_l)`).

    rewards: (P, K); preference: (P, K), higher = better (pass -rank for ranks); mask: (P, K) bool, False
    for padding when prompts have fewer than K completions. Ties (equal preference) are skipped; the
    mean is over the remaining pairs. A prompt with no ordered pair has loss 0.
    """
    d = rewards[:, :, None] - rewards[:, None, :]  # (P, K, K): r_i - r_j
    valid = mask[:, :, None] & mask[:, None, :] & (preference[:, :, None] > preference[:, None, :])
    valid = valid.to(rewards.dtype)
    return (-F.logsigmoid(d) * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)


# --------------------------------------------------------------------------- pointwise

def binary(reward: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the scalar reward as a logit, shape (N,): `-[y log s(r) + (1-y) log(1-s(r))]`
    with y in {0, 1} (accept / reject; the "2-class" reward model, e.g. Askell et al. 2021). Stable for
    any |r|."""
    return F.binary_cross_entropy_with_logits(reward, label.to(reward.dtype), reduction="none")


def regression(pred: torch.Tensor, target: torch.Tensor, *, huber_delta: float | None = None) -> torch.Tensor:
    """Squared error `(r - y)**2`, shape (N,); with `huber_delta` the Huber loss
    (`0.5 (r - y)**2` if |r - y| <= delta else `delta (|r - y| - 0.5 delta)`, Huber 1964)."""
    if huber_delta is None:
        return (pred - target) ** 2
    return F.huber_loss(pred, target.to(pred.dtype), reduction="none", delta=huber_delta)


# --------------------------------------------------------------------------- multi-objective

def attribute_regression(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked squared error over attributes, a scalar: `sum(mask * (pred - target)**2) / sum(mask)`
    (ArmoRM stage 1, Wang et al. 2024, arXiv 2406.12845).

    pred, target: (N, A); mask: (N, A) bool, False where the label is missing (target may be NaN
    there: it is never read, so gradients stay finite). 0 when nothing is observed.
    """
    filled = torch.where(mask, target.to(pred.dtype), pred.detach())
    err = torch.where(mask, (pred - filled) ** 2, torch.zeros_like(pred))
    return err.sum() / mask.sum().clamp(min=1)


def gated_scores(attributes: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Final multi-objective score `sum_i gate_i * attribute_i`, shape (N,). attributes, gate: (N, A)."""
    return (attributes * gate).sum(-1)


def gating_bt(chosen_attributes: torch.Tensor, rejected_attributes: torch.Tensor, gate: torch.Tensor, *,
              margin: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry on gate-weighted attribute scores, shape (B,) (ArmoRM stage 2, arXiv 2406.12845).

    chosen_attributes, rejected_attributes: (B, A); gate: (B, A), computed from the shared prompt so the
    same weights score both responses. `-logsigmoid(g.ac - g.ar - m)`.
    """
    return bradley_terry(gated_scores(chosen_attributes, gate), gated_scores(rejected_attributes, gate),
                         margin=margin)


def pairrm_bce(ab: torch.Tensor, ba: torch.Tensor) -> torch.Tensor:
    """Pairwise ranker (PairRM, Jiang et al. 2023): BCE on each pair in both orders, shape (B,).
    ab: (B,) logits of (prompt, chosen, rejected), label 1; ba: (B,) of (prompt, rejected, chosen), label 0.
    `(softplus(-ab) + softplus(ba)) / 2`, finite for any logits."""
    return (F.softplus(-ab) + F.softplus(ba)) / 2


def judge_ce(label_scores: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Generative judges: cross-entropy over the label tokens only (the answer restricted to "A"/"B"), (N,).
    label_scores: (N, L) next-token logits of each label; answers: (N,) long, the right label's index."""
    low = label_scores.dtype in (torch.float16, torch.bfloat16)  # softmax in fp32 at least, fp64 stays fp64
    return F.cross_entropy(label_scores.float() if low else label_scores, answers, reduction="none")


def step_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Process reward models: BCE of each step's logit against its label (1 = correct step), shape (N, S),
    0 where `mask` (N, S) is False. One logit per step; 2-class cross-entropy is the same loss."""
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return loss * mask.to(loss.dtype)


PAIRWISE_LOSSES: dict[str, Loss] = {"bt": bradley_terry, "logexp": log_exp, "internlm2": internlm2}
LOSSES: dict[str, Loss] = {**PAIRWISE_LOSSES, "token": token_level, "kwise": kwise_bt, "binary": binary,
                           "regression": regression, "attributes": attribute_regression, "gating": gating_bt,
                           "prm": step_bce,
                           "pairrm": pairrm_bce,
                           "judge": judge_ce}

LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)  # the one list of loss names (config reads it from this source)


def get_loss(name: str) -> Loss:
    """The loss registered as `name`; unknown names raise and list the choices."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from: {', '.join(sorted(LOSSES))}") from None
