"""The reward server under faults: auth before anything else, error shapes as the schema declares them,
slow headers (closed) and half-sent bodies (408), connections beyond the bound (503), huge texts (cut before tokenising), clients that go away (their queued work
is dropped), SIGTERM (bounded drain, 503 for what cannot finish, exit 0) and a corrupt model at start-up."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from serve_helpers import ServerThread, httpx
from serve_helpers import rm_dirs  # noqa: F401  (fixture)
from test_batcher import FakeModel, seq

aiohttp = pytest.importorskip("aiohttp")

from rewardkit import cli  # noqa: E402
from rewardkit.scoring import RewardScorer  # noqa: E402
from rewardkit.serve.app import build_app, create_app, draining_server  # noqa: E402
from rewardkit.serve.batcher import BatchSettings, DynamicBatcher, ShuttingDown  # noqa: E402
from rewardkit.serve.combine import single_model  # noqa: E402
from rewardkit.serve.guard import FD_RESERVE, default_max_connections, guarded_protocol, open_file_limit  # noqa: E402
from rewardkit.scoring.limits import CHARS_PER_TOKEN, cap_text  # noqa: E402
from rewardkit.serve.metrics import Metrics  # noqa: E402
from rewardkit.serve.service import RewardService, ServeSettings  # noqa: E402

POST_ROUTES = ("/get_reward", "/v1/score", "/v1/compare", "/v1/rank", "/classify", "/score", "/pooling")
JSON = {"Content-Type": "application/json"}
BOUND_S = 10.0  # generous upper bound for "promptly" on a loaded CI machine


def wait_until(cond, what: str, timeout: float = BOUND_S) -> None:
    """Poll a condition (not a fixed sleep): the tests wait for states, never for durations."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def server(rm_dirs):  # noqa: F811
    settings = ServeSettings(body_timeout=0.5, max_body_bytes=4 * 2 ** 20)
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), settings)) as s:
        yield s


def gated_service(rm_dirs, **settings):  # noqa: F811
    """A served tiny model whose forwards wait at a gate: `entered` is set when one starts, `release` lets it go."""
    settings = ServeSettings(**{"batch": BatchSettings(max_batch_size=1, max_wait_ms=0), **settings})
    service = RewardService.load(single_model(str(rm_dirs["llama"])), settings)
    batcher = service.models["reward"].batcher
    gate = FakeModel(gated=True)
    run = batcher.run_batch

    def gated(seqs):
        gate(seqs)
        return run(seqs)
    batcher.run_batch = gated
    return service, settings, batcher, gate


# --------------------------------------------------------------------------- auth and error shapes

def test_api_key_comes_before_the_body_and_guards_the_schema(rm_dirs):  # noqa: F811
    key = {"Authorization": "Bearer k3y"}
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), ServeSettings(api_key="k3y"))) as s, \
            httpx.Client(base_url=s.url, timeout=BOUND_S) as c:
        for route in POST_ROUTES:
            r = c.post(route, content=b"{not json", headers=JSON)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", route
            assert c.post(route, content=b"{not json", headers={**JSON, **key}).status_code == 422, route
        for path in ("/openapi.json", "/docs", "/redoc", "/metrics", "/v1/models", "/no-such-route"):
            assert c.get(path).status_code == 401, path
        schema = c.get("/openapi.json", headers=key)
        assert schema.status_code == 200 and "/get_reward" in schema.json()["paths"]
        assert schema.json()["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
        assert [c.get(p, headers=key).status_code for p in ("/docs", "/redoc")] == [404, 404]  # not served
        assert c.get("/health").status_code == 200


def test_every_error_has_the_shape_the_schema_declares(server):
    with httpx.Client(base_url=server.url, timeout=BOUND_S) as c:
        schema = c.get("/openapi.json").json()
        components = schema["components"]["schemas"]
        assert components["ErrorResponse"]["properties"]["detail"]["type"] == "string"
        assert "HTTPValidationError" not in components  # FastAPI's list-shaped 422 is declared nowhere
        for route in POST_ROUTES:
            responses = schema["paths"][route]["post"]["responses"]
            for code in ("400", "408", "413", "422", "503"):
                assert responses[code]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"}, (route, code)
            for body in (b"{not json", b"[]", b'{"unknown": 1}', b'{"query": [1], "items": 2, "input": 3}'):
                r = c.post(route, content=body, headers=JSON)
                assert r.status_code == 422 and list(r.json()) == ["detail"], (route, body, r.text)
                assert isinstance(r.json()["detail"], str) and r.json()["detail"]


# --------------------------------------------------------------------------- slow and half-sent bodies

def _half_sent(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /get_reward HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n" + b'{"query": ["hi')
    return sock


def _answer_then_close(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it does not)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_a_connection_beyond_the_bound_gets_503_and_is_closed(rm_dirs, impl):  # noqa: F811
    """Without a bound, many open connections ran the process out of file descriptors, after which asyncio stops
    accepting and new clients wait in the backlog unanswered. One connection over `max_connections` is answered
    503 with Retry-After naming the key, and closed; once a connection goes away, a new client is served."""
    base = _protocol_base(impl)
    settings = ServeSettings(max_connections=2)
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), settings),
                      http=guarded_protocol(30.0, 2, base=base)) as s:
        connections = s.server.server_state.connections
        wait_until(lambda: not connections, "the start-up health check's connection to close")
        held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(2)]
        extra = socket.create_connection(("127.0.0.1", s.port))
        # its request is sent before the answer comes, as clients do: it must not turn the 503 into a reset
        extra.sendall(b'POST /get_reward HTTP/1.1\r\nHost: t\r\nContent-Length: 19\r\n\r\n{"query": ["hi x"]}')
        answer = _answer_then_close(extra, BOUND_S)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 1" in answer.lower() and b"serve.max_connections" in answer
        held[0].close()
        wait_until(lambda: httpx.post(s.url + "/get_reward", json={"query": ["served again"]}).status_code == 200,
                   "a new client to be served once a held connection closed")
        held[1].sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert _answer_then_close(held[1], BOUND_S).startswith(b"HTTP/1.1 200 ")  # the held ones still work
    for sock in (*held, extra):
        sock.close()
    with pytest.raises(ValueError, match="max_connections"):
        ServeSettings(max_connections=0)
    limit = open_file_limit()
    assert default_max_connections() == (None if limit is None else max(1, limit - FD_RESERVE))


