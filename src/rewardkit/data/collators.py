"""Tokenised sequences -> padded tensors in named batches."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from rewardkit.data.tokenize import TokenizedPair, TokenizedSequence


@dataclass
class SequenceBatch:
    """N padded sequences.

    input_ids, attention_mask, response_mask: (N, T) long. response_mask is 1 on response tokens.
    token_type_ids: (N, T) long, or None when the backbone has no segments.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) tokens."""
        return int(self.attention_mask.sum())


@dataclass
class PairBatch:
    """B preference pairs in one forward: rows [0, B) of `sequences` are chosen, rows [B, 2B) rejected.

    margin: (B,) float.
    """

    sequences: SequenceBatch
    margin: torch.Tensor

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(self.sequences.to(device), self.margin.to(device))

    @property
    def num_pairs(self) -> int:
        return int(self.margin.shape[0])


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
