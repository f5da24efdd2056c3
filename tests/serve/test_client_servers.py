"""The client over several servers (mock transports): round-robin, failing over to another server at once,
backoff only after every server failed, and an error naming every server tried."""

from __future__ import annotations

import asyncio

import pytest

httpx = pytest.importorskip("httpx")

from rewardkit.serve import client as client_module  # noqa: E402
from rewardkit.serve.client import AsyncRewardClient, RewardClient, RewardClientError  # noqa: E402

A, B = "http://rm-a:5000", "http://rm-b:5000"


def servers(down=(), busy=(), status=None):
    """A handler for hosts rm-a and rm-b: `down` refuse connections, `busy` answer 503 (or `status`), the
    others answer /get_reward with their own name in extra_logs; `seen` records the host of every try."""
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        seen.append(host)
        if host in down:
            raise httpx.ConnectError(f"connection refused by {host}")
        if host in busy:
            code = status or 503
            return httpx.Response(code, json={"detail": f"{host} says {code}"}, headers={"Retry-After": "7"})
        return httpx.Response(200, json={"rewards": [1.0], "scores": [1.0], "extra_logs": {host: [1.0]}})
    return handle, seen


@pytest.fixture
def sleeps(monkeypatch):
    """Record backoff sleeps instead of sleeping."""
    slept = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    return slept


def served_by(result) -> str:
    return next(iter(result.extra_logs))


def test_requests_alternate_between_servers(sleeps):
    handle, seen = servers()
    c = RewardClient([A, B], transport=httpx.MockTransport(handle))
    assert [served_by(c.get_reward(["q"])) for _ in range(4)] == ["rm-a", "rm-b", "rm-a", "rm-b"]
    assert seen == ["rm-a", "rm-b", "rm-a", "rm-b"] and sleeps == []
    # the same three ways to name the servers
    for kw in ({"base_url": f"{A},{B}/"}, {"base_urls": (A, B)}):
        assert RewardClient(**kw).base_urls == [A, B]
    assert RewardClient(A).base_urls == [A] and RewardClient().base_url == "http://127.0.0.1:5000"
    with pytest.raises(ValueError, match="not both"):
        RewardClient(A, base_urls=[B])


def test_a_dead_servers_requests_go_to_the_other_at_once(sleeps):
    handle, seen = servers(down={"rm-a"})
    c = RewardClient([A, B], transport=httpx.MockTransport(handle), backoff=5.0, cooldown=0)
    assert [served_by(c.get_reward(["q"])) for _ in range(4)] == ["rm-b"] * 4
    assert seen == ["rm-a", "rm-b", "rm-b", "rm-a", "rm-b", "rm-b"]  # without a cooldown a's turns fall through
    assert sleeps == []  # no backoff while another server answers


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ReadTimeout])
def test_an_unreachable_or_hung_server_is_tried_last_until_its_cooldown_ends(sleeps, failure):
    """One failed try puts the server at the back of every call's order for `cooldown` seconds (a hung server
    costs one timeout, not one per call whose turn starts with it); then it gets its turns again."""
    state = {"a_fails": True}
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "rm-a" and state["a_fails"]:
            raise failure("no answer from rm-a")
        return httpx.Response(200, json={"rewards": [1.0], "scores": [1.0], "extra_logs": {request.url.host: [1.0]}})

    clock = Clock()
    c = RewardClient([A, B], transport=httpx.MockTransport(handle), cooldown=30.0)
    c._clock = clock
    assert [served_by(c.get_reward(["q"])) for _ in range(4)] == ["rm-b"] * 4
    assert seen == ["rm-a", "rm-b", "rm-b", "rm-b", "rm-b"]  # a tried once, then skipped
    clock.now += 29.0
    seen.clear()
    c.get_reward(["q"]), c.get_reward(["q"])
    assert seen == ["rm-b", "rm-b"]  # still cooling down
    clock.now += 2.0  # the cooldown is over; a is back (and answers now)
    state["a_fails"] = False
    seen.clear()
    assert sorted(served_by(c.get_reward(["q"])) for _ in range(2)) == ["rm-a", "rm-b"]
    assert sorted(seen) == ["rm-a", "rm-b"] and sleeps == []


def test_servers_all_cooling_down_are_still_tried_soonest_first(sleeps):
    down = {"rm-a", "rm-b"}
    handle, seen = servers(down=down)
    clock = Clock()
    c = RewardClient([A, B], transport=httpx.MockTransport(handle), retries=0)
    c._clock = clock
    with pytest.raises(RewardClientError):
        c.get_reward(["q"])  # a's turn: both fail and cool down until t = 130
    assert seen == ["rm-a", "rm-b"] and c._down == {0: 130.0, 1: 130.0}
    down.discard("rm-b")
    c._down[0] = 135.0  # a's cooldown ends after b's
    next(c._turn)  # skip a turn: the next call's round-robin order starts at a
    seen.clear()
    assert served_by(c.get_reward(["q"])) == "rm-b"
    assert seen == ["rm-b"]  # b first, though the turn was a's
    assert c._down == {0: 135.0}  # b answered: its cooldown is over
    with pytest.raises(ValueError, match="cooldown"):
        RewardClient(A, cooldown=-1)


