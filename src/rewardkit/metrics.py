"""Pure metrics over reward tensors (no model, no I/O)."""

from __future__ import annotations

import torch


def pairwise_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy and reward statistics for pairs. chosen, rejected: (B,).

    A tie (rc == rr) counts as wrong, so a constant model scores 0, not 0.5.
    """
    chosen, rejected = chosen.double(), rejected.double()
    delta = chosen - rejected
    both = torch.cat([chosen, rejected])
    n = int(chosen.numel())
    return {
        "accuracy": float((delta > 0).double().mean()) if n else float("nan"),
        "n": n,
        "ties": int((delta == 0).sum()),
        "margin_mean": float(delta.mean()) if n else float("nan"),
        "chosen_mean": float(chosen.mean()) if n else float("nan"),
        "rejected_mean": float(rejected.mean()) if n else float("nan"),
        "reward_mean": float(both.mean()) if n else float("nan"),
        "reward_std": float(both.std(unbiased=False)) if n else float("nan"),
    }