def _protocol_base(impl: str) -> type:
    if impl == "httptools":
        pytest.importorskip("httptools")
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return base


def test_half_sent_and_dribbled_bodies_get_408_and_a_closed_connection(server):
    started = time.monotonic()
    socks = [_half_sent(server.port) for _ in range(20)]
    answers = [_answer_then_close(s, BOUND_S) for s in socks]
    elapsed = time.monotonic() - started
    for s in socks:
        s.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") and b"body_timeout" in a for a in answers), answers[0]
    assert 0.45 <= elapsed < 0.5 + 3.0

    # A client that keeps sending (1 byte per 0.1 s) is cut off too: the deadline is for the whole body.
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /get_reward HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    sock.settimeout(0.1)
    started, answer = time.monotonic(), b""
    while time.monotonic() - started < BOUND_S and not answer:
        try:
            sock.sendall(b" ")
            answer = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:  # closed under us after the answer
            break
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 0.5 + 3.0
    assert httpx.post(server.url + "/get_reward", json={"query": ["still serving"]}).status_code == 200


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_slow_headers_close_the_connection_but_a_long_forward_is_left_alone(rm_dirs, impl):  # noqa: F811
    """uvicorn has no header timeout: a client sending its headers a byte at a time held a connection for as long
    as it liked. With `header_timeout` it gets a 408 and a closed connection; a connection that sent nothing is
    closed silently; a request whose forward outlasts the deadline is still answered, and a kept-alive
    connection is served again when its next headers come in time."""
    base = _protocol_base(impl)
    service, settings, batcher, gate = gated_service(rm_dirs, header_timeout=0.5)
    with ServerThread(create_app(service, settings), http=guarded_protocol(0.5, base=base)) as s:
        statuses = []
        running = threading.Thread(target=lambda: statuses.append(httpx.post(
            s.url + "/get_reward", json={"query": ["held at the gate"]}, timeout=BOUND_S).status_code))
        running.start()
        wait_until(gate.entered.is_set, "the forward to start")
        idle = socket.create_connection(("127.0.0.1", s.port))
        started = time.monotonic()
        slow = socket.create_connection(("127.0.0.1", s.port))
        slow.sendall(b"POST /get_reward HTTP/1.1\r\nHost: t\r\n")
        slow.settimeout(0.1)
        answer = b""
        while time.monotonic() - started < BOUND_S:  # a header byte every 0.1 s: still not in time
            try:
                slow.sendall(b"X")
                chunk = slow.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            answer += chunk
            if not chunk:
                break
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 ") and b"header_timeout" in answer, answer
        assert 0.45 <= elapsed < 0.5 + 3.0
        assert _answer_then_close(idle, BOUND_S) == b""  # nothing sent: closed without an answer
        assert running.is_alive()  # its forward is still held, well past the 0.5 s deadline
        gate.release.set()
        running.join(BOUND_S)
        assert statuses == [200]
        with httpx.Client(base_url=s.url, timeout=BOUND_S) as c:  # one kept-alive connection, two requests
            assert [c.post("/get_reward", json={"query": [q]}).status_code for q in ("a", "b")] == [200, 200]
    for sock in (idle, slow):
        sock.close()
    assert gate.sizes == [1, 1, 1]


