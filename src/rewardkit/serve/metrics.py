"""A few Prometheus metrics written by hand (text exposition format 0.0.4), no dependency.

Each server owns one `Metrics` object; nothing is global, so two apps in one process never mix counts.
Every method is thread-safe: the batching worker records from its own thread.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144)

LabelKey = tuple[tuple[str, str], ...]


def _labels(key: LabelKey, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in key] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return repr(float(v)) if v != int(v) else str(int(v))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts: dict[LabelKey, list[int]] = {}
        self.sums: dict[LabelKey, float] = {}

    def observe(self, key: LabelKey, value: float) -> None:
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def lines(self, name: str) -> list[str]:
        out = []
        for key, counts in sorted(self.counts.items()):
            total = 0
            for bound, c in zip(self.buckets, counts):
                total += c
                le = 'le="%s"' % _num(bound)
                out.append(f"{name}_bucket{_labels(key, le)} {total}")
            total += counts[-1]
            inf = 'le="+Inf"'
            out.append(f"{name}_bucket{_labels(key, inf)} {total}")
            out.append(f"{name}_sum{_labels(key)} {self.sums[key]!r}")
            out.append(f"{name}_count{_labels(key)} {total}")
        return out


class Metrics:
    """Requests, rejections, batch sizes, latency and queue depth of one server."""

    def __init__(self, prefix: str = "rewardkit"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._requests: dict[LabelKey, int] = {}
        self._texts: dict[LabelKey, int] = {}
        self._latency = _Histogram(LATENCY_BUCKETS)
        self._batch_size = _Histogram(SIZE_BUCKETS)
        self._batch_tokens = _Histogram(TOKEN_BUCKETS)
        self._forward = _Histogram(LATENCY_BUCKETS)
        self._queue_wait = _Histogram(LATENCY_BUCKETS)
        self._gauges: dict[LabelKey, Callable[[], float]] = {}
        self._counters: dict[str, tuple[str, dict[LabelKey, int]]] = {}  # name -> (help, counts)

    def request(self, route: str, status: int, seconds: float) -> None:
        key = (("route", route), ("status", str(status)))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            self._latency.observe((("route", route),), seconds)

    def batch(self, model: str, size: int, padded_tokens: int, forward_s: float, waits_s: list[float]) -> None:
        key = (("model", model),)
        with self._lock:
            self._texts[key] = self._texts.get(key, 0) + size
            self._batch_size.observe(key, size)
            self._batch_tokens.observe(key, padded_tokens)
            self._forward.observe(key, forward_s)
            for w in waits_s:
                self._queue_wait.observe(key, w)

    def count(self, name: str, help_: str, n: int = 1, **labels: str) -> None:
        """Add n to counter `<prefix>_<name>{labels}` (texts cut, requests cancelled, ...)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts = self._counters.setdefault(name, (help_, {}))[1]
            counts[key] = counts.get(key, 0) + n

    def queue_depth_gauge(self, model: str, read: Callable[[], float]) -> None:
        """Register a callable read at scrape time (texts waiting for `model`'s worker)."""
        with self._lock:
            self._gauges[(("model", model),)] = read

    def render(self) -> str:
        p = self.prefix
        with self._lock:
            out = [f"# HELP {p}_requests_total HTTP requests by route and status code.",
                   f"# TYPE {p}_requests_total counter"]
            out += [f"{p}_requests_total{_labels(k)} {v}" for k, v in sorted(self._requests.items())]
            out += [f"# HELP {p}_texts_scored_total Texts scored by each model.", f"# TYPE {p}_texts_scored_total counter"]
            out += [f"{p}_texts_scored_total{_labels(k)} {v}" for k, v in sorted(self._texts.items())]
            for name, hist, help_ in (
                ("request_latency_seconds", self._latency, "Time from request received to response sent."),
                ("batch_size", self._batch_size, "Texts per model forward (across requests)."),
                ("batch_padded_tokens", self._batch_tokens, "Padded tokens per batch (rows x longest)."),
                ("forward_seconds", self._forward, "Model time per batch."),
                ("queue_wait_seconds", self._queue_wait, "Time a request waited before its batch ran."),
            ):
                out += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} histogram"] + hist.lines(f"{p}_{name}")
            for name, (help_, counts) in sorted(self._counters.items()):
                out += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} counter"]
                out += [f"{p}_{name}{_labels(k)} {v}" for k, v in sorted(counts.items())]
            out += [f"# HELP {p}_queue_depth Texts waiting for the model worker.", f"# TYPE {p}_queue_depth gauge"]
            out += [f"{p}_queue_depth{_labels(k)} {_num(read())}" for k, read in sorted(self._gauges.items())]
        return "\n".join(out) + "\n"
