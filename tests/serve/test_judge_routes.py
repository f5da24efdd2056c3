"""The server answers every kind through the Judge: compare and rank for models that only compare (their
own verdicts, not score differences), scores for pointwise judges without token batching, and a clear 400
where a route needs what a kind cannot give."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rewardkit.scoring import NoScores, PairwiseJudge, PointwiseJudge  # noqa: E402
from rewardkit.serve.app import create_app  # noqa: E402
from rewardkit.serve.combine import Single, WeightedSum  # noqa: E402
from rewardkit.serve.service import RewardService, ServeSettings  # noqa: E402


def _kw(r) -> float:
    t = r if isinstance(r, str) else " ".join(m["content"] for m in r)
    return float(t.count("GOOD") - t.count("BAD"))


class Pairs(PairwiseJudge):
    kind = "toy_pairwise"
    temperature = 2.0

    def margins(self, prompts, a, b):
        return torch.tensor([_kw(x) - _kw(y) for x, y in zip(a, b)], dtype=torch.float64)


class Points(PointwiseJudge):
    kind = "toy_pointwise"

    def score_texts(self, prompts, responses, *, normalize=False):
        return torch.tensor([_kw(r) for r in responses], dtype=torch.float64)


def _client(judge) -> TestClient:
    settings = ServeSettings()
    return TestClient(create_app(RewardService({"m": judge}, Single("m"), settings), settings))


def test_a_pairwise_kind_answers_compare_and_rank_and_refuses_scores():
    with _client(Pairs()) as c:
        r = c.post("/v1/compare", json={"items": [{"prompt": "p", "a": "GOOD", "b": "BAD"},
                                                  {"prompt": "p", "a": "BAD", "b": "GOOD"}]}).json()
        assert r["raw_scores_a"] is None and r["margins"] == [2.0, -2.0] and r["temperature"] == 2.0
        assert r["prob_a_better"][0] == pytest.approx(float(torch.sigmoid(torch.tensor(1.0))))
        assert r["prob_a_better"][0] + r["prob_a_better"][1] == 1.0
        r = c.post("/v1/rank", json={"prompt": "p", "candidates": ["BAD", "GOOD GOOD", "GOOD"]}).json()
        assert r["order"] == [1, 2, 0] and r["raw_scores"] is None
        for route, body in (("/v1/score", {"items": [{"prompt": "p", "response": "x"}]}),
                            ("/get_reward", {"query": ["p x"]}), ("/classify", {"input": "p x"})):
            resp = c.post(route, json=body)
            assert resp.status_code == 400 and "compare or rank" in resp.json()["detail"], (route, resp.text)


def test_a_pointwise_judge_without_token_batching_scores_compares_and_ranks():
    with _client(Points()) as c:
        r = c.post("/v1/score", json={"items": [{"prompt": "p", "response": "GOOD GOOD"}]}).json()
        assert r["scores"] == [2.0]
        r = c.post("/v1/compare", json={"items": [{"prompt": "p", "a": "GOOD", "b": "BAD"}]}).json()
        assert (r["raw_scores_a"], r["raw_scores_b"], r["margins"]) == ([1.0], [-1.0], [2.0])
        r = c.post("/v1/rank", json={"prompt": "p", "candidates": ["BAD", "GOOD"]}).json()
        assert r["best"] == 1 and r["raw_scores"] == [-1.0, 1.0]
        resp = c.post("/get_reward", json={"query": ["a full text"]})
        assert resp.status_code == 400 and "prompt and the response apart" in resp.json()["detail"]


def test_a_combination_rule_refuses_a_kind_without_scores():
    with pytest.raises(NoScores, match="combine"):
        RewardService({"a": Pairs(), "b": Points()}, WeightedSum({"a": 1.0, "b": 1.0}), ServeSettings())
