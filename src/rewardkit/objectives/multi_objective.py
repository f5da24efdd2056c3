"""Multi-objective training in two runs (ArmoRM-style, see `rewardkit.models.multi_objective`):

  1. train.loss=attributes  model=<backbone>     multi-attribute rows -> attribute heads (masked regression)
  2. train.loss=gating      model=<run 1 output> preference pairs -> gating network (BT on gated scores);
                                                  backbone and attribute heads frozen, optional debiasing
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from rewardkit.config import TrainRunConfig
from rewardkit.data.collators import PairBatch, PairCollator
from rewardkit.data.objectives import (ObjectiveColumns, TargetBatch, TargetCollator, TokenizedTarget,
                                       attribute_example, tokenize_targets)
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.evaluate import pair_rewards
from rewardkit.losses import attribute_regression, bradley_terry, gating_bt
from rewardkit.metrics import pairwise_stats
from rewardkit.models.multi_objective import MultiObjectiveRewardModel, batched_outputs, verbosity_lambdas
from rewardkit.objectives.base import BaseObjective, ObjectiveData, StepOutput, load_split, reward_stats
from rewardkit.objectives.metrics import regression_stats
from rewardkit.objectives.pairwise import load_pairs

log = logging.getLogger(__name__)
_DEBIAS_SAMPLE = 2000  # responses used to fit the debiasing lambdas


def _load(cfg: TrainRunConfig) -> tuple[MultiObjectiveRewardModel, Any]:
    m = cfg.model
    return MultiObjectiveRewardModel.from_pretrained(m.path, gguf_file=m.gguf_file, tokenizer=m.tokenizer,
                                                     readout=m.readout, trust_remote_code=m.trust_remote_code,
                                                     seed=cfg.seed)


class AttributeObjective(BaseObjective):
    """Stage 1: a Linear(H, A) head regressed on the attribute columns; missing values are masked."""

    unit, metric = "sequences", "mse"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name
        self.names = list(cfg.data.columns.attributes)
        if not self.names:
            raise ValueError("train.loss=attributes needs data.columns.attributes (the attribute columns)")
        self.freeze_backbone = cfg.loss.freeze_backbone

    def build_model(self, cfg: TrainRunConfig) -> tuple[MultiObjectiveRewardModel, Any]:
        model, tok = _load(cfg)
        if model.attribute_names != self.names:  # a backbone, or a model with other attributes: new head
            model.add_attribute_head(self.names, seed=cfg.seed)
        for p in model.hf.parameters():  # the scalar head is unused; the backbone trains unless frozen
            p.requires_grad = not self.freeze_backbone
        frozen = [model.head] + ([model.gate] if model.gate is not None else [])  # unused in this stage
        for p in (p for m in frozen for p in m.parameters()):
            p.requires_grad = False
        return model, tok

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        cols = ObjectiveColumns.from_config(cfg.data.columns)
        train, held = load_split(cfg, lambda row, where: attribute_example(row, cols, where), "rows")
        return ObjectiveData(tokenize_targets(encoder, train), tokenize_targets(encoder, held))

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return TargetCollator(pad_id)

    def compute(self, model: MultiObjectiveRewardModel, batch: TargetBatch) -> StepOutput:
        out = model.outputs(batch.sequences)
        loss = attribute_regression(out.attributes, batch.target, batch.mask)
        n = batch.target.shape[0]
        return StepOutput(loss, out.score.detach(), n, {"mse": float(loss.detach()) * n})

    def evaluate(self, model: MultiObjectiveRewardModel, items: list[TokenizedTarget], *, pad_id: int,
                 batch_size: int, device: torch.device | str) -> dict[str, float]:
        out = batched_outputs(model, [it.sequence for it in items], pad_id=pad_id, batch_size=batch_size,
                              device=device)
        target = torch.tensor([it.target for it in items], dtype=torch.float32)
        mask = ~target.isnan()
        mse = float(attribute_regression(out.attributes, target, mask))
        stats: dict[str, float] = {"loss": mse, "mse": mse, "n": len(items)}
        for j, name in enumerate(model.attribute_names):
            keep = mask[:, j]
            if keep.sum() >= 2:
                s = regression_stats(out.attributes[keep, j], target[keep, j])
                stats[f"mse/{name}"], stats[f"pearson/{name}"] = s["mse"], s["pearson"]
        return {**stats, **reward_stats(out.score)}


class GatingObjective(BaseObjective):
    """Stage 2: only the gating network trains, with BT on gate-weighted (debiased) attribute scores."""

    unit, metric = "pairs", "accuracy"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name
        self.lc = cfg.loss
        self.center_coef = cfg.train.center_rewards_coef

    def build_model(self, cfg: TrainRunConfig) -> tuple[MultiObjectiveRewardModel, Any]:
        model, tok = _load(cfg)
        if model.attr_head is None:
            raise ValueError(f"train.loss=gating needs a model trained with train.loss=attributes; "
                             f"{cfg.model.path} has no attribute heads")
        v = self.lc.verbosity_attribute
        if v is not None and v not in model.attribute_names:
            raise ValueError(f"loss.verbosity_attribute={v!r} is not an attribute of {cfg.model.path} "
                             f"(has: {', '.join(model.attribute_names)})")
        if model.gate is None:
            model.add_gate(self.lc.gate_hidden, self.lc.gate_layers, self.lc.gate_temperature, seed=cfg.seed)
        for p in model.parameters():
            p.requires_grad = False
        for p in model.gate.parameters():
            p.requires_grad = True
        return model, tok

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        return load_pairs(cfg, encoder)

    def prepare(self, model: MultiObjectiveRewardModel, train: list, *, pad_id: int, batch_size: int,
                device: torch.device | str) -> None:
        super().prepare(model, train, pad_id=pad_id, batch_size=batch_size, device=device)
        v = self.lc.verbosity_attribute
        if v is None:
            model.set_debias(None)
            return
        # Lambdas from the frozen attribute predictions on the training responses (chosen and rejected).
        seqs = [s for p in train[:_DEBIAS_SAMPLE // 2] for s in (p.chosen, p.rejected)]
        attrs = batched_outputs(model, seqs, pad_id=pad_id, batch_size=batch_size, device=device).attributes
        lambdas = verbosity_lambdas(attrs, model.attribute_names.index(v), self.lc.verbosity_threshold)
        model.set_debias(v, lambdas)
        model.objective_info["verbosity_lambdas"] = dict(zip(model.attribute_names, lambdas.tolist()))
        log.info("verbosity debiasing against %s: %s", v,
                 ", ".join(f"{n}={x:.2f}" for n, x in zip(model.attribute_names, lambdas.tolist())))

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return PairCollator(pad_id)

    def compute(self, model: MultiObjectiveRewardModel, batch: PairBatch) -> StepOutput:
        out = model.outputs(batch.sequences)  # (2B, ...): chosen rows first
        ac, ar = out.debiased.chunk(2)
        gate = out.gate.chunk(2)[0]  # the prompt's gate scores both responses
        loss = gating_bt(ac, ar, gate, margin=batch.margin).mean()
        rc, rr = (ac * gate).sum(-1), (ar * gate).sum(-1)
        if self.center_coef:
            loss = loss + self.center_coef * ((rc + rr) ** 2).mean()
        d = (rc - rr).detach()
        return StepOutput(loss, torch.cat([rc, rr]).detach(), d.numel(),
                          {"accuracy": float((d > 0).sum()), "margin_mean": float(d.sum())})

    def evaluate(self, model: MultiObjectiveRewardModel, items: list, *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        rc, rr = pair_rewards(model, items, pad_id=pad_id, batch_size=batch_size, device=device)
        stats = pairwise_stats(rc, rr)
        loss = bradley_terry(rc, rr, margin=torch.tensor([p.margin for p in items])).mean()
        stats["loss"] = float(loss + self.center_coef * ((rc + rr) ** 2).mean())
        return stats
