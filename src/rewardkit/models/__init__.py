"""Reward models: backbone + value head."""

from rewardkit.models.reward_model import READOUTS, RewardModel

__all__ = ["READOUTS", "RewardModel"]
