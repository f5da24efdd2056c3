"""Pointwise objectives: one response at a time with an accept/reject label (`binary`) or a numeric score
(`regression`). Data rows: prompt + response + label / score (see `rewardkit.data.targets`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from rewardkit.batches import StepOutput, TargetBatch
from rewardkit.config import TrainRunConfig
from rewardkit.data.collators import TargetCollator
from rewardkit.data.targets import TokenizedTarget, point_example, tokenize_targets
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.losses import binary, regression
from rewardkit.metrics import binary_stats, regression_stats, reward_stats
from rewardkit.models.reward_model import RewardModel
from rewardkit.objectives.base import BaseObjective, ObjectiveData, load_tokenized
from rewardkit.scoring import score_sequences


class PointwiseObjective(BaseObjective):
    """`binary`: BCE with the scalar reward as the logit, metric AUC. `regression`: squared error (or Huber)
    against the score, metric MSE; with `loss.normalize_labels` the model fits (score - mean) / std of the
    training scores, and mean/std are saved in config.json (`rewardkit.objective`)."""

    unit = "sequences"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name
        self.metric = "auc" if name == "binary" else "mse"
        self.huber_delta = cfg.loss.huber_delta
        self.normalize = cfg.loss.normalize_labels
        self.label_mean, self.label_std = 0.0, 1.0

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        return load_tokenized(cfg, encoder, functools.partial(point_example, kind=self.name), tokenize_targets,
                              "rows")

    def prepare(self, model: RewardModel, train: list[TokenizedTarget], *, pad_id: int, batch_size: int,
                device: torch.device | str) -> None:
        super().prepare(model, train, pad_id=pad_id, batch_size=batch_size, device=device)
        if self.name == "regression" and self.normalize:
            y = torch.tensor([it.target for it in train], dtype=torch.float64)
            self.label_mean, std = float(y.mean()), float(y.std(unbiased=False))
            self.label_std = std if std > 0 and math.isfinite(std) else 1.0
            model.objective_info.update(label_mean=self.label_mean, label_std=self.label_std)

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return TargetCollator(pad_id)

    def _loss(self, rewards: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.name == "binary":
            return binary(rewards, target)
        return regression(rewards, (target - self.label_mean) / self.label_std, huber_delta=self.huber_delta)

    def compute(self, model: RewardModel, batch: TargetBatch) -> StepOutput:
        rewards = model(batch.sequences)  # (N,)
        loss = self._loss(rewards, batch.target).mean()
        r = rewards.detach()
        if self.name == "binary":
            sums = {"accuracy": float(((r > 0) == batch.target.bool()).sum())}
        else:
            sums = {"mse": float(((r - (batch.target - self.label_mean) / self.label_std) ** 2).sum())}
        return StepOutput(loss, r, r.numel(), sums)

    def evaluate(self, model: RewardModel, items: list[TokenizedTarget], *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        rewards = score_sequences(model, [it.sequence for it in items], pad_id=pad_id, batch_size=batch_size,
                                  device=device)
        target = torch.tensor([it.target for it in items], dtype=torch.float32)
        if self.name == "binary":
            stats = binary_stats(rewards, target)
        else:  # errors on the scale the model fits (normalised labels when normalize_labels is on)
            stats = regression_stats(rewards, (target - self.label_mean) / self.label_std)
        stats["loss"] = float(self._loss(rewards, target).mean())
        return {**stats, **reward_stats(rewards)}
