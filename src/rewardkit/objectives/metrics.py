"""Task metrics of the non-pairwise objectives (pure, over tensors): ranking accuracy, regression error,
AUC. Pairwise accuracy and Spearman live in `rewardkit.metrics`."""

from __future__ import annotations

import torch

from rewardkit.metrics import average_ranks


def ranking_stats(rewards: torch.Tensor, preference: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Pairwise accuracy within each prompt's completions. rewards, preference: (P, K); mask: (P, K) bool.

    Over the ordered pairs (preference_i > preference_j; ties in preference skipped), a pair is right when
    reward_i > reward_j (a reward tie is wrong). `accuracy` averages each prompt's share of right pairs
    over the prompts that have pairs; `pair_accuracy` pools all pairs.
    """
    r, p = rewards.double(), preference.double()
    pairs = mask[:, :, None] & mask[:, None, :] & (p[:, :, None] > p[:, None, :])
    right = pairs & (r[:, :, None] > r[:, None, :])
    per_prompt, n_right = pairs.sum((1, 2)), right.sum((1, 2))
    has = per_prompt > 0
    return {
        "accuracy": float((n_right[has] / per_prompt[has]).mean()) if has.any() else float("nan"),
        "pair_accuracy": float(n_right.sum() / per_prompt.sum()) if has.any() else float("nan"),
        "prompts": int(has.sum()),
        "pairs": int(per_prompt.sum()),
    }


def regression_stats(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MSE, MAE and Pearson correlation of predictions (N,) against numeric targets (N,)."""
    p, t = pred.double(), target.double()
    pc, tc = p - p.mean(), t - t.mean()
    denom = (pc.norm() * tc.norm()).item()
    return {"mse": float(((p - t) ** 2).mean()), "mae": float((p - t).abs().mean()),
            "pearson": float((pc * tc).sum() / denom) if denom > 0 else float("nan"), "n": int(p.numel())}


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of scores (N,) for 0/1 labels (N,) (Mann-Whitney U; tied scores count one half)."""
    y = labels.bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(scores)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AUC, accuracy of `logit > 0` and positive rate for 0/1 labels. logits, labels: (N,)."""
    y = labels.bool()
    return {"auc": auc(logits, labels), "accuracy": float(((logits > 0) == y).double().mean()),
            "positive_rate": float(y.double().mean()), "n": int(y.numel())}
