"""vLLM's pooling API shapes (/classify, /score, /pooling, /v1/models, vLLM's body on /v1/score), driven with the
bodies real clients send (verl's reward loop, vLLM's documented examples); every number is checked against
rewardkit's own scorer on the same texts."""

from __future__ import annotations

import pytest
import torch

from serve_helpers import httpx  # noqa: F401  (skips without the serve extra)
from serve_helpers import rm_dirs  # noqa: F401  (fixture)

from fastapi.testclient import TestClient  # noqa: E402

from rewardkit.scoring import RewardScorer  # noqa: E402
from rewardkit.serve.app import build_app  # noqa: E402
from rewardkit.serve.batcher import BatchSettings  # noqa: E402
from rewardkit.serve.combine import single_model  # noqa: E402
from rewardkit.serve.service import ServeSettings  # noqa: E402

SETTINGS = ServeSettings(max_texts=8, batch=BatchSettings(max_batch_size=16, max_wait_ms=5))
# What verl's reward loop posts: the RM tokenizer's chat template applied to prompt + rollout, BOS stripped.
VERL_TEXT = ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n")
PROMPTS = ["Hello, my name is", "The president of the United States is", "The capital of France is",
           "The future of AI is"]  # vLLM's classification example


@pytest.fixture(scope="module")
def scorer(rm_dirs):  # noqa: F811
    return RewardScorer.load(rm_dirs["llama"])


@pytest.fixture(scope="module")
def client(rm_dirs):  # noqa: F811
    with TestClient(build_app(single_model(str(rm_dirs["llama"])), SETTINGS)) as c:
        yield c


def sigmoid(t: torch.Tensor) -> list[float]:
    return torch.sigmoid(t).tolist()


def test_verl_reward_loop_classify(client, scorer):
    """verl posts one text per request and reads data[-1]["probs"][-1] as the reward, activation off."""
    want = scorer.score_full_texts([VERL_TEXT]).item()
    tokens = len(scorer.encode_text(VERL_TEXT).input_ids)
    for flag in ("use_activation", "activation"):  # vLLM >= 0.11.2 / the older name verl used to send
        r = client.post("/classify", json={"model": "/models/Skywork-Reward", "input": VERL_TEXT, flag: False})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"id", "object", "created", "model", "data", "usage"}
        assert body["id"].startswith("classify-") and body["object"] == "list" and isinstance(body["created"], int)
        assert body["model"] == "/models/Skywork-Reward"  # echoed: any name reaches the one served reward
        assert body["data"] == [{"index": 0, "label": "LABEL_0", "probs": [pytest.approx(want, abs=1e-4)],
                                 "num_classes": 1}]
        assert body["data"][-1]["probs"][-1] == pytest.approx(want, abs=1e-4)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                 "prompt_tokens_details": None}
    # A batched client of the same route (vLLM options rewardkit ignores ride along).
    r = client.post("/classify", json={"model": "rm", "input": [VERL_TEXT, PROMPTS[0]], "use_activation": False,
                                       "add_special_tokens": False, "truncate_prompt_tokens": -1, "priority": 0})
    want2 = scorer.score_full_texts([VERL_TEXT, PROMPTS[0]]).tolist()
    assert [d["probs"][0] for d in r.json()["data"]] == pytest.approx(want2, abs=1e-4)


def test_vllm_classification_example(client, scorer):
    """vLLM's classification example: the model name from /v1/models, then a list of texts, default activation."""
    model = client.get("/v1/models").json()["data"][0]["id"]
    assert model == "reward"
    r = client.post("/classify", json={"model": model, "input": PROMPTS})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    assert [d["probs"][0] for d in data] == pytest.approx(sigmoid(scorer.score_full_texts(PROMPTS)), abs=1e-5)
    assert all(0 < d["probs"][0] < 1 and d["num_classes"] == 1 for d in data)
    # ... and its second half, token ids, is refused with a reason (rewardkit tokenises itself).
    r = client.post("/classify", json={"model": model, "input": [[101, 2023, 102]]})
    assert r.status_code == 422 and "token ids are not accepted" in r.json()["detail"]


def test_classify_chat_messages(client, scorer):
    chat = [{"role": "user", "content": "Tell me about tea."}, {"role": "assistant", "content": "Tea is a drink."}]
    r = client.post("/classify", json={"model": "rm", "messages": chat, "use_activation": False})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["probs"] == pytest.approx(scorer.score_messages([chat]), abs=1e-4)


def test_pooling_sequence_reward_example(client, scorer):
    """vLLM's sequence-reward example: /pooling with `input`, then with chat content parts."""
    r = client.post("/pooling", json={"model": "reward", "input": "vLLM is great!"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("pool-") and body["object"] == "list" and body["model"] == "reward"
    assert body["data"] == [{"index": 0, "object": "pooling",
                             "data": [pytest.approx(sigmoid(scorer.score_full_texts(["vLLM is great!"]))[0], abs=1e-5)]}]
    r = client.post("/pooling", json={"model": "reward", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "vLLM is great!"}]}], "use_activation": False})
    assert r.status_code == 200, r.text
    want = scorer.score_messages([[{"role": "user", "content": "vLLM is great!"}]])
    assert r.json()["data"][0]["data"] == pytest.approx(want, abs=1e-4)
    r = client.post("/pooling", json={"input": "x", "task": "token_classify"})
    assert r.status_code == 422 and "one reward per sequence" in r.json()["detail"]


