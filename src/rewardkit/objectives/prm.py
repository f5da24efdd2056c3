"""Process reward models (`loss=prm`): BCE on each step's label at its readout token.

Rows: TRL's stepwise format (see `rewardkit.data.steps`); `loss.step_separator` is appended to every step and
saved with the model. Training rows report `step_accuracy` (mean over sequences of each one's share of
right steps) and `first_wrong_accuracy`; evaluation reports them over all steps (`metrics.step_stats`), the
step AUC, and reward statistics of the `min` aggregate (saved as the model's mean/std).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rewardkit.batches import StepBatch, StepOutput
from rewardkit.config import TrainRunConfig
from rewardkit.data.collators import StepCollator
from rewardkit.data.steps import StepEncoder, TokenizedSteps, step_example, tokenize_steps
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.losses import step_bce
from rewardkit.metrics import first_wrong, reward_stats, step_stats
from rewardkit.models.prm import step_logits
from rewardkit.models.reward_model import RewardModel
from rewardkit.objectives.base import BaseObjective, ObjectiveData, load_tokenized
from rewardkit.scoring.prm import run_steps


def _min_prob(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) the smallest step probability of each row (the default aggregate). logits, mask: (N, S)."""
    return torch.sigmoid(logits.float()).masked_fill(~mask, 1.0).min(1).values


class PRMObjective(BaseObjective):
    """Token classification at the step readouts of a `prm` head; loss = mean BCE over the batch's steps."""

    unit, metric = "sequences", "step_accuracy"
    model_kind = "prm"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name
        self.separator = cfg.loss.step_separator

    def build_model(self, cfg: TrainRunConfig) -> tuple[RewardModel, Any]:
        model, tok = super().build_model(cfg)
        model.head.separator = self.separator  # the config's separator wins over a saved one
        return model, tok

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        steps = StepEncoder(encoder, self.separator)
        return load_tokenized(cfg, encoder, step_example, lambda _, examples: tokenize_steps(steps, examples),
                              "rows")

    def prepare(self, model: RewardModel, train: list[TokenizedSteps], *, pad_id: int, batch_size: int,
                device: torch.device | str) -> None:
        super().prepare(model, train, pad_id=pad_id, batch_size=batch_size, device=device)
        model.objective_info["step_separator"] = self.separator

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return StepCollator(pad_id)

    def compute(self, model: RewardModel, batch: StepBatch) -> StepOutput:
        logits = step_logits(model, batch.sequences, batch.positions)  # (N, S)
        m = batch.mask
        loss = step_bce(logits, batch.labels, m).sum() / m.sum().clamp(min=1)
        x = logits.detach()
        right = ((x > 0) == batch.labels.bool()) & m
        per_row = right.sum(1) / m.sum(1).clamp(min=1)
        fw = first_wrong(x <= 0, m) == first_wrong(~batch.labels.bool(), m)
        sums = {"step_accuracy": float(per_row.sum()), "first_wrong_accuracy": float(fw.sum())}
        return StepOutput(loss, _min_prob(x, m), int(m.shape[0]), sums)

    def loss_units(self, item: TokenizedSteps) -> int:
        return len(item.positions)  # the loss averages the scored steps

    def evaluate(self, model: RewardModel, items: list[TokenizedSteps], *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        per_item = run_steps(model, items, pad_id=pad_id, batch_size=batch_size, device=device)
        s = max(len(x) for x in per_item)
        logits = torch.zeros(len(items), s)
        labels = torch.zeros(len(items), s)
        mask = torch.zeros(len(items), s, dtype=torch.bool)
        for i, (x, it) in enumerate(zip(per_item, items)):
            logits[i, :len(x)], mask[i, :len(x)] = x, True
            labels[i, :len(x)] = torch.tensor(it.labels)
        stats = step_stats(logits, labels, mask, torch.tensor([it.wrong_cut for it in items], dtype=torch.bool))
        stats["loss"] = float(step_bce(logits, labels, mask).sum() / mask.sum().clamp(min=1))
        return {**stats, **reward_stats(_min_prob(logits, mask))}
