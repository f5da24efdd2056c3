"""Client retry policy on a mock transport: what is retried, what is not, Retry-After, timeouts."""

from __future__ import annotations

import asyncio

import pytest

httpx = pytest.importorskip("httpx")

from rewardkit.serve.client import AsyncRewardClient, RewardClient, RewardClientError  # noqa: E402

OK = {"rewards": [1.5], "scores": [1.5], "extra_logs": {"reward_raw": [1.5]}}


def scripted(*answers):
    """A handler that plays `answers` in order: an int status, an exception, or a JSON body (200)."""
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer, json={"detail": f"status {answer}"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json=answer)
    return handle, seen


def test_retries_503_and_connection_errors_then_succeeds():
    handle, seen = scripted(503, httpx.ConnectError("refused"), OK)
    c = RewardClient("http://rm", transport=httpx.MockTransport(handle), retries=3, backoff=0.0, api_key="k")
    res = c.get_reward(["q"], prompts=["p"], labels=["l"])
    assert res.rewards == [1.5] and len(seen) == 3
    assert seen[0].headers["authorization"] == "Bearer k"
    assert seen[0].read() == b'{"query":["q"],"prompts":["p"],"labels":["l"]}'


def test_client_errors_are_not_retried():
    handle, seen = scripted(422, OK)
    c = RewardClient("http://rm", transport=httpx.MockTransport(handle), retries=3, backoff=0.0)
    with pytest.raises(RewardClientError, match="422: status 422") as e:
        c.score(["p"], ["r"])
    assert e.value.status == 422 and len(seen) == 1


def test_gives_up_after_retries():
    handle, seen = scripted(httpx.ReadTimeout("slow"))
    c = RewardClient("http://rm", transport=httpx.MockTransport(handle), retries=2, backoff=0.0)
    with pytest.raises(RewardClientError, match="unreachable: ReadTimeout"):
        c.get_reward(["q"])
    assert len(seen) == 3
    handle, seen = scripted(503)
    c = RewardClient("http://rm", transport=httpx.MockTransport(handle), retries=1, backoff=0.0)
    with pytest.raises(RewardClientError, match="503"):
        c.get_reward(["q"])
    assert len(seen) == 2


def test_retry_after_and_backoff_delays():
    c = RewardClient("http://rm", backoff=0.5, max_backoff=3.0)
    assert c._delay(0, None) == 0.5 and c._delay(2, None) == 2.0 and c._delay(5, None) == 3.0
    assert c._delay(0, httpx.Response(503, headers={"Retry-After": "2"})) == 2.0


def test_async_client_retries():
    handle, seen = scripted(502, OK)

    async def go():
        async with AsyncRewardClient("http://rm", transport=httpx.MockTransport(handle), backoff=0.0) as c:
            return await c.get_reward(["q"])
    assert asyncio.run(go()).scores == [1.5] and len(seen) == 2


def test_env_api_key(monkeypatch):
    monkeypatch.setenv("REWARDKIT_API_KEY", "from-env")
    assert RewardClient("http://rm").headers == {"Authorization": "Bearer from-env"}


def test_a_malformed_retry_after_falls_back_to_the_backoff_and_a_bad_answer_is_a_client_error():
    c = RewardClient("http://rm", backoff=0.5, max_backoff=3.0)
    for bad in ("-1", "nan", "inf", "Wed, 21 Oct 2026 07:28:00 GMT"):  # -1 made sleep raise, nan hung asyncio
        assert c._delay(1, httpx.Response(503, headers={"Retry-After": bad})) == 1.0, bad
    handle, _ = scripted({"rewards": [1.0]})  # an old server's answer: no scores, no extra_logs
    with pytest.raises(RewardClientError, match="unexpected answer"):
        RewardClient("http://rm", transport=httpx.MockTransport(handle)).get_reward(["q"])
