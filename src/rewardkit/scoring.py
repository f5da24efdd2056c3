"""Scoring with a trained model: the `Scorer` interface every consumer talks to, and the one batched loop.

`Scorer` is what eval, calibrate, the apps (score/rank/filter/make-pairs) and the server use:
  score(prompts, responses)  -> a reward per (prompt, response)
  compare(prompts, a, b)     -> P(a ≻ b) per prompt (`metrics.preference_prob` at the model's temperature)
  rank(prompt, candidates)   -> candidates ordered best first
`RewardScorer` implements it for every value-head kind (`models.kinds`). `run_model` is the one batched
forward: sequences sorted by length, cut by count and token budget, returned in input order, so results do
not depend on batch size or padding side. On CPU each batch is one padding-free packed row (segment
attention); elsewhere batches are padded. Inside `sharded_scoring(shard)` (training's evaluation on several
processes) each process scores its share and every process gets every output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from rewardkit.config import SCORE_MAX_TOKENS
from rewardkit.data.collators import pad_sequences
from rewardkit.data.fields import Message, Text
from rewardkit.data.packing import pack_sequences
from rewardkit.data.tokenize import SequenceEncoder, TokenizedPair, TokenizedSequence
from rewardkit.metrics import check_temperature, preference_prob
from rewardkit.models.heads import HeadOutput
from rewardkit.models.reward_model import RewardModel


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices sorted by length, cut at `batch_size` items or when items x longest > `max_tokens`."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and (
                max_tokens is None or (len(batches[-1]) + 1) * lengths[i] <= max_tokens):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass(frozen=True)
class EvalShard:
    """This process's part in a scoring pass shared by `count` processes (e.g. ranks of a training run).

    gather: a collective that takes an (m, ...) tensor from every process and returns their concatenation
    (count * m, ...) in process order, on the CPU (the trainer's `accelerator.gather`)."""

    index: int
    count: int
    gather: Callable[[torch.Tensor], torch.Tensor]


_SHARD: ContextVar[EvalShard | None] = ContextVar("rewardkit_eval_shard", default=None)


@contextmanager
def sharded_scoring(shard: EvalShard | None) -> Iterator[None]:
    """Within this block every `run_model` call (and so `score_sequences`, `pair_rewards` and every objective's
    evaluation) is shared: each process scores every `count`-th sequence by length and the outputs are
    gathered, so each sequence is scored exactly once and every process returns all N outputs in input order.
    Every process must make the same calls with the same sequences. None (or count 1): no sharing."""
    token = _SHARD.set(shard if shard is not None and shard.count > 1 else None)
    try:
        yield
    finally:
        _SHARD.reset(token)


def current_shard() -> EvalShard | None:
    """The active `sharded_scoring` shard, or None."""
    return _SHARD.get()


@torch.no_grad()
def run_model(model: RewardModel, seqs: Sequence[TokenizedSequence], *, pad_id: int, batch_size: int = 32,
              device: torch.device | str = "cpu", max_tokens: int | None = None, bf16: bool = False) -> HeadOutput:
    """Head outputs for tokenised sequences, in input order, on the CPU: score (N,) and extras (N, ...).

    `max_tokens` caps padded tokens per forward; `bf16` runs the forward under bf16 autocast. Inside
    `sharded_scoring` the work is shared between processes (see there).
    """
    kw = dict(pad_id=pad_id, batch_size=batch_size, device=device, max_tokens=max_tokens, bf16=bf16)
    shard = _SHARD.get()
    if shard is not None and seqs:
        return _run_shared(model, seqs, shard, **kw)
    return _run_local(model, seqs, **kw)


def _run_shared(model: RewardModel, seqs: Sequence[TokenizedSequence], shard: EvalShard, **kw: Any) -> HeadOutput:
    """Process k scores the sequences at positions k, k + count, ... of the length order (similar token counts
    on every process); outputs are padded to the longest share, gathered and put back in input order. A
    process whose share is empty scores a stand-in (never used) so that all take part in the same gathers."""
    n, count = len(seqs), shard.count
    order = sorted(range(n), key=lambda i: len(seqs[i].input_ids))
    shares = [order[k::count] for k in range(count)]
    m = len(shares[0])  # the longest share
    mine = shares[shard.index] or order[:1]
    local = _run_local(model, [seqs[i] for i in mine], **kw)

    def gather(t: torch.Tensor) -> torch.Tensor:  # (len(mine), ...) -> (n, ...) in input order
        padded = torch.zeros((m, *t.shape[1:]), dtype=t.dtype)
        k = min(len(shares[shard.index]), m)
        padded[:k] = t[:k]
        every = shard.gather(padded).cpu().reshape(count, m, *t.shape[1:])
        out = torch.empty((n, *t.shape[1:]), dtype=t.dtype)
        for j, idx in enumerate(shares):
            out[idx] = every[j, :len(idx)]
        return out

    return HeadOutput(gather(local.score), {name: gather(local.extras[name]) for name in sorted(local.extras)})


def _run_local(model: RewardModel, seqs: Sequence[TokenizedSequence], *, pad_id: int, batch_size: int,
               device: torch.device | str, max_tokens: int | None, bf16: bool) -> HeadOutput:
    was_training = model.training
    model.eval()
    score = torch.empty(len(seqs), dtype=torch.float32)
    extras: dict[str, torch.Tensor] = {}
    dev_type = torch.device(device).type
    # One autocast context for all batches: it caches the bf16 copies of the weights until it exits.
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=bf16):
        for idx in length_batches([len(s.input_ids) for s in seqs], batch_size, max_tokens):
            chunk = [seqs[i] for i in idx]
            batch = (pack_sequences(chunk, pad_id, causal=not model.is_encoder, flat=True) if dev_type == "cpu"
                     else pad_sequences(chunk, pad_id)).to(device)
            out = model.outputs(batch)
            score[idx] = out.score.float().cpu()
            for name, t in out.extras.items():
                if name not in extras:
                    extras[name] = torch.empty((len(seqs), *t.shape[1:]))
                extras[name][idx] = t.float().cpu()
    model.train(was_training)
    return HeadOutput(score, extras)


