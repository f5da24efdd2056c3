"""Tokenised items -> padded tensors in the named batches of `rewardkit.batches` (packed layouts: `packing`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardkit.batches import PairBatch, RankingBatch, SequenceBatch, StepBatch, TargetBatch
from rewardkit.data.rankings import TokenizedRanking
from rewardkit.data.steps import TokenizedSteps
from rewardkit.data.targets import TokenizedTarget
from rewardkit.data.tokenize import TokenizedPair, TokenizedSequence


def pad_sequences(seqs: list[TokenizedSequence], pad_id: int, padding_side: str = "right",
                  pad_to_multiple_of: int | None = None) -> SequenceBatch:
    """Pad to the longest sequence (rounded up to `pad_to_multiple_of`)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    if pad_id is None:
        raise ValueError("pad_id is None: the tokenizer has no pad token (see ensure_pad_token)")
    with_types = seqs[0].token_type_ids is not None
    if any((s.token_type_ids is not None) != with_types for s in seqs):
        raise ValueError("either all sequences have token_type_ids or none has")
    width = max(len(s.input_ids) for s in seqs)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    n = len(seqs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    resp = torch.zeros((n, width), dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long) if with_types else None
    for i, s in enumerate(seqs):
        length = len(s.input_ids)
        off = 0 if padding_side == "right" else width - length
        ids[i, off:off + length] = torch.tensor(s.input_ids, dtype=torch.long)
        mask[i, off:off + length] = 1
        resp[i, off + s.response_start:off + length] = 1
        if types is not None:
            types[i, off:off + length] = torch.tensor(s.token_type_ids, dtype=torch.long)
    return SequenceBatch(ids, mask, resp, types)


@dataclass
class PairCollator:
    """`list[TokenizedPair]` -> `PairBatch` (chosen rows first, then rejected)."""

    pad_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, pairs: list[TokenizedPair]) -> PairBatch:
        if not pairs:
            raise ValueError("PairCollator needs at least one pair")
        seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        batch = pad_sequences(seqs, self.pad_id, self.padding_side, self.pad_to_multiple_of)
        margin = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
        return PairBatch(batch, margin)


@dataclass
class RankingCollator:
    """`list[TokenizedRanking]` -> `RankingBatch` (every completion of every prompt in one forward)."""

    pad_id: int

    def __call__(self, items: list[TokenizedRanking]) -> RankingBatch:
        pref, mask = ranking_targets(items)
        seqs = [s for it in items for s in it.sequences]
        return RankingBatch(pad_sequences(seqs, self.pad_id), pref, mask)


def ranking_targets(items: list[TokenizedRanking]) -> tuple[torch.Tensor, torch.Tensor]:
    """Preferences (P, K) and the mask (P, K) bool of real completions, K the largest completion count.
    Each prompt's preferences become their dense ranks (0 = worst): the same order and ties, exact in float32
    whatever the scores (16777216 and 16777217 would tie as float32 scores) and on any device."""
    k = max(len(it.sequences) for it in items)
    pref = torch.zeros(len(items), k)
    mask = torch.zeros(len(items), k, dtype=torch.bool)
    for i, it in enumerate(items):
        rank = {v: r for r, v in enumerate(sorted(set(it.preference)))}
        pref[i, :len(it.preference)] = torch.tensor([float(rank[v]) for v in it.preference])
        mask[i, :len(it.sequences)] = True
    return pref, mask


@dataclass
class TargetCollator:
    """`list[TokenizedTarget]` -> `TargetBatch` (NaN targets are masked out)."""

    pad_id: int

    def __call__(self, items: list[TokenizedTarget]) -> TargetBatch:
        target = torch.tensor([it.target for it in items], dtype=torch.float32)
        return TargetBatch(pad_sequences([it.sequence for it in items], self.pad_id), target, ~target.isnan())


@dataclass
class StepCollator:
    """`list[TokenizedSteps]` -> `StepBatch`: right-padded sequences, each step's readout position and label
    (label 0 and mask False in the padding slots of rows with fewer steps)."""

    pad_id: int

    def __call__(self, items: list[TokenizedSteps]) -> StepBatch:
        if not items:
            raise ValueError("StepCollator needs at least one item")
        s = max(len(it.positions) for it in items)
        pos = torch.zeros(len(items), s, dtype=torch.long)
        labels = torch.zeros(len(items), s)
        mask = torch.zeros(len(items), s, dtype=torch.bool)
        for i, it in enumerate(items):
            k = len(it.positions)
            pos[i, :k] = torch.tensor(it.positions, dtype=torch.long)
            mask[i, :k] = True
            if it.labels:
                labels[i, :k] = torch.tensor(it.labels)
        return StepBatch(pad_sequences([it.sequence for it in items], self.pad_id), pos, labels, mask)