def test_a_busy_server_passes_its_request_on(sleeps):
    for code in (503, 500, 429):
        handle, seen = servers(busy={"rm-a"}, status=code)
        c = RewardClient([A, B], transport=httpx.MockTransport(handle))
        assert served_by(c.get_reward(["q"])) == "rm-b" and seen == ["rm-a", "rm-b"] and sleeps == []


def test_client_errors_are_not_sent_to_another_server(sleeps):
    handle, seen = servers(busy={"rm-a"}, status=422)
    c = RewardClient([A, B], transport=httpx.MockTransport(handle))
    with pytest.raises(RewardClientError, match="422: rm-a says 422"):
        c.get_reward(["q"])
    assert seen == ["rm-a"]


def test_all_servers_dead_names_every_url_tried(sleeps):
    handle, seen = servers(down={"rm-a", "rm-b"})
    c = RewardClient(f"{B},{A}", transport=httpx.MockTransport(handle), retries=2, backoff=0.5)
    with pytest.raises(RewardClientError) as e:
        c.get_reward(["q"])
    assert e.value.status is None and e.value.tried == [B, A]
    message = str(e.value)
    assert message.startswith("reward server unreachable: ConnectError")
    assert f"every server failed, 3 times each: {B}: ConnectError: connection refused by rm-b; " \
           f"{A}: ConnectError: connection refused by rm-a" in message
    assert seen == ["rm-b", "rm-a"] * 3
    assert sleeps == [0.5, 1.0]  # the existing backoff, once per round over all servers
    assert isinstance(e.value.__cause__, httpx.ConnectError)


def test_busy_everywhere_waits_for_retry_after_then_reports_the_status(sleeps):
    handle, seen = servers(down={"rm-a"}, busy={"rm-b"})
    c = RewardClient([A, B], transport=httpx.MockTransport(handle), retries=1, max_backoff=10.0)
    with pytest.raises(RewardClientError) as e:
        c.get_reward(["q"])
    assert sleeps == [7.0]  # rm-b's Retry-After
    assert e.value.status == 503 and "rm-b says 503" in str(e.value) and f"{A}: ConnectError" in str(e.value)


def test_single_server_keeps_its_messages(sleeps):
    handle, _ = servers(down={"rm-a"})
    c = RewardClient(A, transport=httpx.MockTransport(handle), retries=1)
    with pytest.raises(RewardClientError, match=f"unreachable: ConnectError: connection refused by rm-a "
                                                f"\\(tried {A} 2 times\\)"):
        c.get_reward(["q"])


def test_async_client_spreads_and_fails_over():
    handle, seen = servers()

    async def spread():
        async with AsyncRewardClient(base_urls=[A, B], transport=httpx.MockTransport(handle)) as c:
            return await asyncio.gather(*(c.get_reward(["q"]) for _ in range(6)))
    assert sorted(served_by(r) for r in asyncio.run(spread())) == ["rm-a"] * 3 + ["rm-b"] * 3

    handle, seen = servers(down={"rm-b"})

    async def failover():
        async with AsyncRewardClient([A, B], transport=httpx.MockTransport(handle), backoff=0.0) as c:
            return [served_by(await c.get_reward(["q"])) for _ in range(2)]
    assert asyncio.run(failover()) == ["rm-a", "rm-a"] and seen == ["rm-a", "rm-b", "rm-a"]

    handle, _ = servers(down={"rm-a", "rm-b"})

    async def dead():
        async with AsyncRewardClient([A, B], transport=httpx.MockTransport(handle), retries=0) as c:
            await c.score(["p"], ["r"])
    with pytest.raises(RewardClientError, match="every server failed") as e:
        asyncio.run(dead())
    assert e.value.tried == [A, B]


def test_a_server_that_timed_out_goes_last_in_the_next_round_of_the_same_call(sleeps):
    """A hung, B busy once: round 1 tries A (timeout: cooldown) then B (503); round 2 must start with B, not
    spend another timeout on A."""
    seen, b_answers = [], iter([503])

    def handle(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        seen.append(host)
        if host == "rm-a":
            raise httpx.ReadTimeout("hung")
        status = next(b_answers, 200)
        return httpx.Response(status, json={"rewards": [1.0], "scores": [1.0], "extra_logs": {host: [1.0]}}
                              if status == 200 else {"detail": "busy"})

    c = RewardClient([A, B], transport=httpx.MockTransport(handle), cooldown=30.0, backoff=0.0)
    c._turn = iter([0])  # this call starts at A
    assert served_by(c.get_reward(["q"])) == "rm-b"
    assert seen == ["rm-a", "rm-b", "rm-b"]