@pytest.mark.parametrize("route", ["/score", "/v1/score"])
def test_score_documented_examples(client, scorer, route):
    """vLLM's score examples (1:1, 1:N, N:N; `queries`/`documents` and the older `text_1`/`text_2`)."""
    brazil, france = "What is the capital of Brazil?", "What is the capital of France?"
    docs = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    cases = [({"queries": brazil, "documents": docs[0]}, [brazil], docs[:1]),
             ({"queries": france, "documents": docs}, [france] * 2, docs),
             ({"queries": [brazil, france], "documents": docs}, [brazil, france], docs),
             ({"text_1": france, "text_2": docs}, [france] * 2, docs)]
    for body, prompts, responses in cases:
        r = client.post(route, json={"model": "BAAI/bge-reranker-v2-m3", **body})
        assert r.status_code == 200, r.text
        out = r.json()
        assert set(out) == {"id", "object", "created", "model", "data", "usage"} and out["object"] == "list"
        assert [d["index"] for d in out["data"]] == list(range(len(prompts)))
        assert all(d["object"] == "score" for d in out["data"])
        want = scorer.score_texts(prompts, responses)
        assert [d["score"] for d in out["data"]] == pytest.approx(sigmoid(want), abs=1e-5)
        assert out["usage"]["prompt_tokens"] == sum(len(scorer.encode(p, q).input_ids)
                                                    for p, q in zip(prompts, responses))
    r = client.post(route, json={"text_1": [brazil], "text_2": docs, "use_activation": False})
    assert [d["score"] for d in r.json()["data"]] == pytest.approx(
        scorer.score_texts([brazil] * 2, docs).tolist(), abs=1e-4)


@pytest.mark.parametrize("route,body,fragment", [
    ("/score", {"queries": ["a", "b"], "documents": ["x", "y", "z"]}, "2 queries for 3 documents"),
    ("/score", {"queries": "a"}, "give `queries` and `documents`"),
    ("/score", {"text_1": "a", "documents": "x"}, "give `queries` and `documents`"),
    ("/score", {"queries": [], "documents": ["x"]}, "at least one query"),
    ("/v1/score", {"prompts": ["a"], "responses": ["x"]}, "got neither: give `items`"),
    ("/v1/score", {"items": [], "text_1": "a", "text_2": "x"}, "both `items` and `text_1`, `text_2`"),
    ("/v1/score", {"items": [{"prompt": "x"}]}, "items.0: Value error, give either `response`"),
    ("/v1/score", {"text_1": "a", "text_2": 3}, "text_2"),
    ("/classify", {"model": "rm"}, "give either `input`"),
    ("/classify", {"input": "a", "messages": [{"role": "user", "content": "b"}]}, "give either `input`"),
    ("/classify", {"input": "a", "use_activation": True, "activation": False}, "disagree"),
    ("/pooling", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "only text parts"),
])
def test_bad_bodies_are_422_naming_the_problem(client, route, body, fragment):
    r = client.post(route, json=body)
    assert r.status_code == 422 and fragment in r.json()["detail"], r.json()


def test_server_settings_auth_limits_metrics(rm_dirs):  # noqa: F811
    """The routes share the server's rules: normalised rewards, the key, --max-texts, /metrics."""
    settings = ServeSettings(normalize=True, api_key="k", max_texts=2)
    raw = RewardScorer.load(rm_dirs["llama"]).score_full_texts([VERL_TEXT])
    key = {"Authorization": "Bearer k"}
    with TestClient(build_app(single_model(str(rm_dirs["llama"])), settings)) as c:
        assert c.post("/classify", json={"input": VERL_TEXT}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        r = c.post("/classify", json={"input": VERL_TEXT, "use_activation": False}, headers=key)
        assert r.json()["data"][0]["probs"][0] == pytest.approx(((raw - 0.5) / 2.0).item(), abs=1e-4)  # mean, std
        same = c.post("/get_reward", json={"query": [VERL_TEXT]}, headers=key).json()["rewards"][0]
        assert r.json()["data"][0]["probs"][0] == pytest.approx(same, abs=1e-6)
        r = c.post("/score", json={"queries": "q", "documents": ["a", "b", "c"]}, headers=key)
        assert r.status_code == 413 and "3 > 2" in r.json()["detail"]
        metrics = c.get("/metrics", headers=key).text
    assert 'rewardkit_requests_total{route="/classify",status="200"} 1' in metrics
    assert 'rewardkit_requests_total{route="/score",status="413"} 1' in metrics
