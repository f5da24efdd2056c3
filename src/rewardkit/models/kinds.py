"""The registry of model kinds, keyed by the `rewardkit.kind` a saved folder carries in its config.json.

A kind names the head a `RewardModel` is built with (and so what is saved beside the HF weights). Adding a
kind is one new module with its head class plus one line here; loading and saving never branch on kinds.
"""

from __future__ import annotations

import importlib
from typing import Any

# kind -> "module:class" of its head, imported when first used
KINDS: dict[str, str] = {
    "scalar": "rewardkit.models.heads:ScalarHead",
    "multi_objective": "rewardkit.models.heads:AttributeHead",
    "prm": "rewardkit.models.prm:StepHead",
    "pairrm": "rewardkit.models.pairrm:PairHead",
}


def kind_of(saved: dict[str, Any]) -> str:
    """The kind of a saved `rewardkit` config block; folders written before kinds were saved are told apart
    by their multi-objective block."""
    kind = saved.get("kind") or ("multi_objective" if saved.get("multi_objective") else "scalar")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} in config.json; this rewardkit knows: {', '.join(KINDS)}")
    return kind


def head_class(kind: str) -> type:
    """The head class registered for `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS)}")
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
