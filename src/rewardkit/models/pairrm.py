"""The head of pairwise rankers (PairRM-style, kind `pairrm`): the logit of P(A ≻ B) from one sequence that
holds the prompt and both answers (layout: `data.triples`).

It is the backbone's own 1-output head on the first token ([CLS]), as `ScalarHead`, but its number is not a
reward of one response: a folder of this kind is read by `scoring.pairrm.PairRanker`, which averages both
orders, and `hf_equivalent` is false so that nothing takes the folder for a reward model.
"""

from __future__ import annotations

from torch import nn

from rewardkit.models.heads import ScalarHead


class PairHead(ScalarHead):
    """score (N,) = logit of P(A ≻ B) for N (prompt, A, B) sequences, read at [CLS] (readout `cls`)."""

    kind = "pairrm"

    def __init__(self, hf: nn.Module, readout: str, encoder: bool):
        if not encoder:
            raise ValueError("kind pairrm needs an encoder backbone (BERT, MiniLM, DeBERTa, RoBERTa): it reads "
                             "prompt + A + B in one bidirectional pass")
        super().__init__(hf, readout, encoder)

    def values(self, hidden):
        raise ValueError("a pairwise ranker has no per-token values")

    def hf_equivalent(self, readout: str, encoder: bool) -> bool:
        return False
