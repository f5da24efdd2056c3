"""`StepScorer`: the `Judge` of process reward models (kind `prm`), and their batched forward `run_steps`.

A PRM gives every reasoning step P(step correct) = sigmoid(logit at the step's readout token). Per response:
  score_steps(prompts, step_lists)  -> per step probabilities (None for steps cut by max_length)
  score / score_texts               -> one number per response, `model.aggregate` of its step probabilities:
                                       min (default), product, or last (the last step that fit)
A response given as a string (or chat messages) is split on the model's saved step separator; a list of
strings is taken as the steps. `compare` / `rank` follow from the aggregate (`PointwiseJudge`), so Best-of-N,
rank, filter, make-pairs and pair eval work unchanged; `score_details` carries the step probabilities as a
`steps` list per response (`rewardkit score` writes it as a list column).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardkit.data.collators import StepCollator
from rewardkit.data.fields import Text
from rewardkit.data.steps import StepEncoder, TokenizedSteps, split_steps
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.models.packed_linear import pack_for_inference
from rewardkit.models.positions import fit_max_length
from rewardkit.models.prm import step_logits
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring.base import PointwiseJudge, ScoreDetails, UnscorableResponse
from rewardkit.scoring.run import length_batches

AGGREGATES = ("min", "product", "last")


@torch.no_grad()
def run_steps(model: RewardModel, items: Sequence[TokenizedSteps], *, pad_id: int, batch_size: int = 32,
              device: torch.device | str = "cpu", max_tokens: int | None = None,
              bf16: bool = False) -> list[torch.Tensor]:
    """Step logits of tokenised stepwise sequences, in input order: one (k_i,) float32 CPU tensor per item
    (k_i = its kept steps). Batches are length-sorted and right-padded (cut at `batch_size` items or
    `max_tokens` padded tokens); every process computes all of them (no sharing between processes)."""
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(items)
    collate = StepCollator(pad_id)
    dev_type = torch.device(device).type
    # bf16=False keeps a caller's autocast (training's eval runs at the training precision).
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=bf16 or torch.is_autocast_enabled(dev_type)):
        for idx in length_batches([len(it.sequence.input_ids) for it in items], batch_size, max_tokens):
            batch = collate([items[i] for i in idx]).to(device)
            logits = step_logits(model, batch.sequences, batch.positions).float().cpu()
            for row, i in enumerate(idx):
                out[i] = logits[row, :len(items[i].positions)]
    model.train(was_training)
    return out


def aggregate(probs: Sequence[float], how: str) -> float:
    """One score from step probabilities (the steps that were scored): min, product or last."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregate {how!r}; choose from {', '.join(AGGREGATES)}")
    if not probs:
        return float("nan")
    if how == "min":
        return min(probs)
    if how == "last":
        return probs[-1]
    return math.prod(probs)


@dataclass
class StepScoreDetails(ScoreDetails):
    """`ScoreDetails` plus each response's step probabilities (variable length; None = cut by max_length)."""

    steps: list[list[float | None]] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """Per item: {"score": aggregate, "steps": [p_1, ..., p_K]}."""
        out = super().rows()
        for row, s in zip(out, self.steps):
            row["steps"] = s
        return out