# --------------------------------------------------------------------------- huge texts

def test_huge_texts_are_cut_before_tokenising_and_score_as_documented(rm_dirs):  # noqa: F811
    settings = ServeSettings(max_body_bytes=4 * 2 ** 20)
    service = RewardService.load(single_model(str(rm_dirs["llama"])), settings)
    limit = service.char_limit
    assert limit == 2 * CHARS_PER_TOKEN * 64 == 8192  # the tiny model was saved with max_length 64
    scorer, seen = service.models["reward"].scorer, []
    encode_texts = scorer.encoder.encode_texts  # what the tokenizer is given (a request's full texts: one call)
    scorer.encoder.encode_texts = lambda ts: (seen.extend(len(t) for t in ts), encode_texts(ts))[1]
    rng = random.Random(0)
    words = "rain cats bread math music trees boats stars tea chess clouds".split()
    huge = " ".join(rng.choice(words) for _ in range(200_000))[:1_000_000]
    assert len(huge) == 1_000_000
    with ServerThread(create_app(service, settings)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.post("/get_reward", json={"query": [huge, "short"]})
        too_many = c.post("/get_reward", json={"query": ["x"] * 10_000})
        metrics = c.get("/metrics").text
    assert r.status_code == 200 and max(seen) <= limit and sorted(seen)[0] == len("short")
    assert too_many.status_code == 413 and "10000 > 512" in too_many.json()["detail"]
    assert 'rewardkit_texts_cut_total 1' in metrics
    reference = RewardScorer.load(rm_dirs["llama"])
    cut = huge[:limit // 2] + huge[-(limit // 2):]
    assert r.json()["rewards"][0] == pytest.approx(reference.score_full_texts([cut]).item(), abs=1e-5)
    # ...which is what the model reads of the whole text anyway (it keeps the end of a too-long text)
    assert r.json()["rewards"][0] == pytest.approx(reference.score_full_texts([huge[-100_000:]]).item(), abs=1e-5)


def test_cap_text_keeps_both_ends_of_strings_and_message_contents():
    assert cap_text("short", 10) == ("short", 0)
    assert cap_text("abcdefghijkl", 10) == ("abcdehijkl", 1)
    msgs = [{"role": "user", "content": "x" * 8 + "y" * 8}, {"role": "assistant", "content": "ok"}]
    assert cap_text(msgs, 10) == ([{"role": "user", "content": "xxxxxyyyyy"}, msgs[1]], 1)


# --------------------------------------------------------------------------- clients that go away

def test_cancelled_requests_leave_the_queue_before_they_run():
    model, metrics = FakeModel(gated=True), Metrics()
    batcher = DynamicBatcher("m", model, BatchSettings(max_batch_size=1, max_wait_ms=0), metrics)
    batcher.start()

    async def go():
        first = asyncio.ensure_future(batcher.submit([seq(1)]))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, BOUND_S)
        gone = asyncio.ensure_future(batcher.submit([seq(2), seq(3)]))
        kept = asyncio.ensure_future(batcher.submit([seq(4)]))
        await asyncio.sleep(0)  # both are queued now
        assert batcher.queue_depth == 3
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queue_depth == 1
        model.release.set()
        return await first, await kept
    try:
        first, kept = asyncio.run(go())
    finally:
        batcher.stop()
    assert first.tolist() == [1.0] and kept.tolist() == [4.0]
    assert model.sizes == [1, 1]  # the abandoned 2 texts never reached the model
    assert 'rewardkit_texts_dropped_total{model="m",reason="cancelled"} 2' in metrics.render()


def test_a_client_that_disconnects_has_its_queued_texts_dropped(rm_dirs):  # noqa: F811
    service, settings, batcher, gate = gated_service(rm_dirs)
    with ServerThread(create_app(service, settings)) as s:
        first = threading.Thread(target=httpx.post, args=(s.url + "/get_reward",), kwargs={
            "json": {"query": ["occupies the worker"]}, "timeout": BOUND_S})
        first.start()
        wait_until(gate.entered.is_set, "the first forward")
        sock = socket.create_connection(("127.0.0.1", s.port))
        body = b'{"query": ["abandoned", "also abandoned"]}'
        sock.sendall(b"POST /get_reward HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: batcher.queue_depth == 2, "the abandoned request to be queued")
        sock.close()
        wait_until(lambda: batcher.queue_depth == 0, "the abandoned texts to leave the queue")
        gate.release.set()
        first.join(BOUND_S)
        metrics = httpx.get(s.url + "/metrics").text
    assert gate.sizes == [1]  # only the first request's text was ever run
    assert 'rewardkit_texts_dropped_total{model="reward",reason="cancelled"} 2' in metrics
    assert 'rewardkit_requests_total{route="/get_reward",status="499"} 1' in metrics


# --------------------------------------------------------------------------- SIGTERM: bounded drain

def test_drain_lets_the_running_forward_finish_and_answers_503_to_the_queue():
    model = FakeModel(gated=True)
    batcher = DynamicBatcher("m", model, BatchSettings(max_batch_size=1, max_wait_ms=0), Metrics())
    batcher.start()

    async def go():
        running = asyncio.ensure_future(batcher.submit([seq(1)]))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, BOUND_S)
        queued = asyncio.ensure_future(batcher.submit([seq(2)]))
        await asyncio.sleep(0)
        batcher.begin_drain(0.0)
        with pytest.raises(ShuttingDown, match="within the 0 s drain"):
            await queued
        with pytest.raises(ShuttingDown, match="not taking new requests"):
            await batcher.submit([seq(3)])
        model.release.set()
        return await running
    try:
        assert asyncio.run(go()).tolist() == [1.0]
    finally:
        batcher.stop()
    assert model.sizes == [1]


async def _post_status(url: str, texts: list[str]) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND_S)) as session, \
            session.post(url + "/get_reward", json={"query": texts}) as r:
        return r.status, (await r.json())["detail"] if r.status != 200 else ""


