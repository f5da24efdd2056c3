"""The reward mean/std a training run saves, and the precision and cost of training's eval: by default the
statistics come from the last epoch's training forwards (no extra pass), `train.reward_stats=pass` measures them
in one more pass, eval runs under the loop's bf16 autocast, and judges measure none."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.metrics import reward_stats
from rewardkit.objectives.base import BaseObjective
from rewardkit.objectives.pairwise import PairwiseObjective
from rewardkit.train import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("d") / "train.jsonl", synthetic_pairs(32))


@pytest.fixture
def spy(monkeypatch):
    """Records every backbone forward (grad on = a training forward; off = eval / statistics) with whether
    autocast was on, and the rewards each training micro-batch computed."""
    calls: list[dict] = []
    rewards: list[torch.Tensor] = []
    build, compute = BaseObjective.build_model, PairwiseObjective.compute

    def build_model(self, cfg):
        model, tok = build(self, cfg)
        hf = getattr(model, "hf", None)
        base = hf.base_model if hf is not None else model
        base.register_forward_pre_hook(lambda m, args: calls.append(
            {"grad": torch.is_grad_enabled(), "autocast": torch.is_autocast_enabled("cpu")}))
        return model, tok

    def recording_compute(self, model, batch):
        out = compute(self, model, batch)
        if torch.is_grad_enabled():
            rewards.append(out.rewards.detach().float().clone())
        return out

    monkeypatch.setattr(BaseObjective, "build_model", build_model)
    monkeypatch.setattr(PairwiseObjective, "compute", recording_compute)
    return calls, rewards


def _train(model, data, out, *extra):
    cfg = load_config(TrainRunConfig, None, [f"model={model}", f"data.train={data}", "data.max_length=48",
                                             "train.progress=false", "train.lr=1e-3", "train.warmup_ratio=0",
                                             "train.batch_size=8", "train.batching=random", f"output_dir={out}",
                                             *extra])
    return train(cfg)


def _saved(out) -> tuple[float, float]:
    block = json.loads((out / "config.json").read_text())
    assert block["mean"] == block["rewardkit"]["mean"] and block["std"] == block["rewardkit"]["std"]
    return block["rewardkit"]["mean"], block["rewardkit"]["std"]


def test_default_stats_are_the_last_epochs_training_rewards_without_extra_forward(tiny_models, data, tmp_path,
                                                                                   spy):
    calls, rewards = spy
    _train(tiny_models["llama"], data, tmp_path / "rm", "train.epochs=2", "train.bf16=false")
    assert len(rewards) == 8  # 32 pairs / 8 per batch x 2 epochs
    # (c) every backbone forward is a training forward: no eval, no statistics pass
    assert len(calls) == len(rewards) and all(c["grad"] for c in calls)
    # (a) the saved statistics are those of the second epoch's forwards (chosen and rejected), not the first's
    want = reward_stats(torch.cat(rewards[4:]))
    mean, std = _saved(tmp_path / "rm")
    assert mean == pytest.approx(want["reward_mean"], abs=1e-6) and std == pytest.approx(want["reward_std"], abs=1e-6)
    first = reward_stats(torch.cat(rewards[:4]))
    assert abs(first["reward_mean"] - mean) > 1e-4  # lr 1e-3 moves the rewards between the epochs


def test_reward_stats_pass_measures_the_final_weights(tiny_models, data, tmp_path, spy):
    calls, rewards = spy
    out = tmp_path / "rm"
    _train(tiny_models["llama"], data, out, "train.reward_stats=pass", "train.bf16=false")
    eval_calls = [c for c in calls if not c["grad"]]
    assert len(rewards) == 4 and eval_calls  # (b) one more pass after the loop
    from rewardkit.scoring import load_judge

    rows = [json.loads(x) for x in data.read_text().splitlines()]
    scorer = load_judge(out, device="cpu")
    raw = torch.tensor(scorer.score([r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] +
                                    [r["rejected"] for r in rows]))
    want = reward_stats(raw)
    mean, std = _saved(out)
    assert mean == pytest.approx(want["reward_mean"], abs=1e-4) and std == pytest.approx(want["reward_std"], abs=1e-4)
    loop = reward_stats(torch.cat(rewards))
    assert abs(loop["reward_mean"] - mean) > 1e-4  # not the loop's statistics


@pytest.mark.parametrize("bf16", [True, False])
def test_eval_runs_at_the_training_precision(tiny_models, data, tmp_path, spy, bf16):
    calls, _ = spy
    res = _train(tiny_models["qwen2"], data, tmp_path / "rm", f"train.bf16={str(bf16).lower()}", "data.eval_size=8")
    eval_calls = [c for c in calls if not c["grad"]]
    assert res.final_eval["n"] == 8 and eval_calls
    # (d) eval under the loop's autocast exactly when the loop trains in bf16; training forwards likewise
    assert all(c["autocast"] is bf16 for c in calls)
    mean, std = _saved(tmp_path / "rm")
    assert mean == pytest.approx(res.final_eval["reward_mean"]) and std == pytest.approx(res.final_eval["reward_std"])


def test_judges_measure_no_statistics(tiny_models, data, tmp_path, spy):
    calls, _ = spy
    _train(tiny_models["bert"], data, tmp_path / "rm", "loss=pairrm", "train.reward_stats=pass", "train.bf16=false",
           "train.max_steps=2")
    assert calls and all(c["grad"] for c in calls)  # a pairwise ranker never normalises: no pass even when asked
    assert _saved(tmp_path / "rm") == (0.0, 1.0)
