"""Which precision the scoring commands run in: `scoring.bf16` null = bf16 where native, said in the output."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import synthetic_pairs, write_jsonl
from rewardkit import precision
from rewardkit.cli import main
from rewardkit.config import EvalRunConfig, load_config
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring import judge_from_config


@pytest.fixture()
def rm_dir(tiny_models, tmp_path):
    """A reward model that says it was trained in bf16."""
    model, tok = RewardModel.from_pretrained(str(tiny_models["bert"]))
    model.precision = "bf16"
    model.save_pretrained(tmp_path / "rm", tok, max_length=64)
    return tmp_path / "rm"


@pytest.mark.parametrize("flags,native", [("flags : fpu avx2 avx512f\n", False),
                                          ("flags : fpu avx512f avx512_bf16\n", True),
                                          ("flags : fpu amx_bf16 amx_tile\n", True)])
def test_cpu_bf16_native_reads_the_cpu_flags(tmp_path, monkeypatch, flags, native):
    (tmp_path / "cpuinfo").write_text(flags)
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "cpuinfo")
    assert precision.bf16_native("cpu") is native
    assert precision.resolve_bf16(None, "cpu", trained="bf16") is native
    assert precision.resolve_bf16(None, "cpu", trained="fp32") is False  # an fp32-trained model stays fp32
    assert precision.resolve_bf16(None, "cpu") is False  # and so does one that does not say
    assert precision.resolve_bf16(False, "cpu") is False and precision.resolve_bf16(True, "cpu") is True


def test_unreadable_cpu_flags_mean_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    assert precision.bf16_native("cpu") is False


@pytest.mark.parametrize("value,native,want", [(None, True, True), (None, False, False), ("false", True, False),
                                               ("true", False, True)])
def test_scoring_bf16_null_follows_the_hardware(rm_dir, tmp_path, monkeypatch, value, native, want):
    monkeypatch.setattr(precision, "bf16_native", lambda device=None: native)
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(4))
    overrides = [f"model={rm_dir}", f"data={data}"] + ([f"scoring.bf16={value}"] if value else [])
    judge = judge_from_config(load_config(EvalRunConfig, None, overrides))
    assert judge.bf16 is want


def test_training_saves_its_precision_and_scoring_follows_it(tiny_models, tmp_path, monkeypatch):
    from rewardkit.config import TrainRunConfig
    from rewardkit.scoring import load_judge
    from rewardkit.train import train

    monkeypatch.setattr(precision, "bf16_native", lambda device=None: True)  # bf16 would be native
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(8))
    train(load_config(TrainRunConfig, None, [f"model={tiny_models['bert']}", f"data.train={data}", "data.max_length=32",
                                             "train.max_steps=1", "train.progress=false", "train.bf16=false",
                                             f"output_dir={tmp_path / 'rm'}"]))
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["rewardkit"]["precision"] == "fp32"
    cfg = load_config(EvalRunConfig, None, [f"model={tmp_path / 'rm'}", f"data={data}"])
    assert judge_from_config(cfg).bf16 is False  # trained in fp32: scored in fp32 even where bf16 is native
    assert load_judge(tmp_path / "rm").bf16 is False  # the library's own default


def test_eval_and_rank_say_which_precision_they_used(rm_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "bf16_native", lambda device=None: False)
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(6))
    assert main(["eval", str(rm_dir), str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"
    assert main(["eval", str(rm_dir), str(data), "--json", "scoring.bf16=true"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["precision"] == "bf16" and 0.0 <= stats["accuracy"] <= 1.0
    rows = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "hi", "responses": ["a", "bb", "ccc"]}])
    assert main(["rank", str(rm_dir), "--input", str(rows), "--output", str(tmp_path / "out.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["precision"] == "fp32"


def test_bf16_scores_are_close_to_fp32(rm_dir):
    """The trade the default makes where bf16 is native: scores move by bf16's rounding, not more."""
    from rewardkit.scoring import RewardScorer

    prompts, responses = ["Tell me about tea."] * 4, ["Tea is a drink.", "No.", "Green or black tea.", "go away"]
    fp32 = torch.tensor(RewardScorer.load(rm_dir, bf16=False).score(prompts, responses))
    bf16 = torch.tensor(RewardScorer.load(rm_dir, bf16=True).score(prompts, responses))
    assert not torch.equal(fp32, bf16)  # it did run in bf16
    assert (fp32 - bf16).abs().max() <= 0.05 * fp32.abs().max() + 1e-3