def test_shutdown_finishes_in_flight_requests_and_refuses_the_rest(rm_dirs):  # noqa: F811
    service, settings, batcher, gate = gated_service(rm_dirs, drain_timeout=0.2)
    server = ServerThread(create_app(service, settings), lambda cfg: draining_server(cfg, service, 0.2),
                          timeout_graceful_shutdown=BOUND_S)

    async def scenario():
        running = asyncio.ensure_future(_post_status(server.url, ["in flight"]))
        await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, BOUND_S)
        queued = asyncio.ensure_future(_post_status(server.url, ["queued"]))
        while batcher.queue_depth < 1:
            await asyncio.sleep(0.005)
        server.server.should_exit = True  # what uvicorn's SIGTERM handler does
        refused = await queued  # 503 after the 0.2 s drain, while the forward still runs
        with pytest.raises(aiohttp.ClientConnectionError):  # the port no longer accepts connections
            await _post_status(server.url, ["too late"])
        gate.release.set()
        return refused, await running

    with server:
        (status, detail), finished = asyncio.run(scenario())
        server.thread.join(BOUND_S)
        assert not server.thread.is_alive()
    assert status == 503 and "within the 0.2 s drain" in detail
    assert finished == (200, "")


def test_requests_outliving_the_drain_get_503_not_a_dropped_connection(rm_dirs):  # noqa: F811
    service, settings, batcher, gate = gated_service(rm_dirs, drain_timeout=0.0)
    server = ServerThread(create_app(service, settings), lambda cfg: draining_server(cfg, service, 0.0),
                          timeout_graceful_shutdown=0.2)  # the forward below never ends in time

    async def scenario():
        stuck = asyncio.ensure_future(_post_status(server.url, ["stuck"]))
        await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, BOUND_S)
        server.server.should_exit = True
        return await stuck

    with server:
        status, detail = asyncio.run(scenario())
        gate.release.set()
    assert status == 503 and "could not finish within the drain time" in detail


@pytest.mark.slow  # a fresh interpreter imports torch + transformers: ~10-30 s on a loaded machine
def test_rewardkit_serve_exits_0_on_sigterm(rm_dirs):  # noqa: F811
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rewardkit.cli", "serve", str(rm_dirs["llama"]), "--port",
                             str(port), "drain_timeout=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(healthy, "rewardkit serve to start", timeout=60)
        assert httpx.post(f"http://127.0.0.1:{port}/get_reward", json={"query": ["hi"]}).status_code == 200
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and time.monotonic() - started < BOUND_S
    assert "Traceback" not in err and "draining for up to 1 s" in err


# --------------------------------------------------------------------------- start-up

def test_corrupt_model_at_startup_is_exit_2_naming_the_file(rm_dirs, tmp_path, capsys):  # noqa: F811
    import shutil

    bad = shutil.copytree(rm_dirs["llama"], tmp_path / "bad")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    # port 0: the port is bound before loading, so it must be one this user may bind; loading fails before it listens
    assert cli.main(["serve", str(bad), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rewardkit serve: error: ") and "model.safetensors" in err[0], err
