"""The pairwise-ranker objective (`loss=pairrm`): an encoder reads prompt + A + B and is trained with BCE on
every pair in both orders, (prompt, chosen, rejected) labelled 1 and (prompt, rejected, chosen) labelled 0.

Data: the pairwise formats (`data.train` as for bt). Items are `TokenizedPair`s of the two orders
(`data.triples`), so the pair collators, packing, length grouping and token budgets apply unchanged: a batch
of B items is 2B triples, the chosen-first ones at [0, B). Evaluation reports pair accuracy from the margin
(l(c, r) − l(r, c)) / 2 that `scoring.pairrm.PairRanker` answers at inference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rewardkit.batches import PairBatch, StepOutput
from rewardkit.config import ConfigError, TrainRunConfig
from rewardkit.data.collators import PairCollator
from rewardkit.data.mixing import SourceSpec
from rewardkit.data.pairs import load_preferences
from rewardkit.data.readers import LoadReport
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.data.triples import TripleEncoder, tokenize_triple_pairs
from rewardkit.losses import pairrm_bce
from rewardkit.metrics import reward_stats
from rewardkit.models.reward_model import RewardModel
from rewardkit.objectives.base import BaseObjective, ObjectiveData, load_sources, no_margins
from rewardkit.scoring.pairrm import both_orders


def ranker_sums(ab: torch.Tensor, ba: torch.Tensor) -> dict[str, float]:
    """Window sums of the pair metrics from the logits (B,) of both orders: accuracy = margin > 0."""
    m = ((ab - ba) / 2).detach()
    return {"accuracy": float((m > 0).sum()), "margin_mean": float(m.sum())}


class PairRMObjective(BaseObjective):
    """BCE on both orders of each pair; the model is a `pairrm` kind (the [CLS] logit of P(A ≻ B))."""

    unit, metric = "pairs", "accuracy"
    packable = True
    model_kind = "pairrm"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name

    def build_model(self, cfg: TrainRunConfig) -> tuple[RewardModel, Any]:
        try:
            return super().build_model(cfg)
        except ValueError as e:
            if "needs an encoder" in str(e):  # the head refuses decoders: say it as a config error
                raise ConfigError(f"loss=pairrm: model.path={cfg.model.path} is a decoder; {e}") from None
            raise

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        """Preference pairs of every source, each tokenised in both orders at `data.max_length`."""
        triples = TripleEncoder(encoder.tok, encoder.max_length, encoder.is_encoder)
        d = cfg.data

        def load(spec: SourceSpec) -> tuple[list, LoadReport]:
            return no_margins(load_preferences(spec.path, fmt=spec.format, columns=spec.columns, on_error=d.on_error,
                                               split=spec.split, max_samples=spec.max_samples), spec, "pairrm")

        return load_sources(cfg, load, lambda examples, name: tokenize_triple_pairs(triples, examples, name), "pairs")

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return PairCollator(pad_id)  # rows [0, B): chosen-first triples, [B, 2B): rejected-first

    def compute(self, model: RewardModel, batch: PairBatch) -> StepOutput:
        logits = model(batch.sequences)  # (2B,)
        ab, ba = logits.chunk(2)
        return StepOutput(pairrm_bce(ab, ba).mean(), logits.detach(), ab.numel(), ranker_sums(ab, ba))

    def evaluate(self, model: RewardModel, items: list, *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        """accuracy (margin > 0; a tie is wrong), margin_mean, loss, and mean/std of the one-order logits."""
        ab, ba = both_orders(model, items, pad_id=pad_id, batch_size=batch_size, device=device)
        ab, ba = ab.double(), ba.double()
        m = (ab - ba) / 2
        n = int(m.numel())
        return {"accuracy": float((m > 0).double().mean()) if n else float("nan"), "n": n,
                "ties": int((m == 0).sum()), "margin_mean": float(m.mean()) if n else float("nan"),
                "loss": float(pairrm_bce(ab, ba).mean()) if n else float("nan"), **reward_stats(torch.cat([ab, ba]))}
