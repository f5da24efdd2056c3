"""LoRA end to end on tiny random backbones: train (the loss falls, the head learns) -> eval / score / merge
through the CLI; exact resume; multi-objective stages on an adapter."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_pairs, write_jsonl
from rewardkit.cli import main
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.models.lora import ADAPTER_WEIGHTS
from rewardkit.models.reward_model import RewardModel
from rewardkit.objectives import make_objective
from rewardkit.scoring import RewardScorer
from rewardkit.train import train

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora-data")
    return write_jsonl(d / "train.jsonl", synthetic_pairs(96)), write_jsonl(d / "eval.jsonl", synthetic_pairs(24, seed=1))


def _cfg(model, train_data, out, *extra):
    return load_config(TrainRunConfig, None, [
        f"model={model}", f"data.train={train_data}", "data.max_length=48", "train.batch_size=8",
        "train.lr=5e-3", "train.warmup_ratio=0", "train.log_every=2", "train.progress=false", "train.bf16=false",
        "seed=0", "model.lora.r=8", f"output_dir={out}", *extra])


def _train_rows(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def test_lora_run_learns_and_its_folder_serves_every_command(tiny_models, data, tmp_path, capsys):
    out = tmp_path / "rm"
    res = train(_cfg(tiny_models["llama"], data[0], out, f"data.eval={data[1]}", "train.epochs=2"))
    rows = _train_rows(out)
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])  # the loss falls
    assert res.final_eval["accuracy"] >= 0.9, res.final_eval
    block = json.loads((out / "config.json").read_text())["rewardkit"]
    assert block["lora"]["r"] == 8 and not (out / "model.safetensors").exists()

    # the value head learnt (it starts from the seeded init) and the adapter did too (lora_B starts at 0)
    init, _ = RewardModel.from_pretrained(str(tiny_models["llama"]), seed=0)
    saved = load_file(out / ADAPTER_WEIGHTS)
    assert (saved["base_model.model.score.weight"] - init.head.linear.weight.detach()).abs().max() > 1e-3
    assert max(float(v.abs().max()) for k, v in saved.items() if "lora_B" in k) > 0

    capsys.readouterr()
    assert main(["eval", str(out), str(data[1]), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n"] == 24 and stats["accuracy"] == pytest.approx(res.final_eval["accuracy"])
    inp = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "Tell me about tea.", "response": "Happy to help: tea are interesting, here is a clear answer about tea."},
        {"prompt": "Tell me about tea.", "response": "No. Go away."}])
    assert main(["score", str(out), "--input", str(inp), "--output", str(tmp_path / "scored.jsonl")]) == 0
    scored = [json.loads(x)["score"] for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert scored[0] > scored[1]

    assert main(["merge", str(out), str(tmp_path / "merged")]) == 0
    merged = RewardScorer.load(tmp_path / "merged")
    torch.testing.assert_close(merged.score_texts(["Tell me about tea."] * 2, ["No. Go away.", "Tea."]),
                               RewardScorer.load(out).score_texts(["Tell me about tea."] * 2, ["No. Go away.", "Tea."]),
                               atol=1e-5, rtol=0)


def test_lora_resume_is_exact(tiny_models, data, tmp_path):
    """4 steps straight == 2 steps, checkpoint, resume, 2 more: adapter and head bit-for-bit (to 1e-6)."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(_cfg(tiny_models["qwen2"], data[0], full, "train.max_steps=4", "train.save_every=2"))
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    train(_cfg(tiny_models["qwen2"], data[0], resumed, "train.max_steps=4", "train.resume=auto"))
    a, b = load_file(full / ADAPTER_WEIGHTS), load_file(resumed / ADAPTER_WEIGHTS)
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ra, rb = _train_rows(full)[-1], _train_rows(resumed)[-1]
    assert ra["step"] == rb["step"] == 4 and ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)


def _attr_rows(n: int) -> list[dict]:
    rows = []
    for i, r in enumerate(synthetic_pairs(n)):
        good = i % 2 == 0
        rows.append({"prompt": r["prompt"], "response": r["chosen"] if good else r["rejected"],
                     "helpful": 1.0 if good else 0.0, "verbosity": 0.8 if good else 0.2})
    return rows


def _trainable(cfg) -> set[str]:
    model, _ = make_objective(cfg).build_model(cfg)
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_multi_objective_stages_with_lora(tiny_models, data, tmp_path):
    attrs = write_jsonl(tmp_path / "attrs.jsonl", _attr_rows(64))
    extra = ("loss=attributes", "data.columns.attributes=[helpful, verbosity]", "train.max_steps=6")
    stage1 = _cfg(tiny_models["llama"], attrs, tmp_path / "s1", *extra)
    names = _trainable(stage1)  # attribute head + adapter; not the base, not the unused scalar head
    assert {"head.attr_head.weight", "head.attr_head.bias"} <= names
    assert all(n.startswith("head.attr_head.") or ".lora_" in n for n in names) and any(".lora_" in n for n in names)
    frozen = _trainable(_cfg(tiny_models["llama"], attrs, tmp_path / "x", *extra, "loss.freeze_backbone=true"))
    assert frozen == {"head.attr_head.weight", "head.attr_head.bias"}

    train(stage1)
    s1 = tmp_path / "s1"
    assert (s1 / "multi_objective.safetensors").exists() and (s1 / ADAPTER_WEIGHTS).exists()
    rows = _train_rows(s1)
    assert rows[-1]["loss"] < rows[0]["loss"]

    stage2 = _cfg(s1, data[0], tmp_path / "s2", "loss=gating", "model.lora.r=0", "train.max_steps=4",
                  "train.lr=1e-2", "loss.gate_hidden=16")
    assert all(n.startswith("head.gate.") for n in _trainable(stage2))
    train(stage2)
    s2 = tmp_path / "s2"
    a, b = load_file(s1 / ADAPTER_WEIGHTS), load_file(s2 / ADAPTER_WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # only the gate moved
    ha, hb = (load_file(s / "multi_objective.safetensors") for s in (s1, s2))
    assert torch.equal(ha["attr_head.weight"], hb["attr_head.weight"]) and "gate.log_scale" in hb
    block = json.loads((s2 / "config.json").read_text())["rewardkit"]
    assert block["kind"] == "multi_objective" and block["lora"]["base"] == str(tiny_models["llama"].resolve())
    details = RewardScorer.load(s2).score_details(["Tell me about tea."], ["No. Go away."]).rows()
    assert set(details[0]["gate"]) == {"helpful", "verbosity"}
