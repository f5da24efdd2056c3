"""A real uvicorn server on a loopback port, spoken to the way OpenRLHF's PPO side does (aiohttp, one
query per request, many at once), plus the /v1 API, auth, limits and the Python clients."""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest
import torch

from serve_helpers import ServerThread
from serve_helpers import rm_dirs  # noqa: F401  (fixture)

aiohttp = pytest.importorskip("aiohttp")

from rewardkit.serve.client import AsyncRewardClient, RewardClient, RewardClientError  # noqa: E402
from rewardkit.scoring import RewardScorer  # noqa: E402
from rewardkit.serve.app import build_app, create_app  # noqa: E402
from rewardkit.serve.batcher import BatchSettings  # noqa: E402
from rewardkit.serve.combine import single_model  # noqa: E402
from rewardkit.serve.service import RewardService, ServeSettings  # noqa: E402

TOPICS = ["rain", "cats", "bread", "math", "music", "trees", "boats", "stars"]


def chatml(prompt: str, response: str) -> str:
    """A full text as OpenRLHF decodes a rollout (special tokens kept)."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>"


QUERIES = [chatml(f"Tell me about {t}.", f"Here is what I know about {t}: " + "really " * i + "interesting.")
           for i, t in enumerate(TOPICS * 4)]
SETTINGS = ServeSettings(max_texts=16, max_body_bytes=20_000, batch=BatchSettings(max_batch_size=32, max_wait_ms=50))


@pytest.fixture(scope="module")
def scorer(rm_dirs):  # noqa: F811
    return RewardScorer.load(rm_dirs["llama"])


@pytest.fixture(scope="module")
def server(rm_dirs):  # noqa: F811
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), SETTINGS)) as s:
        yield s


def test_health_says_the_precision_of_each_model(server, rm_dirs):  # noqa: F811
    import httpx

    assert httpx.get(server.url + "/health").json()["precision"] == {"reward": "fp32"}  # build_app's default
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), SETTINGS, bf16=True)) as s:
        assert httpx.get(s.url + "/health").json()["precision"] == {"reward": "bf16"}


async def _post_all(url: str, bodies: list, headers: dict | None = None) -> list[tuple[int, dict, dict]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one(body):
            kw = {"json": body} if not isinstance(body, (bytes, str)) else {"data": body}
            async with session.post(url, headers=headers, **kw) as r:
                return r.status, await r.json(), dict(r.headers)
        return await asyncio.gather(*(one(b) for b in bodies))


def _post(url, body, headers=None):
    return asyncio.run(_post_all(url, [body], headers))[0]


def _batch_stats(url: str) -> tuple[float, float]:
    text = RewardClient(url)._http.get("/metrics").text
    count = float(re.search(r'rewardkit_batch_size_count\{model="reward"\} (\S+)', text).group(1))
    total = float(re.search(r'rewardkit_batch_size_sum\{model="reward"\} (\S+)', text).group(1))
    return count, total


def test_openrlhf_request_shape(server, scorer):
    status, body, _ = _post(server.url + "/get_reward", {"query": QUERIES[:1], "prompts": ["Tell me about rain."],
                                                        "labels": [None]})
    assert status == 200 and set(body) == {"rewards", "scores", "extra_logs"}
    want = scorer.score_full_texts(QUERIES[:1]).item()
    assert body["rewards"][0] == pytest.approx(want, abs=1e-4) and body["scores"] == body["rewards"]
    assert body["extra_logs"]["reward_raw"][0] == pytest.approx(want, abs=1e-4)
    status, body, _ = _post(server.url + "/get_reward", {"query": []})  # a 2nd server of a split OpenRLHF list
    assert status == 200 and body["rewards"] == []


def test_concurrent_requests_are_batched_and_equal_single_scoring(server, scorer):
    before = _batch_stats(server.url)
    results = asyncio.run(_post_all(server.url + "/get_reward", [{"query": [q]} for q in QUERIES]))
    after = _batch_stats(server.url)
    single = [scorer.score_full_texts([q]).item() for q in QUERIES]  # one at a time, no padding
    for (status, body, _), want in zip(results, single):
        assert status == 200
        assert body["rewards"][0] == pytest.approx(want, abs=1e-4)
    assert after[1] - before[1] == len(QUERIES)  # every text went through the batcher once
    assert after[0] - before[0] < len(QUERIES)  # ... in fewer forwards than requests


def test_v1_score_compare_rank(server, scorer):
    msgs = [{"role": "user", "content": "Tell me about tea."}, {"role": "assistant", "content": "Tea is a drink."}]
    status, body, _ = _post(server.url + "/v1/score", {"items": [{"prompt": "Tell me about tea.", "response": "Tea!"},
                                                                 {"messages": msgs}], "normalize": True})
    assert status == 200
    raw = scorer.score_texts(["Tell me about tea.", msgs[:1]], ["Tea!", msgs[1:]])
    assert body["raw_scores"] == pytest.approx(raw.tolist(), abs=1e-4)
    assert body["scores"] == pytest.approx(((raw - 0.5) / 2.0).tolist(), abs=1e-4)  # mean 0.5, std 2 in config

    status, body, _ = _post(server.url + "/v1/compare", {"items": [{"prompt": "Hi", "a": "Hello!", "b": "Go away."}]})
    a, b = scorer.score_texts(["Hi", "Hi"], ["Hello!", "Go away."]).tolist()
    assert status == 200 and body["prob_a_better"][0] == pytest.approx(torch.sigmoid(torch.tensor(a - b)).item(), abs=1e-4)

    cands = ["Hello!", "Go away.", "Hi, how can I help you today?"]
    status, body, _ = _post(server.url + "/v1/rank", {"prompt": "Hi", "candidates": cands})
    want = scorer.score_texts(["Hi"] * 3, cands).tolist()
    assert status == 200 and body["scores"] == pytest.approx(want, abs=1e-4)
    assert body["order"] == sorted(range(3), key=lambda i: -want[i]) and body["best"] == body["order"][0]


@pytest.mark.parametrize("body,fragment", [
    (b"{not json", "not valid JSON"),
    ({"query": "one string"}, "query: Input should be a valid list"),
    ({"prompts": ["x"]}, "query: Field required"),
    ({"query": [1]}, "query.0: Input should be a valid string"),
    ({"items": [{"prompt": "x"}]}, "either `response`"),
])
def test_malformed_bodies_are_422_with_the_field(server, body, fragment):
    route = "/v1/score" if isinstance(body, dict) and "items" in body else "/get_reward"
    headers = {"Content-Type": "application/json"}
    status, answer, _ = _post(server.url + route, body if isinstance(body, dict) else body, headers)
    assert status == 422 and fragment in answer["detail"], answer


def test_oversize_requests_are_413(server):
    status, body, _ = _post(server.url + "/get_reward", {"query": ["x"] * 17})
    assert status == 413 and "17 > 16" in body["detail"]
    status, body, _ = _post(server.url + "/get_reward", {"query": ["y" * 30_000]})
    assert status == 413 and "too large" in body["detail"]

    async def chunked():  # no Content-Length: the limit must hold while streaming
        async def gen():
            yield b'{"query": ["'
            for _ in range(30):
                yield b"z" * 1000
            yield b'"]}'
        async with aiohttp.ClientSession() as s, s.post(server.url + "/get_reward", data=gen()) as r:
            return r.status, await r.json()
    status, body = asyncio.run(chunked())
    assert status == 413 and "too large" in body["detail"]


def test_metrics_prometheus_text(server):
    _post(server.url + "/get_reward", {"query": QUERIES[:2]})
    r = RewardClient(server.url)._http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in ("rewardkit_requests_total{route=\"/get_reward\",status=\"200\"}", "rewardkit_request_latency_seconds_bucket",
                 "rewardkit_batch_size_bucket", "rewardkit_queue_depth{model=\"reward\"} 0", "# TYPE rewardkit_batch_size histogram"):
        assert name in r.text


def test_api_key(rm_dirs):  # noqa: F811
    settings = ServeSettings(api_key="s3cret")
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), settings)) as s:
        url = s.url + "/get_reward"
        assert _post(url, {"query": ["hi"]})[0] == 401
        status, body, headers = _post(url, {"query": ["hi"]}, {"Authorization": "Bearer wrong"})
        assert status == 401 and "Bearer" in body["detail"] and headers.get("WWW-Authenticate") == "Bearer"
        assert _post(url, {"query": ["hi"]}, {"Authorization": "Bearer s3cret"})[0] == 200
        assert RewardClient(s.url)._http.get("/health").status_code == 200  # no key needed
        assert RewardClient(s.url)._http.get("/metrics").status_code == 401
        assert RewardClient(s.url, api_key="s3cret", retries=0).get_reward(["hi"]).rewards
        with pytest.raises(RewardClientError, match="401"):
            RewardClient(s.url, api_key="nope", retries=0).get_reward(["hi"])


def test_full_queue_answers_503_with_retry_after(rm_dirs):  # noqa: F811
    settings = ServeSettings(max_texts=2, batch=BatchSettings(max_batch_size=1, max_queue=2, max_wait_ms=0))
    service = RewardService.load(single_model(str(rm_dirs["llama"])), settings)
    batcher = service.models["reward"].batcher
    entered, release, run = threading.Event(), threading.Event(), batcher.run_batch

    def gated(seqs):
        entered.set()
        release.wait(30)
        return run(seqs)
    batcher.run_batch = gated

    async def scenario(url):
        async with aiohttp.ClientSession() as session:
            async def post():
                async with session.post(url + "/get_reward", json={"query": ["hi"]}) as r:
                    return r.status, dict(r.headers)
            first = asyncio.create_task(post())  # occupies the worker
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
            queued = [asyncio.create_task(post()) for _ in range(2)]  # fill the queue (2 texts)
            while batcher.queue_depth < 2:
                await asyncio.sleep(0.005)
            rejected = await post()
            release.set()
            return rejected, [await t for t in [first, *queued]]

    with ServerThread(create_app(service, settings)) as s:
        (status, headers), served = asyncio.run(scenario(s.url))
    assert status == 503 and headers["Retry-After"] == "1"
    assert [st for st, _ in served] == [200, 200, 200]


def test_sync_and_async_clients(server, scorer):
    with RewardClient(server.url, timeout=30) as c:
        assert c.health()["models"] == ["reward"]
        res = c.get_reward(QUERIES[:3], prompts=["p"] * 3, labels=[None] * 3)
        assert res.rewards == pytest.approx(scorer.score_full_texts(QUERIES[:3]).tolist(), abs=1e-4)
        assert c.score(["Hi"], ["Hello!"]).raw_scores == pytest.approx(scorer.score(["Hi"], ["Hello!"]), abs=1e-4)
        assert c.rank("Hi", ["a", "b"]).order in ([0, 1], [1, 0])
        assert len(c.compare(["Hi"], ["a"], ["b"]).prob_a_better) == 1

    async def run():
        async with AsyncRewardClient(server.url) as c:
            return await asyncio.gather(*(c.get_reward([q]) for q in QUERIES[:8]))
    results = asyncio.run(run())
    assert [r.rewards[0] for r in results] == pytest.approx(scorer.score_full_texts(QUERIES[:8]).tolist(), abs=1e-4)


def test_request_bodies_are_not_logged(rm_dirs, caplog):  # noqa: F811
    secret = "PRIVATE-USER-TEXT-1234"
    with caplog.at_level("DEBUG"), ServerThread(build_app(single_model(str(rm_dirs["llama"])), SETTINGS)) as s:
        _post(s.url + "/get_reward", {"query": [secret]})
        _post(s.url + "/get_reward", {"query": [secret, 3]})  # an error path too
    assert secret not in caplog.text and secret not in json.dumps([r.getMessage() for r in caplog.records])


def test_openrlhf_reward_func_example(server, scorer, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "openrlhf_reward_func.py"
    spec = importlib.util.spec_from_file_location("openrlhf_reward_func", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("REWARDKIT_URL", server.url)
    out = mod.reward_func(QUERIES[:2], ["p1", "p2"], [None, None])
    torch.testing.assert_close(out["rewards"], scorer.score_full_texts(QUERIES[:2]), atol=1e-4, rtol=1e-4)
    assert set(out) == {"rewards", "scores", "extra_logs"} and out["extra_logs"]["reward_raw"].shape == (2,)
    assert mod.reward_func([], [], [])["rewards"].numel() == 0


def test_bf16_server_scores_close_to_fp32(rm_dirs):  # noqa: F811
    """`serve --bf16`: the batched forward runs under bf16 autocast; scores stay close to fp32."""
    texts = ["Hello there, how are you?", "A longer answer that explains the question in some detail."]
    with ServerThread(build_app(single_model(str(rm_dirs["llama"])), SETTINGS)) as s:
        fp32 = RewardClient(s.url, retries=0).get_reward(texts).rewards
    service = RewardService.load(single_model(str(rm_dirs["llama"])), SETTINGS, bf16=True)
    assert service.models["reward"].scorer.bf16
    with ServerThread(create_app(service, SETTINGS)) as s:
        bf16 = RewardClient(s.url, retries=0).get_reward(texts).rewards
    assert bf16 != fp32  # really a different dtype path
    assert max(abs(a - b) for a, b in zip(bf16, fp32)) < 0.05 * max(1.0, max(abs(x) for x in fp32))


def test_compare_is_one_definition_across_python_and_http(rm_dirs, tmp_path):  # noqa: F811
    """P(a ≻ b) at the calibrated temperature is the same from RewardScorer.compare and /v1/compare."""
    import shutil

    from rewardkit.models.reward_model import write_temperature

    model_dir = shutil.copytree(rm_dirs["llama"], tmp_path / "rm")
    write_temperature(model_dir, 2.5)
    local = RewardScorer.load(model_dir).compare(["Hi", "Yo"], ["Hello!", "Go away."], ["Go away.", "Hello!"])
    with ServerThread(build_app(single_model(str(model_dir)), SETTINGS)) as s:
        remote = RewardClient(s.url).compare(["Hi", "Yo"], ["Hello!", "Go away."], ["Go away.", "Hello!"])
    assert remote.temperature == local[0].temperature == 2.5
    assert remote.prob_a_better == pytest.approx([c.prob_a_better for c in local], abs=1e-5)
    assert local[0].prob_a_better != pytest.approx(torch.sigmoid(torch.tensor(local[0].reward_a - local[0].reward_b)).item(), abs=1e-3)