class StepScorer(PointwiseJudge):
    """A loaded process reward model plus its tokenizer; implements `Judge` (pointwise, by aggregate)."""

    kind = "prm"

    def __init__(self, model: RewardModel, tokenizer, *, aggregate: str = "min", max_length: int = 2048,
                 batch_size: int = 32, device: torch.device | str = "cpu", max_tokens: int | None = None,
                 bf16: bool = False):
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
        if model.kind != "prm":
            raise ValueError(f"StepScorer needs a process reward model (kind prm), got kind {model.kind!r}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.aggregate = aggregate
        self.separator: str = model.head.separator
        sequences = SequenceEncoder(tokenizer, max_length, model.is_encoder, model.token_types)
        self.encoder = StepEncoder(sequences, self.separator)
        self.batch_size, self.device, self.max_tokens, self.bf16 = batch_size, device, max_tokens, bf16

    @classmethod
    def load(cls, path: str | Path, *, aggregate: str = "min", device: torch.device | str = "cpu",
             batch_size: int = 32, max_length: int | None = None, max_tokens: int | None = None,
             bf16: bool = False) -> "StepScorer":
        """A saved PRM folder; `max_length` defaults to the one it was trained with."""
        model, tok = RewardModel.from_pretrained(str(path))
        scorer = cls(model, tok, aggregate=aggregate,
                     max_length=fit_max_length(model, max_length, model.saved_max_length or 2048),
                     batch_size=batch_size, device=device, max_tokens=max_tokens, bf16=bf16)
        pack_for_inference(model, device, bf16)  # CPU bf16: faster linears, same scores
        return scorer

    @classmethod
    def from_folder(cls, path: str, options: dict[str, Any], **settings: Any) -> "StepScorer":
        """The registry's entry (`scoring.judges`): reads `model.aggregate`."""
        return cls.load(path, aggregate=options.get("aggregate") or "min", **settings)

    @property
    def temperature(self) -> float:
        return self.model.temperature

    def run(self, items: Sequence[TokenizedSteps]) -> list[torch.Tensor]:
        """Step logits, one (k_i,) tensor per tokenised item (`run_steps` with this scorer's settings)."""
        return run_steps(self.model, items, pad_id=self.tokenizer.pad_token_id, batch_size=self.batch_size,
                         device=self.device, max_tokens=self.max_tokens, bf16=self.bf16)

    def encode(self, prompt: Text, steps: Sequence[str]) -> TokenizedSteps:
        return self.encoder.encode(prompt, list(steps))

    def _steps_of(self, prompts: Sequence[Text], responses: Sequence[Any]) -> list[list[str]]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        lists = [split_steps(r, self.separator) for r in responses]
        empty = [i for i, s in enumerate(lists) if not s]
        if empty:
            raise UnscorableResponse(f"response {empty[0] + 1} of {len(lists)} has no steps (nothing but separators "
                                     "or whitespace): a process reward model scores steps")
        return lists

    def _probs(self, prompts: Sequence[Text], step_lists: Sequence[Sequence[str]]
               ) -> tuple[list[TokenizedSteps], list[list[float | None]]]:
        items = [self.encode(p, s) for p, s in zip(prompts, step_lists)]
        probs = [torch.sigmoid(x.double()).tolist() for x in self.run(items)]
        return items, [p + [None] * (it.steps - len(p)) for it, p in zip(items, probs)]

    def score_steps(self, prompts: Sequence[Text], step_lists: Sequence[Any]) -> list[list[float | None]]:
        """P(step correct) for every step of every response, in order; None for steps cut by max_length.
        step_lists: per response a list of step strings, or a string split on the separator."""
        return self._probs(prompts, self._steps_of(prompts, step_lists))[1]

    def _aggregate(self, probs: list[list[float | None]]) -> torch.Tensor:
        return torch.tensor([aggregate([p for p in ps if p is not None], self.aggregate) for ps in probs],
                            dtype=torch.float64)

    def score_texts(self, prompts: Sequence[Text], responses: Sequence[Any], *,
                    normalize: bool = False) -> torch.Tensor:
        """(N,) `aggregate` of each response's step probabilities (normalised with the saved mean/std)."""
        raw = self._aggregate(self.score_steps(prompts, responses))
        return self.normalize(raw) if normalize else raw

    def score_details(self, prompts: Sequence[Text], responses: Sequence[Any]) -> StepScoreDetails:
        """Aggregates, response tokens seen, truncation, and the per-step probabilities (`steps`)."""
        items, probs = self._probs(prompts, self._steps_of(prompts, responses))
        return StepScoreDetails(self._aggregate(probs),
                                torch.tensor([len(it.sequence.input_ids) - it.sequence.response_start for it in items]),
                                torch.tensor([it.truncated for it in items], dtype=torch.bool), steps=probs)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """(raw − mean) / std with the statistics saved at training (of the `min` aggregate on eval data)."""
        return self.model.normalize(raw)
