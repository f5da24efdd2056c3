"""Multi-objective training in two runs (ArmoRM-style, see `rewardkit.models.heads.AttributeHead`):

  1. loss=attributes  model=<backbone>      multi-attribute rows -> attribute heads (masked regression)
  2. loss=gating      model=<run 1 output>  preference pairs -> gating network (BT on gated scores);
                                             backbone and attribute heads frozen, optional debiasing
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from rewardkit.batches import PairBatch, StepOutput, TargetBatch
from rewardkit.config import TrainRunConfig
from rewardkit.data.collators import PairCollator, TargetCollator
from rewardkit.data.targets import TokenizedTarget, attribute_example, tokenize_targets
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.losses import attribute_regression, bradley_terry, center_penalty, gating_bt
from rewardkit.metrics import pairwise_stats, regression_stats, reward_stats, spearman
from rewardkit.models.backbone import own_head
from rewardkit.models.lora import is_adapter_param
from rewardkit.models.reward_model import RewardModel
from rewardkit.objectives.base import BaseObjective, ObjectiveData, load_tokenized
from rewardkit.objectives.pairwise import load_pairs, pair_sums
from rewardkit.scoring import pair_rewards, run_model

log = logging.getLogger(__name__)
_DEBIAS_SAMPLE = 2000  # responses used to fit the debiasing lambdas


class AttributeObjective(BaseObjective):
    """Stage 1: a Linear(H, A) head regressed on the attribute columns; missing values are masked."""

    unit, metric = "sequences", "mse"
    model_kind = "multi_objective"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name
        self.names = list(cfg.data.columns.attributes)
        if not self.names:
            raise ValueError("loss=attributes needs data.columns.attributes (the attribute columns)")
        self.freeze_backbone = cfg.loss.freeze_backbone

    def build_model(self, cfg: TrainRunConfig) -> tuple[RewardModel, Any]:
        model, tok = super().build_model(cfg)
        head = model.head
        if head.attribute_names != self.names:  # a backbone, or a model with other attributes: new head
            head.set_attributes(self.names, seed=cfg.seed)
        for name, p in model.hf.base_model.named_parameters():  # the backbone (its adapter) trains unless frozen
            p.requires_grad = not self.freeze_backbone and (model.lora is None or is_adapter_param(name))
        # Unused in this stage: the backbone's own scalar head (kept so the folder stays HF-loadable), any gate.
        frozen = [own_head(model.hf)]
        frozen += [head.gate] if head.gate is not None else []
        for p in (p for m in frozen for p in m.parameters()):
            p.requires_grad = False
        return model, tok

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        return load_tokenized(cfg, encoder, attribute_example, tokenize_targets, "rows")

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return TargetCollator(pad_id)

    def compute(self, model: RewardModel, batch: TargetBatch) -> StepOutput:
        out = model.outputs(batch.sequences)
        loss = attribute_regression(out.extras["attributes"], batch.target, batch.mask)
        return StepOutput(loss, out.score.detach(), batch.target.shape[0])  # rows log the mse as the loss

    def loss_units(self, item: TokenizedTarget) -> int:
        return sum(not math.isnan(v) for v in item.target)  # the loss averages the labelled values

    def evaluate(self, model: RewardModel, items: list[TokenizedTarget], *, pad_id: int,
                 batch_size: int, device: torch.device | str) -> dict[str, float]:
        out = run_model(model, [it.sequence for it in items], pad_id=pad_id, batch_size=batch_size, device=device)
        attrs = out.extras["attributes"]
        target = torch.tensor([it.target for it in items], dtype=torch.float32)
        mask = ~target.isnan()
        mse = float(attribute_regression(attrs, target, mask))
        stats: dict[str, float] = {"loss": mse, "mse": mse, "n": len(items)}
        for j, name in enumerate(model.head.attribute_names):
            keep = mask[:, j]
            if keep.any():  # one labelled row has an error but no correlation (pearson NaN, written null)
                s = regression_stats(attrs[keep, j], target[keep, j])
                stats[f"mse/{name}"], stats[f"pearson/{name}"] = s["mse"], s["pearson"]
        return {**stats, **reward_stats(out.score)}


class GatingObjective(BaseObjective):
    """Stage 2: only the gating network trains, with BT on gate-weighted (debiased) attribute scores."""

    unit, metric = "pairs", "accuracy"
    model_kind = "multi_objective"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name
        self.lc = cfg.loss
        self.center_coef = cfg.train.center_rewards_coef

    def build_model(self, cfg: TrainRunConfig) -> tuple[RewardModel, Any]:
        model, tok = super().build_model(cfg)
        head = model.head
        if head.attr_head is None:
            raise ValueError(f"loss=gating needs a model trained with loss=attributes; "
                             f"{cfg.model.path} has no attribute heads")
        v = self.lc.verbosity_attribute
        if v is not None and v not in head.attribute_names:
            raise ValueError(f"loss.verbosity_attribute={v!r} is not an attribute of {cfg.model.path} "
                             f"(has: {', '.join(head.attribute_names)})")
        if head.gate is None:
            head.add_gate(self.lc.gate_hidden, self.lc.gate_layers, self.lc.gate_temperature, seed=cfg.seed)
        for p in model.parameters():
            p.requires_grad = False
        for p in head.gate.parameters():
            p.requires_grad = True
        return model, tok

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        return load_pairs(cfg, encoder)

    def prepare(self, model: RewardModel, train: list, *, pad_id: int, batch_size: int,
                device: torch.device | str) -> None:
        super().prepare(model, train, pad_id=pad_id, batch_size=batch_size, device=device)
        head, v = model.head, self.lc.verbosity_attribute
        if v is None:
            head.set_debias(None)
            return
        # Lambdas from the frozen attribute predictions on the training responses (chosen and rejected).
        seqs = [s for p in train[:_DEBIAS_SAMPLE // 2] for s in (p.chosen, p.rejected)]
        attrs = run_model(model, seqs, pad_id=pad_id, batch_size=batch_size, device=device).extras["attributes"]
        lambdas = verbosity_lambdas(attrs, head.attribute_names.index(v), self.lc.verbosity_threshold)
        head.set_debias(v, lambdas)
        model.objective_info["verbosity_lambdas"] = dict(zip(head.attribute_names, lambdas.tolist()))
        log.info("verbosity debiasing against %s: %s", v,
                 ", ".join(f"{n}={x:.2f}" for n, x in zip(head.attribute_names, lambdas.tolist())))

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return PairCollator(pad_id)

    def compute(self, model: RewardModel, batch: PairBatch) -> StepOutput:
        out = model.outputs(batch.sequences)  # (2B, ...): chosen rows first
        ac, ar = out.extras["debiased"].chunk(2)
        gate = out.extras["gate"].chunk(2)[0]  # the prompt's gate scores both responses
        loss = gating_bt(ac, ar, gate, margin=batch.margin).mean()
        rc, rr = (ac * gate).sum(-1), (ar * gate).sum(-1)
        if self.center_coef:
            loss = loss + self.center_coef * center_penalty(rc, rr).mean()
        return StepOutput(loss, torch.cat([rc, rr]).detach(), rc.numel(), pair_sums(rc, rr))

    def evaluate(self, model: RewardModel, items: list, *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        rc, rr = pair_rewards(model, items, pad_id=pad_id, batch_size=batch_size, device=device)
        stats = pairwise_stats(rc, rr)
        loss = bradley_terry(rc, rr, margin=torch.tensor([p.margin for p in items])).mean()
        stats["loss"] = float(loss + self.center_coef * center_penalty(rc, rr).mean())
        return stats


def verbosity_lambdas(attributes: torch.Tensor, verbosity: int, threshold: float = 0.03,
                      grid: torch.Tensor | None = None) -> torch.Tensor:
    """Per attribute i, the smallest lambda in `grid` (default 0, 0.01, ..., 1) with
    |Spearman(r_i - lambda r_v, r_v)| <= threshold; where none qualifies, the lambda with the smallest
    |Spearman|. attributes: (N, A) predictions on reference responses; returns (A,), 0 for the verbosity
    attribute itself (ArmoRM's debiasing, arXiv 2406.12845 section 3)."""
    grid = torch.linspace(0, 1, 101, dtype=torch.float64) if grid is None else grid.double()
    a = attributes.double()
    rv = a[:, verbosity]
    out = torch.zeros(a.shape[1], dtype=torch.float64)
    for i in range(a.shape[1]):
        if i == verbosity:
            continue
        rhos = [spearman(a[:, i] - lam * rv, rv) for lam in grid]
        rhos = [abs(r) if r is not None and math.isfinite(r) else math.inf for r in rhos]  # None: constant
        ok = [j for j, r in enumerate(rhos) if r <= threshold]
        out[i] = grid[ok[0] if ok else min(range(len(rhos)), key=rhos.__getitem__)]
        if not ok:
            log.warning("verbosity debiasing: no lambda in [%g, %g] brings attribute %d to |Spearman| <= %g "
                        "(best %.3f)", float(grid[0]), float(grid[-1]), i, threshold, min(rhos))
    return out
