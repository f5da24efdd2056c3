"""Every objective family end to end on a tiny Llama: a small learnable task, the loss falls and the task
metric improves from the untrained model to the trained one; saved models reload and score the same."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import ConfigError, TrainRunConfig, load_config
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.objectives import make_objective
from rewardkit.scoring import RewardScorer
from rewardkit.train import train

TOPICS = ["rain", "cats", "bread", "math", "music", "trees", "boats", "stars", "tea", "chess"]
RUDE = ["No. Go away.", "I will not answer that, stop asking.", "Whatever, figure it out yourself."]


def _answers(rng: random.Random, topic: str) -> list[str]:
    """Three responses from worst to best."""
    return [rng.choice(RUDE), f"{topic}? Maybe.", f"Happy to help: {topic} are interesting, here is an answer."]


def _rows(kind: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = rng.choice(TOPICS)
        ans = _answers(rng, t)
        prompt = f"Tell me about {t}."
        if kind == "rank":
            order = rng.sample(range(3), 3)  # completions shuffled; rank 1 = best
            row = {"prompt": prompt, "responses": [ans[k] for k in order], "ranks": [3 - k for k in order]}
            if i % 4 == 0:  # some rows give scores instead, one tie that must be skipped
                row = {"prompt": prompt, "responses": [ans[0], ans[0] + " ", ans[2]], "scores": [0.0, 0.0, 1.0]}
            rows.append(row)
        elif kind == "binary":
            y = i % 2
            rows.append({"prompt": prompt, "response": ans[2] if y else rng.choice(ans[:2]), "label": bool(y)})
        elif kind == "regression":
            k = rng.randrange(3)
            rows.append({"prompt": prompt, "response": ans[k], "score": [1.0, 4.0, 7.0][k]})
        elif kind == "attributes":
            k = rng.randrange(3)
            row = {"prompt": prompt, "response": ans[k], "helpful": [0.0, 0.5, 1.0][k],
                   "verbosity": [0.4, 0.0, 1.0][k]}
            if i % 3 == 0:
                row["helpful"] = None if i % 2 else float("nan")  # unlabelled: masked
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("objective-data")
    ratings = ["significantly better", "better", "slightly better", "negligibly better / unsure"]
    pairs = [{**row, "rating": ratings[i % 4]} for i, row in enumerate(synthetic_pairs(96))]
    out = {"pairs": write_jsonl(d / "pairs.jsonl", pairs)}
    for kind, n in (("rank", 64), ("binary", 96), ("regression", 96), ("attributes", 96)):
        out[kind] = d / f"{kind}.jsonl"
        out[kind].write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in _rows(kind, n)))
    return out


def _cfg(model, data, out, loss, *extra):
    return load_config(TrainRunConfig, None, [
        f"model={model}", f"data.train={data}", "data.max_length=32", "data.eval_size=24", "train.progress=false",
        "train.lr=2e-3", "train.warmup_ratio=0", "train.batch_size=8", "train.log_every=1", "train.max_steps=10",
        f"train.loss={loss}", f"output_dir={out}", "seed=0", *extra])


def _before(cfg) -> dict[str, float]:
    """Eval metrics of the untrained model, through the same objective interface train() uses."""
    obj = make_objective(cfg)
    model, tok = obj.build_model(cfg)
    data = obj.load_data(cfg, SequenceEncoder(tok, cfg.data.max_length, model.is_encoder))
    obj.prepare(model, data.train, pad_id=tok.pad_token_id, batch_size=32, device="cpu")
    return obj.evaluate(model, data.eval, pad_id=tok.pad_token_id, batch_size=32, device="cpu")


def _train_rows(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


CASES = {  # loss -> (data, extra overrides, metric, better: "up"/"down", target)
    "bt": ("pairs", ["data.margin_table=small"], "accuracy", "up", 0.9),
    "internlm2": ("pairs", ["loss.gamma=2", "loss.penalty=log_barrier"], "accuracy", "up", 0.9),
    "logexp": ("pairs", ["data.margin_map={}", "train.center_rewards_coef=0.01"], "accuracy", "up", 0.9),
    "token": ("pairs", [], "accuracy", "up", 0.9),
    "kwise": ("rank", [], "accuracy", "up", 0.9),
    "binary": ("binary", [], "auc", "up", 0.9),
    "regression": ("regression", ["loss.normalize_labels=true", "loss.huber_delta=1.0"], "mse", "down", 0.3),
}


@pytest.mark.parametrize("loss", list(CASES))
def test_family_learns(tiny_models, files, tmp_path, loss):
    data, extra, metric, better, target = CASES[loss]
    cfg = _cfg(tiny_models["llama"], files[data], tmp_path / loss, loss, *extra)
    before = _before(cfg)
    res = train(cfg)
    after = res.final_eval
    rows = _train_rows(tmp_path / loss)
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])  # the loss falls
    assert after["loss"] < before["loss"]
    if better == "up":
        assert after[metric] > before[metric] and after[metric] >= target, (before, after)
    else:
        assert after[metric] < before[metric] and after[metric] <= target, (before, after)
    saved = json.loads((tmp_path / loss / "config.json").read_text())["rewardkit"]
    assert saved["objective"]["loss"] == loss


def test_multi_objective_two_stages(tiny_models, files, tmp_path):
    stage1 = _cfg(tiny_models["llama"], files["attributes"], tmp_path / "s1", "attributes",
                  "data.columns.attributes=[helpful, verbosity]")
    before = _before(stage1)
    after = train(stage1).final_eval
    assert after["mse"] < before["mse"] and after["mse"] < 0.1, (before, after)
    assert _train_rows(tmp_path / "s1")[-1]["loss"] < _train_rows(tmp_path / "s1")[0]["loss"]

    stage2 = _cfg(tmp_path / "s1", files["pairs"], tmp_path / "s2", "gating", "train.lr=1e-2",
                  "loss.verbosity_attribute=verbosity", "loss.gate_hidden=32")
    before2 = _before(stage2)
    res = train(stage2)
    assert res.final_eval["loss"] < before2["loss"] and res.final_eval["accuracy"] >= 0.9

    # only the gate moved: backbone and attribute heads are bit-identical to stage 1
    from safetensors.torch import load_file
    a, b = load_file(tmp_path / "s1" / "model.safetensors"), load_file(tmp_path / "s2" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (load_file(tmp_path / s / "multi_objective.safetensors") for s in ("s1", "s2"))
    assert torch.equal(ha["attr_head.weight"], hb["attr_head.weight"]) and "gate.log_scale" in hb

    scorer = RewardScorer.load(tmp_path / "s2")
    prompts, bad = ["Tell me about tea."] * 2, "No. Go away."
    good = "Happy to help: tea are interesting, here is an answer."
    details = scorer.score_details(prompts, [good, bad]).rows()
    assert set(details[0]["attributes"]) == set(details[0]["gate"]) == {"helpful", "verbosity"}
    assert [d["score"] for d in details] == pytest.approx(scorer.score(prompts, [good, bad]), abs=1e-5)
    assert details[0]["score"] > details[1]["score"]
    lam = json.loads((tmp_path / "s2" / "config.json").read_text())["rewardkit"]["objective"]["verbosity_lambdas"]
    assert lam["verbosity"] == 0.0 and 0.0 <= lam["helpful"] <= 1.0


def test_token_values_readout_matches_forward(tiny_models):
    from rewardkit.data.collators import pad_sequences
    from rewardkit.models.reward_model import RewardModel

    model, tok = RewardModel.from_pretrained(str(tiny_models["qwen2"]))
    enc = SequenceEncoder(tok, 32, False)
    seqs = [enc.encode("Hi there", "a longer answer than the other"), enc.encode("Hi", "no")]
    with torch.no_grad():
        for side in ("right", "left"):
            batch = pad_sequences(seqs, tok.pad_token_id, side)
            values = model.token_values(batch)
            last = batch.attention_mask.shape[1] - 1 - batch.attention_mask.flip(1).argmax(1)  # last real index
            torch.testing.assert_close(values[torch.arange(2), last], model(batch))
            assert (values[batch.attention_mask == 0] == 0).all()


@pytest.mark.parametrize("overrides, match", [
    (["train.loss=bt", "loss.gamma=3"], r"loss.gamma is for internlm2"),
    (["train.loss=binary", "train.center_rewards_coef=0.1"], r"train.center_rewards_coef"),
    (["train.loss=kwise", "data.margin_table=small"], r"data.margin_table"),
    (["train.loss=regression", "loss.gate_hidden=8"], r"loss.gate_hidden is for gating"),
])
def test_options_the_loss_does_not_use_are_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_objective(load_config(TrainRunConfig, None, overrides))


def test_token_loss_refuses_encoders(tiny_models, files, tmp_path):
    with pytest.raises(ValueError, match="causal"):
        train(_cfg(tiny_models["bert"], files["pairs"], tmp_path / "t", "token"))


def test_token_eval_is_one_forward_per_pair_and_agrees_with_the_scorer(tiny_models, files, tmp_path):
    """loss=token's eval reads rewards and loss from one padded pass; the rewards are the inference scores."""
    from rewardkit.metrics import pairwise_stats
    from rewardkit.scoring import pair_rewards

    cfg = _cfg(tiny_models["qwen2"], files["pairs"], tmp_path / "t", "token")
    obj = make_objective(cfg)
    model, tok = obj.build_model(cfg)
    data = obj.load_data(cfg, SequenceEncoder(tok, cfg.data.max_length, model.is_encoder))
    calls = []
    model.hf.get_input_embeddings().register_forward_hook(lambda *a: calls.append(1))  # once per backbone pass
    got = obj.evaluate(model, data.eval, pad_id=tok.pad_token_id, batch_size=8, device="cpu")
    assert len(calls) == -(-len(data.eval) // 8)  # one forward per batch of pairs, none for a second pass
    want = pairwise_stats(*pair_rewards(model, data.eval, pad_id=tok.pad_token_id))
    assert got["accuracy"] == want["accuracy"] and got["loss"] > 0
    assert abs(got["margin_mean"] - want["margin_mean"]) < 1e-5
