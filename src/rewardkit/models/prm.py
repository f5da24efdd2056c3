"""Process reward models: the backbone's 1-output head applied at each step's readout token (token
classification at the step separators, one logit per step: P(step correct) = sigmoid(logit)).

The head is `ScalarHead`'s linear layer (so the weights sit where HF's `score` / `classifier` sits) plus the
step separator, which is saved in config.json (`rewardkit.prm.step_separator`): a saved model splits string
responses into steps the way it was trained. Read through `forward(Features)` (what `RewardScorer` would
call) it gives the value at the sequence's last token, which in the stepwise layout of `data.steps` is the
last step's readout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewardkit.batches import SequenceBatch
from rewardkit.models.heads import ScalarHead, _init_linear
from rewardkit.models.segment_attention import planless_attention

DEFAULT_SEPARATOR = "\n"  # TRL's `step_separator` default (kept equal to data.steps.DEFAULT_SEPARATOR)


class StepHead(ScalarHead):
    """One logit per step from the linear head on the hidden state at the step's readout token."""

    kind = "prm"

    def __init__(self, hf: nn.Module, readout: str, encoder: bool, separator: str = DEFAULT_SEPARATOR):
        super().__init__(hf, readout, encoder)
        if not isinstance(self.linear, nn.Linear):
            raise ValueError(f"a process reward model reads every step with a linear head; "
                             f"{type(hf).__name__} has {type(self.linear).__name__}")
        self.separator = separator

    @classmethod
    def build(cls, hf: nn.Module, readout: str, encoder: bool, *, saved: dict[str, Any], path: str,
              new_head: bool, seed: int) -> "StepHead":
        sep = (saved.get("prm") or {}).get("step_separator", DEFAULT_SEPARATOR)
        head = cls(hf, readout, encoder, sep)
        if new_head:
            _init_linear(head.linear, torch.Generator().manual_seed(seed))
        return head

    def hf_equivalent(self, readout: str, encoder: bool) -> bool:
        return False  # HF's sequence classifier reads one token; the steps need their positions

    def save_extras(self, out_dir: Path) -> dict[str, Any]:
        return {"prm": {"step_separator": self.separator}}


def step_logits(model: nn.Module, sequences: SequenceBatch, positions: torch.Tensor) -> torch.Tensor:
    """Logits (N, S) float32 of the steps of N right-padded sequences (`data.collators.StepCollator`).

    model: a `RewardModel` with a `StepHead`; positions: (N, S) long token index of each step's readout in
    its row (any index, e.g. 0, in padding slots: mask them out)."""
    if not bool(sequences.attention_mask[:, 0].all()):
        raise ValueError("step_logits needs right-padded batches")
    kw = {"token_type_ids": sequences.token_type_ids} if sequences.token_type_ids is not None else {}
    with planless_attention(sequences.input_ids.device):
        hidden = model.hf.base_model(input_ids=sequences.input_ids, attention_mask=sequences.attention_mask,
                                     **kw).last_hidden_state  # (N, T, H)
    at = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # (N, S, H)
    return model.head.values(at)
