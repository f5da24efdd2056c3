"""Every batch that crosses a layer boundary, as a named dataclass (never a positional tuple).

Collators (`rewardkit.data`) build them, models and objectives read them. This module imports only torch,
so models can take batches without depending on how the data was read or tokenised.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


def to_device(obj: Any, device: torch.device | str) -> Any:
    """`obj` with every tensor inside it (dataclass fields, lists, tuples) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(x, device) for x in obj)
    return obj


class _Movable:
    def to(self, device: torch.device | str):
        return to_device(self, device)


@dataclass
class SequenceBatch(_Movable):
    """N padded sequences (any padding side).

    input_ids, attention_mask, response_mask: (N, T) long. response_mask is 1 on response tokens.
    token_type_ids: (N, T) long, or None when the backbone has no segments.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) tokens."""
        return int(self.attention_mask.sum())

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class PackedBatch(_Movable):
    """R rows of L tokens holding N sequences (N = number of rewards to read).

    input_ids, position_ids: (R, L) long.
    attention_mask: (R, 1, L, L) bool, True where a query may attend to a key; None for a flat batch.
    token_type_ids: (R, L) long or None.
    last_index, first_index: (N,) long, flat index `row * L + col` of each sequence's last / first token.
    prompt_end_index: (N,) long, flat index of each sequence's last prompt token (its first token when it
      has no prompt); a shared prompt's rejected sequence points into the shared prompt.
    response_seq: (R, L) long, the sequence number of each response token, -1 elsewhere.
    units: flat batches only (R = 1, no padding between units): (start, end, mask) of each packed unit along L,
      where mask is None for a lone sequence (its backbone's own pattern) or (n, n) bool for a shared-prompt
      unit. A row rounded up on CPU (`packing.rounded_width`) ends in padding units that nothing reads.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    last_index: torch.Tensor
    first_index: torch.Tensor
    response_seq: torch.Tensor
    prompt_end_index: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    real_tokens: int = 0
    # True when the mask is plain block-diagonal causal, which position_ids alone describe (FlashAttention varlen).
    position_ids_suffice: bool = False
    units: list[tuple[int, int, torch.Tensor | None]] | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens actually processed for sequences (shared prompts count once)."""
        return self.real_tokens

    @property
    def num_sequences(self) -> int:
        return int(self.last_index.shape[0])


Sequences = SequenceBatch | PackedBatch


@dataclass
class PairBatch(_Movable):
    """B preference pairs in one forward: sequences [0, B) are chosen, [B, 2B) rejected.

    sequences: padded or packed; margin: (B,) float.
    """

    sequences: Sequences
    margin: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.margin.shape[0])


@dataclass
class RankingBatch(_Movable):
    """P prompts with up to K completions each, all in one forward.

    sequences: N = sum of K_p rows, prompt by prompt. preference: (P, K) float, higher = better;
    mask: (P, K) bool, False for the padding slots of prompts with fewer than K completions (row-major
    True slots correspond to the rows of `sequences`).
    """

    sequences: Sequences
    preference: torch.Tensor
    mask: torch.Tensor


@dataclass
class TargetBatch(_Movable):
    """N sequences with targets. target: (N,) float, or (N, A) float with NaN where missing;
    mask: same shape as target, bool, True where a target is present."""

    sequences: Sequences
    target: torch.Tensor
    mask: torch.Tensor


@dataclass
class JudgeBatch(_Movable):
    """Generative-judge training: B pairs as 2B judge prompts, first with the chosen response shown as A, then
    the same B with it shown as B. sequences: (2B, T) padded (either side); answers: (2B,) long, the index of
    the right label (0 = "A", 1 = "B")."""

    sequences: SequenceBatch
    answers: torch.Tensor


@dataclass
class StepBatch(_Movable):
    """N right-padded stepwise sequences with up to S steps each (process reward models).

    sequences: (N, T) padded, right side. positions: (N, S) long, the token index of each step's readout
    (0 in padding slots); labels: (N, S) float, 1 = correct step; mask: (N, S) bool, True for real steps."""

    sequences: SequenceBatch
    positions: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor


@dataclass
class StepOutput:
    """One micro-batch through an objective.

    loss: () tensor to back-propagate. rewards: (N,) detached scalar rewards of the batch's sequences
    (for reward mean/std). n: training examples in the batch (pairs, prompts or sequences).
    sums: metric name -> sum over the n examples (the window divides by n).
    units: what `loss` is a mean over (`Objective.loss_units` summed over the batch: labelled values, steps),
    set by the training loop from its plan; None = n. The logged loss weighs each batch by it, as the step's
    gradient does.
    """

    loss: torch.Tensor
    rewards: torch.Tensor
    n: int
    sums: dict[str, float] = field(default_factory=dict)
    units: float | None = None
