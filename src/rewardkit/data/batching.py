"""Length-grouped and token-budget batching.

Items are shuffled, cut into large windows, sorted by length inside each window, cut into batches, and the
batches are shuffled again: batches hold similar lengths (little padding) while the order stays random.
A batch closes at `batch_size` items, or, with `max_tokens`, when items x seqs_per_item x longest length
(what a padded forward computes) would exceed the budget.

For packing, `PackedBatchSampler` fills rows of a fixed length first-fit-decreasing over a whole window
(many small items close the gaps left by long ones), then groups rows into batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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
