"""Client for `rewardkit serve` (needs httpx, in the `serve` extra): `RewardClient` (sync), `AsyncRewardClient`.

Both retry connection errors, timeouts and 429/500/502/503/504 answers (honouring Retry-After) with
exponential backoff; other 4xx answers raise `RewardClientError` at once, since repeating them cannot help.
Given several servers (a list, `base_urls=`, or "http://a:5000,http://b:5000" as OpenRLHF's
`--reward.remote_url` takes them), calls go to them in turn and a failed call moves on to the next server.
A server that could not be reached or timed out is tried last for `cooldown` seconds (default 30), so a hung
server costs one timeout, not one per call whose turn starts with it.

    with RewardClient("http://127.0.0.1:5000", api_key="...") as c:
        c.get_reward(["<full prompt+response text>"]).rewards
        c.score(["What is 2+2?"], ["4"]).scores
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from rewardkit.data.fields import list_arg

Text = Any  # a string or a list of {"role", "content"} messages
DEFAULT_URL = "http://127.0.0.1:5000"
# 500 too: with several servers another one may well answer, and a model worker's failed batch (e.g. out of
# memory under a burst) can pass.
RETRY_STATUS = (429, 500, 502, 503, 504)


class RewardClientError(RuntimeError):
    """The server answered with an error that retrying will not fix (or retries ran out); `tried` lists the
    servers a call went to when every one failed."""

    def __init__(self, status: int | None, detail: str, tried: Sequence[str] = ()):
        self.status, self.detail, self.tried = status, detail, list(tried)
        super().__init__(f"reward server error {status}: {detail}" if status else f"reward server unreachable: {detail}")


@dataclass(frozen=True)
class RewardResult:
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


@dataclass(frozen=True)
class ScoreResult:
    scores: list[float]
    raw_scores: list[float]
    components: dict[str, list[float]]


@dataclass(frozen=True)
class CompareResult:
    prob_a_better: list[float]
    raw_scores_a: list[float]
    raw_scores_b: list[float]
    temperature: float = 1.0


@dataclass(frozen=True)
class RankResult:
    scores: list[float]
    raw_scores: list[float]
    order: list[int]
    best: int


@dataclass(frozen=True)
class _Call:
    """One API call: what to send and how to read the answer."""

    method: str
    path: str
    body: dict[str, Any] | None
    result: type | None


def _list(value: Any, name: str) -> list:
    return list_arg(value, name, "a list with one item per text")


def _get_reward(queries, prompts, labels) -> _Call:
    body: dict[str, Any] = {"query": _list(queries, "queries")}
    if prompts is not None:
        body["prompts"] = _list(prompts, "prompts")
    if labels is not None:
        body["labels"] = _list(labels, "labels")
    return _Call("POST", "/get_reward", body, RewardResult)


def _score(prompts, responses, normalize) -> _Call:
    prompts, responses = _list(prompts, "prompts"), _list(responses, "responses")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
    return _Call("POST", "/v1/score", {"items": items, "normalize": normalize}, ScoreResult)


def _compare(prompts, a, b) -> _Call:
    prompts, a, b = _list(prompts, "prompts"), _list(a, "a"), _list(b, "b")
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"prompts, a and b must have the same length, got {len(prompts)}, {len(a)}, {len(b)}")
    items = [{"prompt": p, "a": x, "b": y} for p, x, y in zip(prompts, a, b)]
    return _Call("POST", "/v1/compare", {"items": items}, CompareResult)


def _rank(prompt, candidates, normalize) -> _Call:
    return _Call("POST", "/v1/rank", {"prompt": prompt, "candidates": _list(candidates, "candidates"),
                                     "normalize": normalize},
                 RankResult)


class _Base:
    def __init__(self, base_url: str | Sequence[str] | None = None, *, base_urls: Sequence[str] | None = None,
                 api_key: str | None = None, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 10.0, cooldown: float = 30.0):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0, got {cooldown}")
        self.base_urls = _server_urls(base_url, base_urls)
        self.base_url = self.base_urls[0]
        self._turn = itertools.count()  # next() on a count is atomic under the GIL: safe across threads
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        key = api_key if api_key is not None else os.environ.get("REWARDKIT_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = httpx.Timeout(timeout)
        self.cooldown = cooldown
        self._down: dict[int, float] = {}  # server index -> monotonic time its cooldown ends (shared by calls)
        self._clock = time.monotonic  # tests replace it

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None:
            try:
                wait = float(retry_after)
            except ValueError:  # an HTTP date, or garbage: the backoff
                wait = math.nan
            if math.isfinite(wait) and wait >= 0:  # -1 made time.sleep raise, NaN made asyncio.sleep hang
                return min(wait, self.max_backoff)
        return min(self.backoff * 2 ** attempt, self.max_backoff)

    def _outcome(self, call: _Call, response: httpx.Response) -> Any:
        """The parsed result, or raise RewardClientError for an answer that retrying cannot fix."""
        if response.status_code >= 400:
            raise RewardClientError(response.status_code, _detail(response))
        try:
            data = response.json()
            if call.result is None:
                return data
            return call.result(**{k: data[k] for k in call.result.__dataclass_fields__ if k in data})
        except (ValueError, TypeError) as e:  # not JSON, or an answer without the fields this call reads
            raise RewardClientError(response.status_code, f"unexpected answer from {response.url}: {e}") from None


def _server_urls(base_url: str | Sequence[str] | None, base_urls: Sequence[str] | None) -> list[str]:
    if base_url is not None and base_urls is not None:
        raise ValueError("give base_url or base_urls, not both")
    given = base_urls if base_urls is not None else base_url if base_url is not None else DEFAULT_URL
    items = given.split(",") if isinstance(given, str) else list(given)  # "http://a,http://b" as OpenRLHF
    if not all(isinstance(u, str) for u in items):
        raise TypeError(f"server URLs must be strings, got {items!r}")
    # OpenRLHF's --remote_rm_url names the endpoint itself (http://host:5000/get_reward): take its server
    urls = [_server_root(u.strip()) for u in items if u.strip()]
    if not urls:
        raise ValueError("no server URL given")
    return urls


def _server_root(url: str) -> str:
    url = url.rstrip("/")
    return url[:-len("/get_reward")] if url.endswith("/get_reward") else url


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        return response.text


class _Tries:
    """One call's walk over the servers. Each call starts at the next server in turn (round-robin) and, when a
    server fails (connection error, timeout, a RETRY_STATUS answer), goes on at once to the next one: a dead
    or busy server costs one failed try, not a backoff. Only after every server failed in a round does the
    client wait (backoff, or the Retry-After a busy server sent) and go round again, `retries` more times.
    Servers in their cooldown (unreachable or timed out lately) come last, the soonest to end first."""

    def __init__(self, client: _Base):
        n = len(client.base_urls)
        start = next(client._turn) % n
        now = client._clock()
        self.client, self.order = client, [(start + k) % n for k in range(n)]
        self.round_order(now)
        self.why: dict[int, str] = {}  # server index -> its last failure
        self.last: tuple[int, int | None, str] | None = None  # (server, status, detail) of the latest failure
        self.answer: tuple[int, int | None, str] | None = None  # ... of the latest one that was an answer (503)
        self.exc: Exception | None = None
        self.hint: httpx.Response | None = None  # a failed answer of this round that carries Retry-After

    def round_order(self, now: float | None = None) -> list[int]:
        """This round's order: servers in their cooldown last (one that timed out in the previous round of this
        very call too), the soonest to end first; sorted() is stable, so the rest keep their round-robin order."""
        now = self.client._clock() if now is None else now
        self.order = sorted(self.order, key=lambda i: max(self.client._down.get(i, now), now))
        return self.order

    def failed(self, i: int, failure: httpx.Response | Exception) -> None:
        if isinstance(failure, httpx.Response):
            status, detail = failure.status_code, _detail(failure)
            self.why[i], self.exc = f"{status} {detail}", None
            if "retry-after" in failure.headers:
                self.hint = failure
        else:
            status, detail = None, f"{type(failure).__name__}: {failure}"
            self.why[i], self.exc = detail, failure
            if self.client.cooldown:
                self.client._down[i] = self.client._clock() + self.client.cooldown
        self.last = (i, status, detail)
        if status is not None:
            self.answer = self.last

    def answered(self, i: int) -> None:
        """Server i answered (even busy): it is reachable, so its cooldown ends."""
        self.client._down.pop(i, None)

    def pause(self, finished_round: int) -> float:
        hint, self.hint = self.hint, None
        return self.client._delay(finished_round, hint)

    def error(self) -> RewardClientError:
        # a server that answered (busy: 503) says more than one that could not be reached
        urls, (i, status, detail) = self.client.base_urls, self.answer or self.last
        rounds = self.client.retries + 1
        times = f"{rounds} time{'s' if rounds > 1 else ''}"
        if len(urls) == 1:
            detail = f"{detail} (tried {urls[0]} {times})"
        else:
            each = "; ".join(f"{urls[j]}: {self.why[j]}" for j in self.order)
            detail = f"{detail} from {urls[i]}; every server failed, {times} each: {each}"
        return RewardClientError(status, detail, tried=[urls[j] for j in self.order])


class RewardClient(_Base):
    """Blocking client. `transport` is for tests (e.g. httpx.MockTransport)."""

    def __init__(self, base_url: str | Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None,
                 **kw: Any):
        super().__init__(base_url, **kw)
        self._https = [httpx.Client(base_url=u, headers=self.headers, timeout=self.timeout, transport=transport)
                       for u in self.base_urls]
        self._http = self._https[0]

    def _run(self, call: _Call) -> Any:
        tries = _Tries(self)
        for rnd in range(self.retries + 1):
            if rnd:
                time.sleep(tries.pause(rnd - 1))
            for i in tries.round_order():
                try:
                    response = self._https[i].request(call.method, call.path, json=call.body)
                except httpx.TransportError as e:  # connection refused/reset, timeouts
                    tries.failed(i, e)
                    continue
                tries.answered(i)
                if response.status_code not in RETRY_STATUS:
                    return self._outcome(call, response)
                tries.failed(i, response)
        raise tries.error() from tries.exc

    def get_reward(self, queries: Sequence[str], prompts: Sequence[Any] | None = None,
                   labels: Sequence[Any] | None = None) -> RewardResult:
        """OpenRLHF's protocol: full prompt+response texts -> rewards. With `prompts`, one per query, the server
        scores a query that starts with its prompt as that (prompt, response) pair, as training read it."""
        return self._run(_get_reward(queries, prompts, labels))

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool | None = None) -> ScoreResult:
        return self._run(_score(prompts, responses, normalize))

    def compare(self, prompts: Sequence[Text], a: Sequence[Text], b: Sequence[Text]) -> CompareResult:
        return self._run(_compare(prompts, a, b))

    def rank(self, prompt: Text, candidates: Sequence[Text], *, normalize: bool | None = None) -> RankResult:
        return self._run(_rank(prompt, candidates, normalize))

    def health(self) -> dict[str, Any]:
        return self._run(_Call("GET", "/health", None, None))

    def close(self) -> None:
        for http in self._https:
            http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncRewardClient(_Base):
    """asyncio client; same methods as `RewardClient`, awaitable."""

    def __init__(self, base_url: str | Sequence[str] | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None, **kw: Any):
        super().__init__(base_url, **kw)
        self._https = [httpx.AsyncClient(base_url=u, headers=self.headers, timeout=self.timeout,
                                         transport=transport) for u in self.base_urls]
        self._http = self._https[0]

    async def _run(self, call: _Call) -> Any:
        tries = _Tries(self)
        for rnd in range(self.retries + 1):
            if rnd:
                await asyncio.sleep(tries.pause(rnd - 1))
            for i in tries.round_order():
                try:
                    response = await self._https[i].request(call.method, call.path, json=call.body)
                except httpx.TransportError as e:
                    tries.failed(i, e)
                    continue
                tries.answered(i)
                if response.status_code not in RETRY_STATUS:
                    return self._outcome(call, response)
                tries.failed(i, response)
        raise tries.error() from tries.exc

    async def get_reward(self, queries: Sequence[str], prompts: Sequence[Any] | None = None,
                         labels: Sequence[Any] | None = None) -> RewardResult:
        return await self._run(_get_reward(queries, prompts, labels))

    async def score(self, prompts: Sequence[Text], responses: Sequence[Text], *,
                    normalize: bool | None = None) -> ScoreResult:
        return await self._run(_score(prompts, responses, normalize))

    async def compare(self, prompts: Sequence[Text], a: Sequence[Text], b: Sequence[Text]) -> CompareResult:
        return await self._run(_compare(prompts, a, b))

    async def rank(self, prompt: Text, candidates: Sequence[Text], *, normalize: bool | None = None) -> RankResult:
        return await self._run(_rank(prompt, candidates, normalize))

    async def health(self) -> dict[str, Any]:
        return await self._run(_Call("GET", "/health", None, None))

    async def aclose(self) -> None:
        for http in self._https:
            await http.aclose()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
