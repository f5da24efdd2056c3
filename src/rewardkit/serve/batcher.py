"""Dynamic batching across concurrent requests: one worker thread per model, fed by a bounded queue.

PPO trainers send one text per request and many requests at once (OpenRLHF scores every rollout
concurrently), so batching inside a request does nothing; the worker merges whole requests into one
forward instead. A batch closes when it reaches `max_batch_size` texts, when the next request would push
it past `max_batch_tokens` padded tokens, or `max_wait_ms` after its oldest request arrived. The model runs
on the worker thread, never on the event loop.

Faults. A request whose client went away (its task cancelled) leaves the queue at once: its texts never
reach the model. When a forward of several requests fails, each request runs again alone, so only one that
fails on its own gets the error. `begin_drain(seconds)` (SIGTERM) refuses new work, lets queued work run for
`seconds`, then fails what is still queued with `ShuttingDown` (the app answers 503); a forward already
running finishes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from rewardkit.data.tokenize import TokenizedSequence
from rewardkit.serve.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int = 64  # texts per forward; 1 turns batching off
    max_batch_tokens: int = 32768  # padded tokens per forward (rows x longest row)
    max_wait_ms: float = 5.0  # how long the oldest request may wait for company
    max_queue: int = 2048  # texts waiting; beyond this requests get 503 + Retry-After

    def __post_init__(self):
        for name in ("max_batch_size", "max_batch_tokens", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


class ShuttingDown(Exception):
    """The server is stopping: it takes no new work, and work still queued when the drain time ends is dropped."""

    retry_after = 1


class QueueFull(Exception):
    """The model's queue cannot take this request now; retry after `retry_after` seconds."""

    def __init__(self, waiting: int, limit: int, retry_after: int = 1):
        self.retry_after = retry_after
        super().__init__(f"server busy: {waiting} texts already queued (limit {limit}); retry later")


@dataclass(eq=False)  # identity: deque.remove must find this job, not an equal-looking one
class _Job:
    """One request's sequences and where to deliver their scores."""

    seqs: Sequence[TokenizedSequence]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def longest(self) -> int:
        return max(len(s.input_ids) for s in self.seqs)


RunBatch = Callable[[list[TokenizedSequence]], torch.Tensor]  # N sequences -> raw rewards (N,)