def score_sequences(model: RewardModel, seqs: Sequence[TokenizedSequence], **kw: Any) -> torch.Tensor:
    """Raw rewards (N,) of tokenised sequences, in input order (`run_model`'s score)."""
    return run_model(model, seqs, **kw).score


def pair_rewards(model: RewardModel, pairs: Sequence[TokenizedPair], **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) raw rewards, each (B,), for tokenised pairs (one sorted pass over all 2B)."""
    r = score_sequences(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], **kw)
    return r[:len(pairs)], r[len(pairs):]


@dataclass(frozen=True)
class Comparison:
    """Two responses to one prompt: raw rewards and P(a ≻ b) = sigmoid((reward_a − reward_b) / temperature)."""

    reward_a: float
    reward_b: float
    prob_a_better: float
    temperature: float


@dataclass(frozen=True)
class Ranking:
    """N candidates for one prompt: their scores, indices best first (ties keep input order), the best."""

    scores: list[float]
    order: list[int]
    best: int


@dataclass
class ScoreDetails:
    """Everything a scoring pass knows per (prompt, response), (N,) each: raw rewards, response tokens the
    model saw (after truncation, incl. the end token), whether it was truncated, and the head's published
    extras (e.g. a multi-objective model's attributes and gate, (N, A)) with their column names."""

    rewards: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """Per item: {"score": raw reward, <extra>: {name: value}, ...}."""
        out = [{"score": r} for r in self.rewards.tolist()]
        for key, t in self.extras.items():
            for row, values in zip(out, t.tolist()):
                row[key] = dict(zip(self.names[key], values))
        return out


@runtime_checkable
class Scorer(Protocol):
    """What every consumer of a trained model calls (eval, apps, server)."""

    temperature: float  # T of P(a ≻ b), calibrated by `rewardkit calibrate` (1.0 when unfitted)

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> list[float]: ...

    def score_details(self, prompts: Sequence[Text], responses: Sequence[Text]) -> ScoreDetails: ...

    def normalize(self, raw: torch.Tensor) -> torch.Tensor: ...

    def compare(self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text], *,
                temperature: float | None = None) -> list[Comparison]: ...

    def rank(self, prompt: Text, candidates: Sequence[Text], *, normalize: bool = False) -> Ranking: ...


def rank_scores(scores: Sequence[float], tiebreak: Sequence[float] | None = None) -> Ranking:
    """Indices best first: by score, then `tiebreak` (e.g. raw scores), then input order."""
    tb = tiebreak if tiebreak is not None else scores
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], -tb[i]))
    return Ranking(list(scores), order, order[0])


