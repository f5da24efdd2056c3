"""End to end through the CLI on tiny random backbones: train -> resume -> eval -> score."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_pairs, write_jsonl
from rewardkit.cli import main
from rewardkit.scoring import RewardScorer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return write_jsonl(d / "train.jsonl", synthetic_pairs(160)), write_jsonl(d / "eval.jsonl", synthetic_pairs(40, seed=1))


def _train(model, data, out, *extra, held_out=True):
    train, held = data
    argv = ["train", f"model={model}", f"data.train={train}", *([f"data.eval={held}"] * held_out), "data.max_length=64",
            "train.batch_size=8", "train.lr=1e-3", "train.log_every=5", "train.progress=false", "seed=0",
            "train.bf16=false",
            f"output_dir={out}", *extra]
    assert main(argv) == 0


def _straight_and_resumed(model, data, tmp_path, step: int, *opts):
    """Two runs without an eval set: `full` straight through, saving every `step` steps, and `resumed` from a copy
    of full's step-`step` checkpoint; returns both folders."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _train(model, data, full, *opts, f"train.save_every={step}", held_out=False)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / f"step-{step}", resumed / "checkpoints" / f"step-{step}")
    _train(model, data, resumed, *opts, "train.resume=auto", held_out=False)
    return full, resumed


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_train_eval_score(tiny_models, data, tmp_path, capsys, kind):
    out = tmp_path / "rm"
    _train(tiny_models[kind], data, out, "train.epochs=2")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "metrics.jsonl", "train_config.yaml"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    for key in ("loss", "accuracy", "margin_mean", "reward_mean", "reward_std", "pairs_per_s", "tokens_per_s", "lr"):
        assert key in train_rows[0]
    assert summary["accuracy"] >= 0.9

    assert main(["eval", str(out), str(data[1]), "--json", "--output", str(tmp_path / "pairs.jsonl")]) == 0
    stats = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "n", "ties", "margin_mean", "chosen_mean", "rejected_mean"):
        assert key in stats
    assert stats["n"] == 40 and stats["accuracy"] == pytest.approx(summary["accuracy"])
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == 40

    inp = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "Tell me about tea.", "response": "Happy to help: tea are interesting, here is a clear answer about tea.", "id": 1},
        {"prompt": "Tell me about tea.", "response": "No. Go away.", "id": 2},
        {"messages": [{"role": "user", "content": "Tell me about rain."}, {"role": "assistant", "content": "No. Go away."}]},
    ])
    assert main(["score", str(out), "--input", str(inp), "--output", str(tmp_path / "scored.jsonl")]) == 0
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [r.get("id") for r in scored] == [1, 2, None]  # rows come back whole, in order
    assert scored[0]["score"] > scored[1]["score"]
    direct = RewardScorer.load(out).score(["Tell me about tea."], ["No. Go away."])
    assert direct[0] == pytest.approx(scored[1]["score"], abs=1e-4)


