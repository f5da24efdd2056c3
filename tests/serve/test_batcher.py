"""DynamicBatcher on a fake model: when batches close, results go back to the right request, errors, 503."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from rewardkit.data.tokenize import TokenizedSequence
from rewardkit.serve.batcher import BatchSettings, DynamicBatcher, QueueFull
from rewardkit.serve.metrics import Metrics


def seq(tag: int, length: int = 4) -> TokenizedSequence:
    return TokenizedSequence([tag] + [0] * (length - 1), 0)


class FakeModel:
    """Returns each sequence's first id as its score; records batch sizes; can be held at a gate."""

    def __init__(self, gated: bool = False):
        self.sizes: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()
        if not gated:
            self.release.set()

    def __call__(self, seqs):
        self.sizes.append(len(seqs))
        self.entered.set()
        self.release.wait(10)
        return torch.tensor([float(s.input_ids[0]) for s in seqs])


def run(settings: BatchSettings, jobs: list[list[TokenizedSequence]], model=None):
    model = model or FakeModel()
    batcher = DynamicBatcher("m", model, settings, Metrics())
    batcher.start()
    try:
        async def go():
            return await asyncio.gather(*(batcher.submit(j) for j in jobs))
        return asyncio.run(go()), model.sizes
    finally:
        batcher.stop()


def test_closes_at_max_batch_size_and_routes_results():
    jobs = [[seq(i)] for i in range(10)]
    results, sizes = run(BatchSettings(max_batch_size=4, max_wait_ms=2000), jobs)
    assert sizes == [4, 4, 2]
    assert [r.tolist() for r in results] == [[float(i)] for i in range(10)]


def test_closes_at_max_tokens():
    jobs = [[seq(i, length=8)] for i in range(6)]  # 2 rows x 8 = 16 fit in 20 tokens, 3 rows do not
    _, sizes = run(BatchSettings(max_batch_size=64, max_batch_tokens=20, max_wait_ms=2000), jobs)
    assert sizes == [2, 2, 2]


def test_closes_at_max_wait_and_keeps_requests_whole():
    # one request of 3 texts: alone, it waits max_wait_ms for company, then runs as one batch
    results, sizes = run(BatchSettings(max_batch_size=64, max_wait_ms=10), [[seq(7), seq(8), seq(9)]])
    assert sizes == [3] and results[0].tolist() == [7.0, 8.0, 9.0]
    # a request bigger than max_batch_size is not split across batches (the scorer chunks it)
    _, sizes = run(BatchSettings(max_batch_size=2, max_wait_ms=0), [[seq(i) for i in range(5)]])
    assert sizes == [5]


def test_batching_off_is_one_text_per_forward():
    _, sizes = run(BatchSettings(max_batch_size=1), [[seq(i)] for i in range(5)])
    assert sizes == [1] * 5


def test_full_queue_raises_and_errors_reach_every_request():
    model = FakeModel(gated=True)
    batcher = DynamicBatcher("m", model, BatchSettings(max_batch_size=1, max_queue=2, max_wait_ms=0), Metrics())
    batcher.start()

    async def go():
        first = asyncio.ensure_future(batcher.submit([seq(1)]))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 10)
        queued = asyncio.ensure_future(batcher.submit([seq(2), seq(3)]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="2 texts already queued"):
            await batcher.submit([seq(4)])
        model.release.set()
        return await first, await queued
    try:
        a, b = asyncio.run(go())
    finally:
        batcher.stop()
    assert a.tolist() == [1.0] and b.tolist() == [2.0, 3.0]

    def broken(seqs):
        raise RuntimeError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        run(BatchSettings(), [[seq(1)]], model=broken)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchSettings(max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchSettings(max_wait_ms=-1)


def test_a_failing_batch_is_retried_request_by_request(caplog):
    """One request that breaks the forward (here: tag 99) fails alone; the requests batched with it get scores."""
    model = FakeModel()

    def poisoned(seqs):
        if any(s.input_ids[0] == 99 for s in seqs):
            model.sizes.append(len(seqs))
            raise RuntimeError("index out of range in self")
        return model(seqs)
    batcher = DynamicBatcher("m", poisoned, BatchSettings(max_batch_size=4, max_wait_ms=2000), Metrics())
    batcher.start()

    async def go():
        return await asyncio.gather(*(batcher.submit(j) for j in ([seq(1)], [seq(99)], [seq(2), seq(3)])),
                                    return_exceptions=True)
    try:
        with caplog.at_level("ERROR", logger="rewardkit.serve.batcher"):
            first, bad, last = asyncio.run(go())
    finally:
        batcher.stop()
    assert model.sizes == [4, 1, 1, 2]  # the batch, then each request alone
    assert first.tolist() == [1.0] and last.tolist() == [2.0, 3.0]
    assert isinstance(bad, RuntimeError) and "out of range" in str(bad)
    failures = [r for r in caplog.records if r.name == "rewardkit.serve.batcher"]
    assert len(failures) == 1 and "3 requests (4 texts) failed" in failures[0].getMessage()
    assert "1 failed again" in failures[0].getMessage()
