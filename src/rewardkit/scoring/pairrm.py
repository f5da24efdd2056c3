"""`PairRanker`: the `Judge` of pairwise rankers (kind `pairrm`), an encoder that reads prompt + A + B at once.

The model gives l(A, B), the logit of P(A ≻ B) for one order. The judge reads both orders and answers
margin = (l(A, B) − l(B, A)) / 2, so that position bias cancels and P(A ≻ B) = 1 − P(B ≻ A) exactly. It gives
no score of its own to a response (`score` raises `NoScores`); `rank` compares candidates (matrix or knockout,
`model.rank_strategy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rewardkit.config import SCORE_MAX_TOKENS
from rewardkit.data.fields import Text
from rewardkit.data.tokenize import TokenizedPair
from rewardkit.data.triples import TripleEncoder
from rewardkit.models.packed_linear import pack_for_inference
from rewardkit.models.positions import fit_max_length
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring.base import RANK_STRATEGIES, PairwiseJudge
from rewardkit.scoring.run import score_sequences

DEFAULT_MAX_LENGTH = 512


def both_orders(model: RewardModel, pairs: Sequence[TokenizedPair], **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B,) each of the A-first (`chosen`) and B-first (`rejected`) triples of B items, in one sorted
    pass over all 2B sequences (`run_model`; `kw` are its settings)."""
    logits = score_sequences(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], **kw)
    return logits[:len(pairs)], logits[len(pairs):]


def pair_margins(model: RewardModel, pairs: Sequence[TokenizedPair], **kw: Any) -> torch.Tensor:
    """(B,) float64 log-odds that A ≻ B, both orders averaged: (l(A, B) − l(B, A)) / 2."""
    ab, ba = both_orders(model, pairs, **kw)
    return (ab.double() - ba.double()) / 2


def _key(seq) -> tuple:
    return tuple(seq.input_ids), tuple(seq.token_type_ids or ())


class PairRanker(PairwiseJudge):
    """A loaded pairwise ranker plus its tokenizer and triple layout; implements `Judge` (pairwise)."""

    kind = "pairrm"

    def __init__(self, model: RewardModel, tokenizer, *, max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 32,
                 device: torch.device | str = "cpu", max_tokens: int | None = SCORE_MAX_TOKENS, bf16: bool = False,
                 rank_strategy: str = "matrix"):
        if rank_strategy not in RANK_STRATEGIES:
            raise ValueError(f"unknown rank strategy {rank_strategy!r}; choose from {', '.join(RANK_STRATEGIES)}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.encoder = TripleEncoder(tokenizer, max_length, model.is_encoder)
        self.batch_size, self.device, self.max_tokens, self.bf16 = batch_size, device, max_tokens, bf16
        self.rank_strategy = rank_strategy

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str = "cpu", batch_size: int = 32,
             max_length: int | None = None, max_tokens: int | None = SCORE_MAX_TOKENS, bf16: bool = False,
             rank_strategy: str = "matrix") -> "PairRanker":
        """Load a saved pairrm folder; `max_length` defaults to the one it was trained with."""
        model, tok = RewardModel.from_pretrained(str(path))
        if model.kind != "pairrm":
            raise ValueError(f"{path} holds a {model.kind!r} model, not a pairwise ranker (pairrm)")
        length = fit_max_length(model, max_length, model.saved_max_length or DEFAULT_MAX_LENGTH)
        ranker = cls(model, tok, max_length=length,
                     batch_size=batch_size, device=device, max_tokens=max_tokens, bf16=bf16,
                     rank_strategy=rank_strategy)
        pack_for_inference(model, device, bf16)  # CPU bf16: faster linears, same scores
        return ranker

    @classmethod
    def from_folder(cls, path: str, options: dict[str, Any], **settings: Any) -> "PairRanker":
        """The registry's entry (`scoring.judges`): reads `rank_strategy` of the kind options."""
        return cls.load(path, rank_strategy=options.get("rank_strategy") or "matrix", **settings)

    @property
    def temperature(self) -> float:
        """T from config.json (`rewardkit.temperature`, set by `rewardkit calibrate`); 1.0 if unfitted."""
        return self.model.temperature

    def margins(self, prompts: Sequence[Text], responses_a: Sequence[Text],
                responses_b: Sequence[Text]) -> torch.Tensor:
        """(N,) float64 log-odds of a ≻ b at T=1, both orders averaged.

        Each item's two triples are put in a canonical order (by their tokens) and each distinct item is run
        once, so that margins(p, a, b) and margins(p, b, a), or a and b swapped inside one call, run the very
        same sequences: one margin is exactly −1 times the other, and identical answers give exactly 0,
        whatever the floating-point effects of batching."""
        unique: dict[tuple, int] = {}
        pairs: list[TokenizedPair] = []
        index, signs = [], []
        for p, a, b in zip(prompts, responses_a, responses_b, strict=True):
            both = self.encoder.encode_both(p, a, b)
            ka, kb = _key(both.chosen), _key(both.rejected)
            signs.append(0.0 if ka == kb else 1.0 if ka < kb else -1.0)
            key = (ka, kb) if ka <= kb else (kb, ka)
            if key not in unique:
                unique[key] = len(pairs)
                pairs.append(both if ka <= kb else TokenizedPair(both.rejected, both.chosen))
            index.append(unique[key])
        if not pairs:
            return torch.zeros(0, dtype=torch.float64)
        m = pair_margins(self.model, pairs, pad_id=self.tokenizer.pad_token_id, device=self.device,
                         batch_size=self.batch_size, max_tokens=self.max_tokens, bf16=self.bf16)
        return m[torch.tensor(index)] * torch.tensor(signs, dtype=torch.float64)
