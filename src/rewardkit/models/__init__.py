"""Reward models: a backbone composed with a head; `kinds` maps saved folders to heads."""

from rewardkit.models.heads import READOUTS
from rewardkit.models.reward_model import RewardModel

__all__ = ["READOUTS", "RewardModel"]
