"""Scoring with a trained reward model: `RewardScorer.load(path).score(prompts, responses)`.

Sequences are sorted by length and scored in batches, then returned in input order; results do not
depend on batch size or padding side (every readout is computed on right-aligned rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rewardkit.data.collators import pad_sequences
from rewardkit.data.formats import Message, Text
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence
from rewardkit.models.reward_model import RewardModel


@torch.no_grad()
def score_sequences(model: RewardModel | torch.nn.Module, seqs: Sequence[TokenizedSequence], *, pad_id: int,
                    batch_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Raw rewards for tokenised sequences, shape (N,), in input order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].input_ids))
    out = torch.empty(len(seqs), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = pad_sequences([seqs[i] for i in idx], pad_id).to(device)
        out[idx] = model(batch).float().cpu()
    model.train(was_training)
    return out


class RewardScorer:
    """A loaded reward model plus its tokenizer and sequence layout."""

    def __init__(self, model: RewardModel, tokenizer, *, max_length: int = 2048, batch_size: int = 32,
                 device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.encoder = SequenceEncoder(tokenizer, max_length, model.is_encoder)
        self.batch_size = batch_size
        self.device = device

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str = "cpu", batch_size: int = 32,
             max_length: int | None = None) -> "RewardScorer":
        """Load a saved reward model folder; `max_length` defaults to the one it was trained with."""
        model, tok = RewardModel.from_pretrained(str(path))
        return cls(model, tok, max_length=max_length or model.saved_max_length or 2048,
                   batch_size=batch_size, device=device)

    def score_texts(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> torch.Tensor:
        """Rewards (N,) for N (prompt, response) pairs; each may be a string or chat messages."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        seqs = [self.encoder.encode(p, r) for p, r in zip(prompts, responses)]
        raw = score_sequences(self.model, seqs, pad_id=self.tokenizer.pad_token_id,
                              batch_size=self.batch_size, device=self.device)
        return self.model.normalize(raw) if normalize else raw

    def score_full_texts(self, texts: Sequence[str], *, normalize: bool = False) -> torch.Tensor:
        """Rewards (N,) for N full prompt+response texts (OpenRLHF's remote-RM queries); see `encode_text`."""
        seqs = [self.encoder.encode_text(t) for t in texts]
        raw = score_sequences(self.model, seqs, pad_id=self.tokenizer.pad_token_id,
                              batch_size=self.batch_size, device=self.device)
        return self.model.normalize(raw) if normalize else raw

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> list[float]:
        """Rewards as floats, one per (prompt, response)."""
        return self.score_texts(prompts, responses, normalize=normalize).tolist()

    def score_messages(self, conversations: Sequence[list[Message]], *, normalize: bool = False) -> list[float]:
        """Rewards for whole chats: the last message is the response, the rest the prompt."""
        return self.score([c[:-1] for c in conversations], [c[-1:] for c in conversations], normalize=normalize)
