"""Objectives on preferences: pairwise losses (bt, logexp, internlm2), token-level pairs, K-wise rankings."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from rewardkit.batches import PairBatch, RankingBatch, StepOutput
from rewardkit.config import TrainRunConfig
from rewardkit.data.collators import PairCollator, RankingCollator, ranking_targets
from rewardkit.data.mixing import SourceSpec
from rewardkit.data.pairs import load_preferences, margin_mapping
from rewardkit.data.rankings import ranking_example, tokenize_rankings
from rewardkit.data.readers import LoadReport
from rewardkit.data.tokenize import SequenceEncoder, tokenize_pairs
from rewardkit.losses import PAIRWISE_LOSSES, center_penalty, first_divergence, kwise_bt, token_level
from rewardkit.metrics import pairwise_stats, ranking_stats, reward_stats
from rewardkit.models.reward_model import RewardModel
from rewardkit.objectives.base import BaseObjective, ObjectiveData, load_sources, load_tokenized
from rewardkit.scoring import pair_rewards, score_sequences


def load_pairs(cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
    """Preference pairs from every source of `data.train` (and `data.eval` or `data.eval_size`), tokenised."""
    d = cfg.data
    margins = margin_mapping(d.margin_table, d.margin_map)

    def load(spec: SourceSpec) -> tuple[list, LoadReport]:
        return load_preferences(spec.path, fmt=spec.format, columns=spec.columns, on_error=d.on_error,
                                split=spec.split, max_samples=spec.max_samples, margins=margins)

    return load_sources(cfg, load, lambda examples, name: tokenize_pairs(encoder, examples, name), "pairs")


def pair_sums(rc: torch.Tensor, rr: torch.Tensor) -> dict[str, float]:
    """Window sums of the pair metrics (accuracy: right pairs; margin_mean: summed margins). rc, rr: (B,)."""
    d = (rc - rr).detach()
    return {"accuracy": float((d > 0).sum()), "margin_mean": float(d.sum())}


class PairwiseObjective(BaseObjective):
    """A pairwise loss on the scalar rewards of chosen and rejected, plus optional reward centering."""

    unit, metric = "pairs", "accuracy"
    packable = True

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name
        hp = {}
        if name == "internlm2":
            lc = cfg.loss
            hp = dict(gamma=lc.gamma, penalty=lc.penalty, penalty_weight=lc.penalty_weight)
        self.loss_fn: Callable[..., torch.Tensor] = functools.partial(PAIRWISE_LOSSES[name], **hp)
        self.center_coef = cfg.train.center_rewards_coef

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        return load_pairs(cfg, encoder)

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return PairCollator(pad_id)

    def _loss(self, rc: torch.Tensor, rr: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(rc, rr, margin=margin).mean()
        if self.center_coef:
            loss = loss + self.center_coef * center_penalty(rc, rr).mean()
        return loss

    def compute(self, model: RewardModel, batch: PairBatch) -> StepOutput:
        rewards = model(batch.sequences)  # (2B,): chosen rows first
        rc, rr = rewards.chunk(2)
        return StepOutput(self._loss(rc, rr, batch.margin), rewards.detach(), rc.numel(), pair_sums(rc, rr))

    def evaluate(self, model: RewardModel, items: list, *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        rc, rr = pair_rewards(model, items, pad_id=pad_id, batch_size=batch_size, device=device)
        stats = pairwise_stats(rc, rr)
        stats["loss"] = float(self._loss(rc, rr, torch.tensor([p.margin for p in items])))
        return stats


class TokenObjective(PairwiseObjective):
    """Per-token values of chosen vs rejected from the first differing token (`losses.token_level`).
    Causal backbones with the `last` readout only: the inference score is the last token's value."""

    packable = False  # reads per-token values of right-padded rows

    def __init__(self, name: str, cfg: TrainRunConfig):
        super().__init__("bt", cfg)
        self.name = name

    def build_model(self, cfg: TrainRunConfig) -> tuple[RewardModel, Any]:
        model, tok = super().build_model(cfg)
        if model.is_encoder or model.readout != "last":
            raise ValueError("loss=token needs a causal (decoder) backbone with model.readout=last; "
                             f"got {'an encoder' if model.is_encoder else 'readout ' + model.readout}")
        return model, tok

    def compute(self, model: RewardModel, batch: PairBatch) -> StepOutput:
        seqs = batch.sequences
        if not bool(seqs.attention_mask[:, 0].all()):
            raise ValueError("the token-level loss needs right-padded batches")
        values = model.token_values(seqs)  # (2B, T), 0 at padding
        lengths = seqs.attention_mask.sum(1)
        vc, vr = values.chunk(2)
        lc, lr = lengths.chunk(2)
        ic, ir = seqs.input_ids.chunk(2)
        start = first_divergence(ic, ir, lc, lr)
        loss = token_level(vc, vr, lc, lr, start, margin=batch.margin).mean()
        rewards = values.gather(1, (lengths - 1)[:, None])[:, 0]  # the inference score: last token
        rc, rr = rewards.chunk(2)
        if self.center_coef:
            loss = loss + self.center_coef * center_penalty(rc, rr).mean()
        return StepOutput(loss, rewards.detach(), rc.numel(), pair_sums(rc, rr))

    @torch.no_grad()
    def evaluate(self, model: RewardModel, items: list, *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        # One forward per pair: the token-level loss and the rewards (its last-token values) come from the same
        # pass. Every process scores all pairs (the padded layout this loss needs is not sharded).
        was_training, total, chosen, rejected = model.training, 0.0, [], []
        model.eval()
        collate = self.collator(pad_id)
        for i in range(0, len(items), batch_size):  # the method runs under no_grad
            chunk = items[i:i + batch_size]
            out = self.compute(model, collate(chunk).to(device))
            total += float(out.loss) * len(chunk)
            rc, rr = out.rewards.float().cpu().chunk(2)
            chosen.append(rc)
            rejected.append(rr)
        model.train(was_training)
        stats = pairwise_stats(torch.cat(chosen), torch.cat(rejected))
        stats["loss"] = total / len(items)
        return stats


class KwiseObjective(BaseObjective):
    """K completions per prompt, each through the model once; BT averaged over the prompt's ordered pairs."""

    unit, metric = "prompts", "accuracy"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        return load_tokenized(cfg, encoder, ranking_example, tokenize_rankings, "prompts")

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return RankingCollator(pad_id)

    def compute(self, model: RewardModel, batch: RankingBatch) -> StepOutput:
        flat = model(batch.sequences)  # (N,) one reward per completion
        rewards = torch.zeros(batch.mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(batch.mask, flat)
        loss = kwise_bt(rewards, batch.preference, batch.mask).mean()
        s = ranking_stats(rewards.detach(), batch.preference, batch.mask)
        return StepOutput(loss, flat.detach(), s["prompts"], {"accuracy": s["accuracy"] * s["prompts"]})

    def evaluate(self, model: RewardModel, items: list, *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        seqs = [s for it in items for s in it.sequences]
        flat = score_sequences(model, seqs, pad_id=pad_id, batch_size=batch_size, device=device)
        pref, mask = ranking_targets(items)
        rewards = torch.zeros(mask.shape).masked_scatter(mask, flat)
        stats = ranking_stats(rewards, pref, mask)
        stats["loss"] = float(kwise_bt(rewards, pref, mask).mean())
        return {**stats, **reward_stats(flat)}
