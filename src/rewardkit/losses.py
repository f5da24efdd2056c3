"""Pairwise reward-model losses: pure functions of the chosen and rejected rewards.

Each loss takes `chosen`, `rejected` of shape (B,) and a keyword `margin` (B,) or None, and returns the
per-pair loss (B,); the caller reduces. Look losses up by name with `get_loss`, which refuses unknown
names instead of falling back to another loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[..., torch.Tensor]


def _delta(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None) -> torch.Tensor:
    d = chosen - rejected
    return d if margin is None else d - margin


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | None = None) -> torch.Tensor:
    """`-logsigmoid(rc - rr - m)`, shape (B,). InstructGPT (Ouyang et al. 2022); margin: Llama 2 (Touvron et al. 2023)."""
    return -F.logsigmoid(_delta(chosen, rejected, margin))


def log_exp(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | None = None) -> torch.Tensor:
    """`log(1 + exp(rr - rc + m))`, shape (B,). Anthropic (Askell et al. 2021), computed as softplus so it
    stays finite for any |rc - rr|. Mathematically equal to `bradley_terry`."""
    return F.softplus(-_delta(chosen, rejected, margin))


def center_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Reward centering `(rc + rr)^2`, shape (B,) (Eisenstein et al. 2023, arXiv 2312.09244).
    Add `coef * mean(...)` to any pairwise loss to keep rewards near zero."""
    return (chosen + rejected) ** 2


LOSSES: dict[str, Loss] = {"bt": bradley_terry, "logexp": log_exp}


def get_loss(name: str) -> Loss:
    """The loss registered as `name`; unknown names raise and list the choices."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from: {', '.join(sorted(LOSSES))}") from None