def test_resume_is_exact(tiny_models, data, tmp_path):
    """4 steps straight == 2 steps, checkpoint, resume, 2 more (weights, optimiser, schedule, data order)."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _train(tiny_models["llama"], data, full, "train.max_steps=4", "train.save_every=2", "train.batch_size=32")
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    _train(tiny_models["llama"], data, resumed, "train.max_steps=4", "train.batch_size=32", "train.resume=auto")
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_resume_without_an_eval_set_saves_the_same_mean_std(tiny_models, data, tmp_path):
    """Without an eval set the saved mean/std come from the loop's own rewards over the last epoch: a resume
    (here from step 3 of 7, across an epoch boundary at step 5) must keep the rewards its checkpoint recorded."""
    full, resumed = _straight_and_resumed(tiny_models["llama"], data, tmp_path, 3,
                                          "train.max_steps=7", "train.batch_size=32")
    a, b = (json.loads((d / "config.json").read_text())["rewardkit"] for d in (full, resumed))
    assert a["mean"] == pytest.approx(b["mean"], abs=1e-6) and a["std"] == pytest.approx(b["std"], abs=1e-6)
    assert a["std"] > 0


def test_bad_row_is_a_clear_error_and_writes_nothing(tiny_models, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    out = tmp_path / "rm"
    code = main(["train", f"model={tiny_models['llama']}", f"data.train={bad}", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.jsonl:line 2" in err and "`rejected`" in err and "Traceback" not in err
    assert not (out / "config.json").exists()


def test_unknown_key_suggests(capsys):
    assert main(["train", "model=x", "train.bacth_size=4"]) == 2
    assert "did you mean `train.batch_size`" in capsys.readouterr().err


def test_console_script_help():
    exe = shutil.which("rewardkit") or str(__import__("pathlib").Path(sys.executable).parent / "rewardkit")
    for args in ([], ["train"], ["eval"], ["score"]):
        res = subprocess.run([exe, *args, "--help"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "usage: rewardkit" in res.stdout
    res = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert "train.batch_size" in res.stdout and "data.max_length" in res.stdout


def test_resume_on_another_device_kind_keeps_the_checkpoints_pack_layout(tiny_models, data, tmp_path, monkeypatch,
                                                                           caplog):
    """`train.pack_layout=auto` resolves per device (batch rows on CUDA, flat on CPU). A run checkpointed under one
    and resumed where auto picks the other keeps the checkpoint's layout, so batch order and weights equal the
    uninterrupted run's. The resumed half is made to see "CUDA" by the resolver, the only device-dependent step."""
    import rewardkit.train.plan as plan

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _train(tiny_models["llama"], data, full, "train.max_steps=4", "train.save_every=2")
    state = json.loads((full / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["pack_layout"] == "flat"  # what auto resolved to on this CPU, recorded
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    real = plan.resolve_pack_layout
    monkeypatch.setattr(plan, "resolve_pack_layout", lambda layout, device, impl: real(layout, "cuda", impl))
    with caplog.at_level("WARNING", logger="rewardkit.train"):
        _train(tiny_models["llama"], data, resumed, "train.max_steps=4", "train.resume=auto")
    assert "pack layout: flat, as the resumed checkpoint was trained (auto would pick batch_rows here)" in caplog.text
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    # a fresh run in the "CUDA" setting does pick batch rows: the resolver patch is what the resume overrode
    with caplog.at_level("INFO", logger="rewardkit.train"):
        caplog.clear()
        _train(tiny_models["llama"], data, tmp_path / "fresh", "train.max_steps=1")
    assert "pack layout: batch_rows" in caplog.text


def test_a_resume_between_two_log_rows_logs_the_rows_of_the_uninterrupted_run(tiny_models, data, tmp_path):
    """Rows average the steps since the previous row; a resume from step 4 (rows every 5) started that window
    empty, so its step-5 row covered step 5 only (the loss differed by 2x in the audit)."""
    full, resumed = _straight_and_resumed(tiny_models["llama"], data, tmp_path, 4,
                                          "train.max_steps=10", "train.batch_size=16")

    def rows(d):
        out = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in out if r.get("split") == "train"}

    a, b = rows(full), rows(resumed)
    assert 5 in b and 10 in b
    for step in (5, 10):
        for key in ("loss", "accuracy", "margin_mean", "reward_mean", "reward_std", "lr", "skipped_steps"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-6), (step, key)


def test_a_resume_where_bf16_auto_picks_otherwise_is_refused(tiny_models, data, tmp_path, monkeypatch, capsys):
    import rewardkit.train.loop as loop

    train, _ = data
    argv = ["train", f"model={tiny_models['llama']}", f"data.train={train}", "data.max_length=64",
            "train.batch_size=32", "train.progress=false", "train.max_steps=4", "train.save_every=2",
            f"output_dir={tmp_path / 'run'}"]
    monkeypatch.setattr(loop, "bf16_native", lambda *a, **k: False)  # the first machine: fp32
    assert main(argv) == 0
    assert (tmp_path / "run" / "checkpoints" / "step-2").is_dir()
    monkeypatch.setattr(loop, "bf16_native", lambda *a, **k: True)  # the second: bf16 native
    capsys.readouterr()
    assert main([*argv, "train.resume=auto"]) == 2
    assert "train.bf16=auto chose fp32 where the run started and picks bf16 here" in capsys.readouterr().err


def test_a_resume_on_edited_data_is_refused(tiny_models, tmp_path, capsys):
    """The audit cut the file from 48 to 30 rows between stop and resume: the run went on with the new step
    count and schedule without a word."""
    train = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(48))
    run = tmp_path / "run"
    argv = ["train", f"model={tiny_models['llama']}", f"data.train={train}", "data.max_length=64", "train.bf16=false",
            "train.batch_size=8", "train.progress=false", "train.save_every=2", "train.max_steps=4", f"output_dir={run}"]
    assert main(argv) == 0
    write_jsonl(train, synthetic_pairs(30))
    capsys.readouterr()
    assert main([*argv, "train.resume=auto"]) == 2
    assert "the data changed since it was written (training items 48 -> 30" in capsys.readouterr().err
    write_jsonl(train, synthetic_pairs(48))
    assert main([*argv, "train.resume=auto"]) == 0  # the same file again: resumes
