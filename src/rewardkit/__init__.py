"""rewardkit: train, evaluate and serve reward models for RLHF.

Importing the package is cheap: heavy modules (torch models, accelerate) load when first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RewardModel", "RewardScorer", "Scorer", "TrainRunConfig", "train", "evaluate", "__version__"]

_LAZY = {
    "RewardModel": ("rewardkit.models.reward_model", "RewardModel"),
    "RewardScorer": ("rewardkit.scoring", "RewardScorer"),
    "Scorer": ("rewardkit.scoring", "Scorer"),
    "TrainRunConfig": ("rewardkit.config", "TrainRunConfig"),
    "train": ("rewardkit.train", "train"),
    "evaluate": ("rewardkit.eval.evaluate", "evaluate"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'rewardkit' has no attribute {name!r}")
