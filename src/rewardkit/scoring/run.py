"""The one batched forward of a value-head model: `run_model`, and its sharing between processes.

Sequences are sorted by length, cut by count and token budget, and returned in input order, so results do
not depend on batch size or padding side. On CPU each batch is one padding-free packed row (segment
attention); elsewhere batches are padded. Inside `sharded_scoring(shard)` (training's evaluation on several
processes) each process scores its share and every process gets every output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from rewardkit.data.collators import pad_sequences
from rewardkit.data.packing import flat_round_steps, pack_sequences, prompt_groups, unit_tokens
from rewardkit.data.tokenize import TokenizedPair, TokenizedSequence
from rewardkit.models.heads import HeadOutput
from rewardkit.models.reward_model import RewardModel


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None,
                   counts: Sequence[int] | None = None) -> list[list[int]]:
    """Indices sorted by length, cut at `batch_size` items or when entries x longest > `max_tokens`.
    counts: items each entry holds (a prompt-group unit: its responses); default 1 each."""
    batches: list[list[int]] = []
    held = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        c = counts[i] if counts is not None else 1
        if batches and held + c <= batch_size and (
                max_tokens is None or (len(batches[-1]) + 1) * lengths[i] <= max_tokens):
            batches[-1].append(i)
            held += c
        else:
            batches.append([i])
            held = c
    return batches


def distinct(seqs: Sequence[TokenizedSequence]) -> tuple[list[TokenizedSequence], torch.Tensor]:
    """The distinct sequences (tokens, token types and response start all equal) in first-seen order, and each
    input's index among them (N,): identical texts are computed once and get the very same score (an identical
    pair is an exact tie, whatever unit or row each copy would have landed in)."""
    seen: dict[tuple, int] = {}
    uniq: list[TokenizedSequence] = []
    inverse = []
    for s in seqs:
        key = (tuple(s.input_ids), s.response_start, None if s.token_type_ids is None else tuple(s.token_type_ids))
        j = seen.setdefault(key, len(uniq))
        if j == len(uniq):
            uniq.append(s)
        inverse.append(j)
    return uniq, torch.tensor(inverse, dtype=torch.long)


def unit_batches(seqs: list[TokenizedSequence], *, share: bool, batch_size: int,
                 max_tokens: int | None) -> list[tuple[list[int], list[list[int]]]]:
    """Forward batches of `prompt_groups` units (with `share`; else every sequence alone), cut as
    `length_batches` cuts them (a unit counts as its responses): per batch, the input indices in batch order and
    the units as positions in that order (`pack_sequences(groups=...)`)."""
    units = prompt_groups(seqs, causal=share)
    out = []
    for picked in length_batches([unit_tokens(seqs, u) for u in units], batch_size, max_tokens,
                                 [len(u) for u in units]):
        idx = [i for u in picked for i in units[u]]
        at = {i: k for k, i in enumerate(idx)}
        out.append((idx, [[at[i] for i in units[u]] for u in picked]))
    return out


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
              device: torch.device | str = "cpu", max_tokens: int | None = None, bf16: bool = False,
              share_prompts: bool = True) -> HeadOutput:
    """Head outputs for tokenised sequences, in input order, on the CPU: score (N,) and extras (N, ...).

    `max_tokens` caps padded tokens per forward; `bf16` runs the forward under bf16 autocast. Inside
    `sharded_scoring` the work is shared between processes (see there). `share_prompts` (decoders, CPU's flat
    rows): sequences with the same prompt tokens are laid out [prompt][response 1]...[response k], the prompt
    computed once (`data.packing.prompt_groups`); each response's score is what it gets alone. Identical
    sequences are computed once (`distinct`).
    """
    kw = dict(pad_id=pad_id, batch_size=batch_size, device=device, max_tokens=max_tokens, bf16=bf16,
              share_prompts=share_prompts)
    seqs, inverse = distinct(seqs)
    shard = _SHARD.get()
    out = _run_shared(model, seqs, shard, **kw) if shard is not None and seqs else _run_local(model, seqs, **kw)
    return HeadOutput(out.score[inverse], {name: t[inverse] for name, t in out.extras.items()})


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
               device: torch.device | str, max_tokens: int | None, bf16: bool, share_prompts: bool) -> HeadOutput:
    was_training = model.training
    model.eval()
    score = torch.empty(len(seqs), dtype=torch.float32)
    extras: dict[str, torch.Tensor] = {}
    dev_type = torch.device(device).type
    flat = dev_type == "cpu"  # elsewhere padded batches (no shared prompts there yet)
    causal = not model.is_encoder
    # One autocast context for all batches: it caches the bf16 copies of the weights until it exits. bf16=False
    # keeps a caller's autocast (training's eval runs at the training precision) instead of switching it off.
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=bf16 or torch.is_autocast_enabled(dev_type)):
        for idx, groups in unit_batches(seqs, share=causal and flat and share_prompts, batch_size=batch_size,
                                        max_tokens=max_tokens):
            chunk = [seqs[i] for i in idx]
            batch = (pack_sequences(chunk, pad_id, causal=causal, flat=True, round_steps=flat_round_steps(dev_type),
                                    groups=groups) if flat
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