class RewardScorer:
    """A loaded reward model plus its tokenizer and sequence layout; implements `Scorer`."""

    def __init__(self, model: RewardModel, tokenizer, *, max_length: int = 2048, batch_size: int = 32,
                 device: torch.device | str = "cpu", max_tokens: int | None = SCORE_MAX_TOKENS, bf16: bool = False):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.encoder = SequenceEncoder(tokenizer, max_length, model.is_encoder)
        self.batch_size = batch_size
        self.device = device
        self.max_tokens = max_tokens  # padded tokens per forward (None: batch_size alone)
        self.bf16 = bf16  # bf16 autocast in the forwards (scores then agree with fp32 less closely)

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str = "cpu", batch_size: int = 32,
             max_length: int | None = None, max_tokens: int | None = SCORE_MAX_TOKENS,
             bf16: bool = False) -> "RewardScorer":
        """Load a saved reward model folder (any kind); `max_length` defaults to the one it was trained with."""
        model, tok = RewardModel.from_pretrained(str(path))
        return cls(model, tok, max_length=max_length or model.saved_max_length or 2048,
                   batch_size=batch_size, device=device, max_tokens=max_tokens, bf16=bf16)

    # ------------------------------------------------------------------ tokens in, rewards out

    def encode(self, prompt: Text, response: Text) -> TokenizedSequence:
        return self.encoder.encode(prompt, response)

    def encode_text(self, text: str) -> TokenizedSequence:
        """A full prompt+response text, as a PPO trainer decodes it (see `SequenceEncoder.encode_text`)."""
        return self.encoder.encode_text(text)

    def run(self, seqs: Sequence[TokenizedSequence], **overrides: Any) -> HeadOutput:
        """The model's outputs for tokenised sequences, (N,) score plus extras, in input order; `overrides`
        replace this scorer's `run_model` settings (batch_size, max_tokens, bf16)."""
        kw = dict(pad_id=self.tokenizer.pad_token_id, device=self.device, batch_size=self.batch_size,
                  max_tokens=self.max_tokens, bf16=self.bf16)
        return run_model(self.model, seqs, **{**kw, **overrides})

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """(raw − mean) / std with the statistics saved in the model's config.json."""
        return self.model.normalize(raw)

    # ------------------------------------------------------------------ the Scorer interface

    def score_details(self, prompts: Sequence[Text], responses: Sequence[Text]) -> ScoreDetails:
        """Raw rewards, token lengths and the head's published extras of N (prompt, response) pairs."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
        out = self.run(seqs)
        names = self.model.head.published
        return ScoreDetails(out.score, torch.tensor([len(s.input_ids) - s.response_start for s in seqs]),
                            torch.tensor([s.truncated for s in seqs], dtype=torch.bool),
                            {k: out.extras[k] for k in names}, dict(names))

    def score_texts(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> torch.Tensor:
        """Rewards (N,) for N (prompt, response) pairs; each may be a string or chat messages."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        raw = self.run([self.encode(p, r) for p, r in zip(prompts, responses)]).score
        return self.normalize(raw) if normalize else raw

    def score_full_texts(self, texts: Sequence[str], *, normalize: bool = False) -> torch.Tensor:
        """Rewards (N,) for N full prompt+response texts (OpenRLHF's remote-RM queries)."""
        raw = self.run([self.encode_text(t) for t in texts]).score
        return self.normalize(raw) if normalize else raw

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> list[float]:
        """Rewards as floats, one per (prompt, response)."""
        return self.score_texts(prompts, responses, normalize=normalize).tolist()

    def score_messages(self, conversations: Sequence[list[Message]], *, normalize: bool = False) -> list[float]:
        """Rewards for whole chats: the last message is the response, the rest the prompt."""
        return self.score([c[:-1] for c in conversations], [c[-1:] for c in conversations], normalize=normalize)

    @property
    def temperature(self) -> float:
        """T from the model's config.json (`rewardkit.temperature`, set by `rewardkit calibrate`); 1.0 if unfitted."""
        return self.model.temperature

    def compare(self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text], *,
                temperature: float | None = None) -> list[Comparison]:
        """For each prompt, P(response a ≻ response b) = sigmoid((r_a − r_b) / T); T defaults to the model's."""
        n = len(prompts)
        if not len(responses_a) == len(responses_b) == n:
            raise ValueError(f"got {n} prompts, {len(responses_a)} responses_a and {len(responses_b)} responses_b")
        t = check_temperature(self.temperature if temperature is None else temperature)
        r = self.score_texts(list(prompts) * 2, list(responses_a) + list(responses_b))  # one sorted pass: (2n,)
        ra, rb = r[:n].double(), r[n:].double()
        p = preference_prob(ra - rb, t)
        return [Comparison(a, b, q, t) for a, b, q in zip(ra.tolist(), rb.tolist(), p.tolist())]

    def prob_better(self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text], *,
                    temperature: float | None = None) -> list[float]:
        """P(a ≻ b) per prompt, as `compare(...)[i].prob_a_better`."""
        return [c.prob_a_better for c in self.compare(prompts, responses_a, responses_b, temperature=temperature)]

    def rank(self, prompt: Text, candidates: Sequence[Text], *, normalize: bool = False) -> Ranking:
        """Candidates for one prompt, best first (one scoring pass; ties keep input order)."""
        if not candidates:
            raise ValueError("rank needs at least one candidate")
        return rank_scores(self.score([prompt] * len(candidates), list(candidates), normalize=normalize))
