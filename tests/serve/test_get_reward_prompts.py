"""/get_reward with OpenRLHF's `prompts`: a query that starts with its prompt is scored as the (prompt, response)
pair training saw (an encoder's [SEP] between them included), in the batched path, the Python API and for
judges that need the prompt apart; any other query keeps the full-text reading."""

from __future__ import annotations

import pytest

from serve_helpers import rm_dirs, save_rm  # noqa: F401  (fixture)

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rewardkit.scoring import RewardScorer  # noqa: E402
from rewardkit.serve.app import build_app, create_app  # noqa: E402
from rewardkit.serve.combine import Single, single_model  # noqa: E402
from rewardkit.serve.service import RewardService, ServeSettings  # noqa: E402
from test_judge_routes import Points  # noqa: E402

ANSWERS = [" It rains when clouds are full.", " Cats sleep most of the day.", " Bread needs yeast and time."]
QUESTIONS = ["Why does it rain?", "What do cats do?", "How is bread made?"]


@pytest.fixture(scope="module")
def bert_rm(tiny_models, tmp_path_factory):
    return save_rm(tiny_models["bert"], tmp_path_factory.mktemp("bert") / "rm", scale=30.0, mean=0.0, std=1.0)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_queries_with_their_prompts_score_as_the_pairs(kind, rm_dirs, bert_rm):  # noqa: F811
    path = bert_rm if kind == "bert" else rm_dirs["llama"]
    scorer = RewardScorer.load(path)
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    if kind == "bert":  # no chat template: plain HH transcripts
        prompts = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS]
        queries = [p + a for p, a in zip(prompts, ANSWERS)]
        pairs = scorer.score(prompts, ANSWERS)
    else:  # as OpenRLHF decodes a rollout: the templated prompt, the answer, the end-of-turn token
        tok = scorer.tokenizer
        prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        queries = [p + a.strip() + tok.eos_token for p, a in zip(prompts, ANSWERS)]
        pairs = scorer.score(chats, [a.strip() for a in ANSWERS])
    with TestClient(build_app(single_model(str(path)), ServeSettings())) as c:
        split = c.post("/get_reward", json={"query": queries, "prompts": prompts, "labels": [None] * 3}).json()
        whole = c.post("/get_reward", json={"query": queries}).json()
        other = c.post("/get_reward", json={"query": queries, "prompts": ["x"] * 3}).json()
    assert split["rewards"] == pytest.approx(pairs, abs=1e-5)
    assert scorer.score_full_texts(queries, prompts=prompts).tolist() == pytest.approx(pairs, abs=1e-5)
    assert whole["rewards"] == pytest.approx(scorer.score_full_texts(queries).tolist(), abs=1e-5)
    assert other["rewards"] == pytest.approx(whole["rewards"], abs=1e-6)
    if kind == "bert":  # without the prompts the encoder reads the text without its middle [SEP]
        assert max(abs(a - b) for a, b in zip(whole["rewards"], pairs)) > 1e-3
    with pytest.raises(ValueError, match="3 texts but 2 prompts"):
        scorer.score_full_texts(queries, prompts=prompts[:2])
    with pytest.raises(TypeError, match="prompts"):
        scorer.score_full_texts(queries, prompts="one prompt")


def test_a_judge_that_needs_the_prompt_apart_scores_split_queries():
    settings = ServeSettings()
    with TestClient(create_app(RewardService({"m": Points()}, Single("m"), settings), settings)) as c:
        ok = c.post("/get_reward", json={"query": ["p: GOOD GOOD \n", "q: BAD"], "prompts": ["p:", "q:"]})
        partial = c.post("/get_reward", json={"query": ["p: GOOD", "q: BAD"], "prompts": ["p:", "other"]})
    assert ok.status_code == 200 and ok.json()["rewards"] == [2.0, -1.0]
    assert partial.status_code == 400 and "`prompts`" in partial.json()["detail"]


def test_an_implicit_dpo_reward_serves_get_reward_with_prompts(tiny_models):
    from rewardkit.scoring import load_judge

    judge = load_judge(tiny_models["llama"], kind="dpo", options={"reference_free": True})
    prompts = [f"Question: {q}\nAnswer:" for q in QUESTIONS]
    settings = ServeSettings()
    with TestClient(create_app(RewardService({"dpo": judge}, Single("dpo"), settings), settings)) as c:
        r = c.post("/get_reward", json={"query": [p + a for p, a in zip(prompts, ANSWERS)], "prompts": prompts})
        refused = c.post("/get_reward", json={"query": [p + a for p, a in zip(prompts, ANSWERS)]})
    assert r.status_code == 200 and r.json()["rewards"] == pytest.approx(judge.score(prompts, ANSWERS), abs=1e-5)
    assert refused.status_code == 400 and "prompt and the response apart" in refused.json()["detail"]