class DynamicBatcher:
    """`await submit(seqs)` -> raw rewards (len(seqs),); call `start()` before and `stop()` after."""

    def __init__(self, name: str, run_batch: RunBatch, settings: BatchSettings, metrics: Metrics | None = None):
        self.name = name
        self.run_batch = run_batch
        self.settings = settings
        self.metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._waiting = 0  # texts in _jobs
        self._cond = threading.Condition()
        self._stopping = False
        self._draining = False
        self._drain_timer: threading.Timer | None = None
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.queue_depth_gauge(name, lambda: self._waiting)

    @property
    def queue_depth(self) -> int:
        return self._waiting

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name=f"rewardkit-batcher-{self.name}", daemon=True)
            self._thread.start()

    def begin_drain(self, seconds: float) -> None:
        """Refuse new work from now on; work still queued after `seconds` fails with ShuttingDown.

        A timer, not the worker, expires the queue: the worker may be inside a long forward at that moment."""
        with self._cond:
            if self._draining:
                return
            self._draining = True
        self._drain_timer = threading.Timer(seconds, self._expire_queue, args=(seconds,))
        self._drain_timer.daemon = True
        self._drain_timer.start()

    def _expire_queue(self, seconds: float) -> None:
        with self._cond:
            jobs, n = list(self._jobs), self._waiting
            self._jobs.clear()
            self._waiting = 0
        if not jobs:
            return
        log.warning("model %s: drain time (%g s) over, %d queued texts answered 503", self.name, seconds, n)
        self._count_dropped(n, "shutdown")
        exc = ShuttingDown(f"server shutting down: this request could not be scored within the {seconds:g} s "
                           "drain; retry (on another server)")
        for job in jobs:
            _deliver(job, _fail, exc)

    def _count_dropped(self, n: int, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.count("texts_dropped_total", "Queued texts dropped before their forward, by reason "
                               "(cancelled: the client went away; shutdown: the drain time ran out).",
                               n, model=self.name, reason=reason)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish queued work, then end the worker thread."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    async def submit(self, seqs: Sequence[TokenizedSequence]) -> torch.Tensor:
        if not seqs:
            return torch.empty(0)
        loop = asyncio.get_running_loop()
        job = _Job(seqs, loop.create_future(), loop)
        with self._cond:
            if self._draining:
                raise ShuttingDown("server shutting down: not taking new requests; retry (on another server)")
            if self._stopping or self._thread is None:
                raise RuntimeError(f"model worker {self.name!r} is not running")
            if self._waiting + len(seqs) > self.settings.max_queue:
                raise QueueFull(self._waiting, self.settings.max_queue)
            self._jobs.append(job)
            self._waiting += len(seqs)
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away: its texts must not cost a forward
            self._withdraw(job)
            raise

    def _withdraw(self, job: _Job) -> None:
        with self._cond:
            try:
                self._jobs.remove(job)
            except ValueError:
                return  # the worker already took it (its forward runs; the result is discarded)
            self._waiting -= len(job.seqs)
        self._count_dropped(len(job.seqs), "cancelled")

    # ------------------------------------------------------------------ worker thread

    def _next_batch(self) -> list[_Job] | None:
        s = self.settings
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._jobs.popleft()
            batch, n, longest = [first], len(first.seqs), first.longest
            deadline = first.enqueued + s.max_wait_ms / 1000
            while n < s.max_batch_size:
                if not self._jobs:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._stopping:
                        break
                    self._cond.wait(remaining)
                    continue
                nxt = self._jobs[0]
                size, width = n + len(nxt.seqs), max(longest, nxt.longest)
                if size > s.max_batch_size or size * width > s.max_batch_tokens:
                    break
                batch.append(self._jobs.popleft())
                n, longest = size, width
            self._waiting -= n
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                scores = self._run(batch)
            except Exception as e:  # the worker keeps going
                if len(batch) == 1:
                    log.exception("model %s: batch of %d texts failed", self.name, len(batch[0].seqs))
                    _deliver(batch[0], _fail, e)
                else:
                    self._retry_alone(batch, e)
                continue
            start = 0
            for job in batch:
                part = scores[start:start + len(job.seqs)]
                start += len(job.seqs)
                _deliver(job, _resolve, part)

    def _run(self, batch: list[_Job]) -> torch.Tensor:
        seqs = [seq for job in batch for seq in job.seqs]
        started = time.monotonic()
        scores = self.run_batch(seqs)
        if self.metrics is not None:
            width = max(len(x.input_ids) for x in seqs)
            self.metrics.batch(self.name, len(seqs), len(seqs) * width, time.monotonic() - started,
                               [started - job.enqueued for job in batch])
        return scores

    def _retry_alone(self, batch: list[_Job], error: Exception) -> None:
        """A failed batch of several requests: run each request alone, so one bad request (a text the model
        cannot take, a batch too big for memory) fails only itself. One log line for the whole batch."""
        failed = 0
        for job in batch:
            if job.future.done():  # the client went away (a read across threads: at worst one wasted forward)
                continue
            try:
                _deliver(job, _resolve, self._run([job]))
            except Exception as e:  # noqa: BLE001 - this request's own error goes back to it
                failed += 1
                _deliver(job, _fail, e)
        log.error("model %s: batch of %d requests (%d texts) failed (%s: %s); ran each alone: %d failed again",
                  self.name, len(batch), sum(len(j.seqs) for j in batch), type(error).__name__, error, failed,
                  exc_info=error)


def _deliver(job: _Job, fn, value) -> None:
    try:
        job.loop.call_soon_threadsafe(fn, job.future, value)
    except RuntimeError:  # the event loop has closed (server shutting down): nobody is waiting
        pass


def _resolve(fut: asyncio.Future, value: torch.Tensor) -> None:
    if not fut.done():  # the client may have gone away (cancelled)
        fut.set_result(value)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
