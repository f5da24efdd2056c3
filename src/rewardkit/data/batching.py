"""Length-grouped and token-budget batching.

Items are shuffled, cut into large windows, sorted by length inside each window, cut into batches, and the
batches are shuffled again: batches hold similar lengths (little padding) while the order stays random.
A batch closes at `batch_size` items, or, with `max_tokens`, when items x seqs_per_item x longest length
(what a padded forward computes) would exceed the budget.

For packing, `PackedBatchSampler` fills rows of a fixed length first-fit-decreasing over a whole window
(many small items close the gaps left by long ones), then groups rows into batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch


class LengthGroupedBatchSampler:
    """Yields lists of item indices; deterministic for a given (seed, epoch).

    lengths: cost length of each item (for a pair, its longer sequence; for packing, chosen + rejected).
    """

    def __init__(self, lengths: Sequence[int], *, batch_size: int | None = None, max_tokens: int | None = None,
                 seqs_per_item: int = 1, window: int = 4096, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, group: bool = True):
        if batch_size is None and max_tokens is None:
            raise ValueError("give batch_size, max_tokens or both")
        if max_tokens is not None and max_tokens < max(lengths) * seqs_per_item:
            raise ValueError(f"max_tokens={max_tokens} is smaller than the longest item "
                             f"({max(lengths)} tokens x {seqs_per_item} sequences)")
        self.lengths = list(lengths)
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.seqs_per_item, self.window, self.shuffle = seqs_per_item, window, shuffle
        self.seed, self.epoch, self.drop_last, self.group = seed, 0, drop_last, group
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        if self._cache and self._cache[0] == self.epoch:
            return self._cache[1]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=gen).tolist() if self.shuffle else list(range(n))
        out: list[list[int]] = []
        window = self.window if self.group else n  # without grouping: budgets only, in shuffled order
        for start in range(0, n, window):
            chunk = order[start:start + window]
            if self.group:
                chunk = sorted(chunk, key=lambda i: self.lengths[i])
            batch: list[int] = []
            longest = 0
            for i in chunk:
                length = self.lengths[i]
                full = self.batch_size is not None and len(batch) >= self.batch_size
                over = (self.max_tokens is not None and batch and
                        (len(batch) + 1) * self.seqs_per_item * max(longest, length) > self.max_tokens)
                if full or over:
                    out.append(batch)
                    batch, longest = [], 0
                batch.append(i)
                longest = max(longest, length)
            if batch:
                out.append(batch)
        if self.drop_last and self.batch_size and not self.max_tokens:
            out = [b for b in out if len(b) == self.batch_size]
        if self.shuffle and self.group:
            out = [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]
        self._cache = (self.epoch, out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())



class PackedBatchSampler:
    """Yields batches as lists of rows; a row is a tuple of item indices whose lengths fit `row_length`.

    lengths: tokens each item occupies in a row (a pair: chosen + rejected, or prompt + both responses).
    Pair it with `packing.RowDataset` (indexable by tuples) and `PackedPairCollator`, which keeps the rows.
    """

    def __init__(self, lengths: Sequence[int], *, row_length: int, rows_per_batch: int = 1, window: int = 4096,
                 shuffle: bool = True, seed: int = 0):
        if max(lengths) > row_length:
            raise ValueError(f"row_length={row_length} is shorter than the longest item ({max(lengths)} tokens)")
        self.lengths, self.row_length, self.rows_per_batch = list(lengths), row_length, rows_per_batch
        self.window, self.shuffle, self.seed, self.epoch = window, shuffle, seed, 0
        self._cache: tuple[int, list[list[tuple[int, ...]]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[tuple[int, ...]]]:
        if self._cache and self._cache[0] == self.epoch:
            return self._cache[1]
        from rewardkit.data.packing import _first_fit

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=gen).tolist() if self.shuffle else list(range(n))
        out: list[list[tuple[int, ...]]] = []
        for start in range(0, n, self.window):
            chunk = order[start:start + self.window]
            rows = [tuple(chunk[k] for k in row) for row in _first_fit([self.lengths[i] for i in chunk], self.row_length)]
            out.extend(rows[k:k + self.rows_per_batch] for k in range(0, len(rows), self.rows_per_batch))
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]
        self._cache = (self.epoch, out)
        return out

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


# --------------------------------------------------------------------------- several processes

Batch = list  # item indices, or rows (tuples of item indices) for `PackedBatchSampler`


def batch_items(batch: Batch) -> int:
    """Training items (pairs, prompts, rows of data) in a batch; a packed row counts its pairs."""
    return sum(len(x) if isinstance(x, tuple) else 1 for x in batch)


@dataclass(frozen=True)
class MicroBatch:
    """One process's part of a global micro-batch (what all processes compute together before one gradient
    all-reduce).

    indices: what to collate: item indices, or rows of item indices. Never empty: a process whose share is
      empty (fewer items than processes at the end of an epoch) gets a stand-in, one item of the global
      micro-batch, so that every process runs the same forwards and collectives; its `size` is 0.
    size: items this process trains on. global_size: items of the whole global micro-batch.
    units, global_units: the same in loss terms (`RankBatches` units: labelled values, steps; items by default),
      what the loop weighs each share's loss by.
    """

    indices: Batch
    size: int
    global_size: int
    units: int
    global_units: int


class RankBatches:
    """Deals the batches of a batch sampler to `num_processes` processes; every process builds the same global
    batch list (same seed and epoch) and keeps its own share, so no item is read twice in an epoch.

    split=True (fixed-size batches; the sampler is built for the GLOBAL batch, batch_size x num_processes):
      each sampler batch is one global micro-batch, cut into num_processes shares of equal count whose token
      costs are balanced (items sorted by cost and dealt in snake order). The items of an optimiser step are the
      ones one process would see with the global batch size, so N processes x batch B train on exactly what
      1 process x batch N*B does.
    split=False (token budgets, packed rows: each sampler batch is one process's micro-batch): the batches
      are sorted by cost, cut into groups of num_processes neighbours (similar token counts, so no process
      waits long for another), and the groups are shuffled (seeded by seed and epoch). A last, incomplete
      group keeps its batches whole (each within its budget); the processes left without one get a stand-in.
    With one process the sampler's batches pass through unchanged.

    cost(i): token cost of item i (e.g. its length); a packed row costs the sum of its items.
    units(i): loss terms of item i (`Objective.loss_units`; default 1); a packed row counts its items'.
    """

    def __init__(self, sampler, *, num_processes: int = 1, process_index: int = 0, split: bool = True,
                 cost: Callable[[int], int] | None = None, units: Callable[[int], int] | None = None,
                 seed: int = 0):
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} is not in [0, {num_processes})")
        self.sampler, self.num_processes, self.process_index = sampler, num_processes, process_index
        self.split, self.seed, self.epoch = split, seed, 0
        self._cost = cost or (lambda i: 1)
        self._units = units or (lambda i: 1)
        self._cache: tuple[int, list[list[Batch]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def cost(self, x) -> int:
        return sum(self._cost(i) for i in x) if isinstance(x, tuple) else self._cost(x)

    def units(self, batch: Batch) -> int:
        return sum(self._units(i) for x in batch for i in (x if isinstance(x, tuple) else (x,)))

    def _split(self, batch: Batch, n: int) -> list[Batch]:
        """A global batch in n shares of equal count (within one) and similar cost: sorted longest first and
        dealt in snake order (0, 1, ..., n-1, n-1, ..., 0, 0, 1, ...)."""
        shares: list[Batch] = [[] for _ in range(n)]
        for i, u in enumerate(sorted(batch, key=self.cost, reverse=True)):
            r = i % n
            shares[r if (i // n) % 2 == 0 else n - 1 - r].append(u)
        return shares

    def global_batches(self) -> list[list[Batch]]:
        """Every global micro-batch of the epoch as num_processes shares (a share may be empty)."""
        if self._cache and self._cache[0] == self.epoch:
            return self._cache[1]
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        batches = [list(b) for b in self.sampler]
        n = self.num_processes
        if n == 1:
            out = [[b] for b in batches]
        elif self.split:
            out = [self._split(b, n) for b in batches]
        else:
            batches.sort(key=lambda b: sum(self.cost(x) for x in b))
            full = len(batches) - len(batches) % n
            groups = [batches[k:k + n] for k in range(0, full, n)]
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7919)
            groups = [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()]
            if full < len(batches):  # the rest: fewer batches than processes; the others get stand-ins
                groups.append(batches[full:] + [[] for _ in range(n - (len(batches) - full))])
            out = groups
        self._cache = (self.epoch, out)
        return out

    def __len__(self) -> int:
        """Global micro-batches per epoch (the same on every process)."""
        return len(self.global_batches())

    def __iter__(self) -> Iterator[MicroBatch]:
        """This process's micro-batches of the current epoch."""
        for shares in self.global_batches():
            mine = shares[self.process_index]
            total, total_units = sum(batch_items(s) for s in shares), sum(self.units(s) for s in shares)
            if mine:
                yield MicroBatch(mine, batch_items(mine), total, self.units(mine), total_units)
            else:
                stand_in = next(s for s in shares if s)[:1]
                yield MicroBatch(stand_in, 0, total, 0, total_units)
