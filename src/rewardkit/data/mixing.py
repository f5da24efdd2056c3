"""Several training sources mixed by weight, and named eval sets.

`data.train` is one source or a list of `Source`s; `data.eval` one source or a mapping name -> source.
`mixture_indices` draws one epoch of a mixture: source i contributes round(N * w_i / sum(w)) examples, N the
total size of all sources, taken in a seeded random order without repeats until the source is exhausted (a
source with more weight than rows repeats its rows, a lighter one is subsampled). The draw changes with the
epoch and is fixed by (seed, epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePath

import torch

from rewardkit.config import Columns, DataConfig, Source


@dataclass(frozen=True)
class SourceSpec:
    """A source with every setting resolved against `data.*`."""

    name: str
    path: str
    weight: float
    format: str
    columns: Columns
    split: str
    max_samples: int | None


def _name(path: str, taken: set[str]) -> str:
    base = PurePath(path.rstrip("/")).stem or "data"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _resolve(src: Source, d: DataConfig, name: str, max_samples: int | None) -> SourceSpec:
    return SourceSpec(name, src.path, src.weight, src.format or d.format, src.columns or d.columns,
                      src.split or d.split, src.max_samples if src.max_samples is not None else max_samples)


def training_sources(d: DataConfig) -> list[SourceSpec]:
    """`data.train` as resolved sources (one for a plain path; `data.max_samples` caps a plain path only)."""
    if isinstance(d.train, str):
        return [_resolve(Source(path=d.train), d, _name(d.train, set()), d.max_samples)]
    if not d.train:
        raise ValueError("data.train: the list of sources is empty")
    taken: set[str] = set()
    specs = [_resolve(s, d, _name(s.path, taken), None) for s in d.train]
    if not any(s.weight > 0 for s in specs):
        raise ValueError("data.train: every source has weight 0")
    return specs


def eval_sources(d: DataConfig) -> dict[str, SourceSpec]:
    """`data.eval` as named resolved sets ({} when unset; one set named "eval" for a plain path)."""
    if d.eval is None or d.eval == "":
        return {}
    if isinstance(d.eval, str):
        return {"eval": _resolve(Source(path=d.eval), d, "eval", None)}
    return {name: _resolve(Source(path=s) if isinstance(s, str) else replace(s), d, name, None)
            for name, s in d.eval.items()}


def check_held_out(train: Sequence[SourceSpec], held: dict[str, SourceSpec]) -> None:
    """An eval set that reads the very data a training source reads (same file, or the same split of one
    DatasetDict folder: `data.split` serves both unless a source names its own) would report training accuracy
    as held-out accuracy."""
    for name, e in held.items():
        for t in train:
            if Path(e.path).expanduser().resolve() == Path(t.path).expanduser().resolve() and e.split == t.split:
                key = "data.eval" if name == "eval" else f"data.eval.{name}"
                raise ValueError(f"{key}: reads the same data as data.train ({e.path}, split {e.split}): its accuracy "
                                 f"would not be held out; name another split, e.g. {key}={{path: {e.path}, split: "
                                 "test}, or set data.eval_size to hold out part of the training file")


def mixture_counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Examples per epoch from each source: round(N * w_i / sum(w)), N = sum(sizes); a source with weight > 0
    gives at least one."""
    total, wsum = sum(sizes), float(sum(weights))
    return [max(1, round(total * w / wsum)) if w > 0 and n > 0 else 0 for n, w in zip(sizes, weights)]


def mixture_indices(sizes: Sequence[int], weights: Sequence[float], *, seed: int, epoch: int) -> list[int]:
    """One epoch of the mixture: indices into the sources' concatenation, source by source (the batch sampler
    shuffles them). Within a source, a seeded permutation is walked, and walked again when it runs out."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    out: list[int] = []
    start = 0
    for n, count in zip(sizes, mixture_counts(sizes, weights)):
        perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(count / n))] if n else []
        out.extend((torch.cat(perms)[:count] + start).tolist() if perms else [])
        start += n
    return out


class MixtureDataset:
    """The items of one epoch of a weighted mixture (a map-style dataset); `set_epoch` draws the next epoch.

    items: the sources' items, concatenated in `sizes` order. Its length is the same every epoch, so a
    DataLoader and its samplers can be built once; `lengths(key)` gives the current epoch's per-item lengths
    for length-aware batch samplers."""

    def __init__(self, items: Sequence, sizes: Sequence[int], weights: Sequence[float], *, seed: int):
        self.items, self.sizes, self.weights, self.seed = items, list(sizes), list(weights), seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.index = mixture_indices(self.sizes, self.weights, seed=self.seed, epoch=epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int | tuple[int, ...]):
        if isinstance(i, tuple):  # a packed row of items (PackedBatchSampler)
            return tuple(self.items[self.index[k]] for k in i)
        return self.items[self.index[i]]

    def lengths(self, key) -> list[int]:
        """`key(item)` for every item of the current epoch, in dataset order."""
        return [key(self.items[j]) for j in self.index]


class _MixtureSampler:
    """A batch sampler over a `MixtureDataset` that draws the next epoch of the mixture (and hands the sampler
    the new items' lengths) whenever the epoch changes."""

    def __init__(self, sampler, dataset: MixtureDataset, key):
        self.sampler, self.dataset, self.key = sampler, dataset, key

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.dataset.epoch:
            self.dataset.set_epoch(epoch)
            if self.key is not None:
                self.sampler.lengths = self.dataset.lengths(self.key)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def follow_mixture(sampler, items, key):
    """`sampler` as it is for plain items; for a `MixtureDataset`, wrapped so each epoch redraws the mixture.
    key(item): the length the sampler batches by (None when it ignores lengths)."""
    return _MixtureSampler(sampler, items, key) if isinstance(items, MixtureDataset) else sampler
