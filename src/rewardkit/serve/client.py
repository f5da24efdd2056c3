"""Client for `rewardkit serve` (needs httpx, in the `serve` extra): `RewardClient` (sync), `AsyncRewardClient`.

Both retry connection errors, timeouts and 429/502/503/504 answers (honouring Retry-After) with
exponential backoff; other 4xx answers raise `RewardClientError` at once, since repeating them cannot help.

    with RewardClient("http://127.0.0.1:5000", api_key="...") as c:
        c.get_reward(["<full prompt+response text>"]).rewards
        c.score(["What is 2+2?"], ["4"]).scores
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

Text = Any  # a string or a list of {"role", "content"} messages
RETRY_STATUS = (429, 502, 503, 504)


class RewardClientError(RuntimeError):
    """The server answered with an error that retrying will not fix (or retries ran out)."""

    def __init__(self, status: int | None, detail: str):
        self.status, self.detail = status, detail
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


def _get_reward(queries, prompts, labels) -> _Call:
    body: dict[str, Any] = {"query": list(queries)}
    if prompts is not None:
        body["prompts"] = list(prompts)
    if labels is not None:
        body["labels"] = list(labels)
    return _Call("POST", "/get_reward", body, RewardResult)


def _score(prompts, responses, normalize) -> _Call:
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
    return _Call("POST", "/v1/score", {"items": items, "normalize": normalize}, ScoreResult)


def _compare(prompts, a, b) -> _Call:
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"prompts, a and b must have the same length, got {len(prompts)}, {len(a)}, {len(b)}")
    items = [{"prompt": p, "a": x, "b": y} for p, x, y in zip(prompts, a, b)]
    return _Call("POST", "/v1/compare", {"items": items}, CompareResult)


def _rank(prompt, candidates, normalize) -> _Call:
    return _Call("POST", "/v1/rank", {"prompt": prompt, "candidates": list(candidates), "normalize": normalize},
                 RankResult)


class _Base:
    def __init__(self, base_url: str = "http://127.0.0.1:5000", *, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 10.0):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        key = api_key if api_key is not None else os.environ.get("REWARDKIT_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = httpx.Timeout(timeout)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                pass
        return min(self.backoff * 2 ** attempt, self.max_backoff)

    def _outcome(self, call: _Call, response: httpx.Response) -> Any:
        """The parsed result, or raise RewardClientError for an answer that retrying cannot fix."""
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise RewardClientError(response.status_code, str(detail))
        data = response.json()
        return call.result(**{k: data[k] for k in call.result.__dataclass_fields__ if k in data}) if call.result else data


class RewardClient(_Base):
    """Blocking client. `transport` is for tests (e.g. httpx.MockTransport)."""

    def __init__(self, base_url: str = "http://127.0.0.1:5000", *, transport: httpx.BaseTransport | None = None,
                 **kw: Any):
        super().__init__(base_url, **kw)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                  transport=transport)

    def _run(self, call: _Call) -> Any:
        for attempt in range(self.retries + 1):
            response = None
            try:
                response = self._http.request(call.method, call.path, json=call.body)
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                if attempt == self.retries:
                    raise RewardClientError(None, f"{type(e).__name__}: {e}") from e
            else:
                if response.status_code not in RETRY_STATUS or attempt == self.retries:
                    return self._outcome(call, response)
            time.sleep(self._delay(attempt, response))

    def get_reward(self, queries: Sequence[str], prompts: Sequence[Any] | None = None,
                   labels: Sequence[Any] | None = None) -> RewardResult:
        """OpenRLHF's protocol: full prompt+response texts -> rewards."""
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
        self._http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncRewardClient(_Base):
    """asyncio client; same methods as `RewardClient`, awaitable."""

    def __init__(self, base_url: str = "http://127.0.0.1:5000", *,
                 transport: httpx.AsyncBaseTransport | None = None, **kw: Any):
        super().__init__(base_url, **kw)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                       transport=transport)

    async def _run(self, call: _Call) -> Any:
        for attempt in range(self.retries + 1):
            response = None
            try:
                response = await self._http.request(call.method, call.path, json=call.body)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise RewardClientError(None, f"{type(e).__name__}: {e}") from e
            else:
                if response.status_code not in RETRY_STATUS or attempt == self.retries:
                    return self._outcome(call, response)
            await asyncio.sleep(self._delay(attempt, response))

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
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
