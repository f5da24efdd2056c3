"""Training under faults, in-process through the CLI on a tiny random llama: non-finite steps (skipped, counted,
too many in a row: exit 3, no model), stop signals (checkpoint and exit 0; a second one stops at once; a
failed save: 143), full disks (exit 2 naming the file, nothing damaged), unwritable or failing output
folders (refused before training, nothing left behind), resume checks and determinism. Kills of a real
training process are in test_train_resume_kill.py."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_pairs, write_jsonl
from rewardkit.cli import main
from rewardkit.objectives import ObjectiveModule
from rewardkit.config import ConfigError
from rewardkit.train import checkpoints, faults, loop, tracking

TIMING = ("pairs_per_s", "tokens_per_s")  # wall-clock fields of a train row


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("faults") / "pairs.jsonl", synthetic_pairs(48))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the 2-core test machine is shared (oversubscribed OpenMP
    threads made single runs 5x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run(tiny_models, pairs, capsys):
    """main(["train", ...]) on the tiny llama: (exit code, stdout's last line, stderr)."""
    def go(out: Path, *extra: str) -> tuple[int, str, str]:
        code = main(["train", f"model={tiny_models['llama']}", f"data.train={pairs}", "data.max_length=48",
                     "train.batch_size=4", "train.lr=1e-3", "train.log_every=1", "train.progress=false",
                     "train.bf16=false", "seed=0", f"output_dir={out}", *extra])
        cap = capsys.readouterr()
        lines = cap.out.strip().splitlines()
        return code, lines[-1] if lines else "", cap.err
    return go


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _one_line_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("rewardkit train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def _complete(ckpt: Path) -> bool:
    return checkpoints._problem(ckpt) is None


class _InfGrad(torch.autograd.Function):
    """Identity forward (a finite loss), infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _faulty_module(monkeypatch, bad_calls, mode: str, snapshots: list | None = None) -> None:
    """Replace the module the loop wraps: forward call i (1-based) in `bad_calls` gets a NaN loss (`loss`) or an
    infinite gradient (`grad`); `snapshots` receives the head's weight before every forward."""
    calls = [0]

    class Faulty(ObjectiveModule):
        def forward(self, batch):
            calls[0] += 1
            if snapshots is not None:
                snapshots.append(self.model.head.linear.weight.detach().clone())
            res = super().forward(batch)
            if calls[0] in bad_calls:
                loss = res.loss * float("nan") if mode == "loss" else _InfGrad.apply(res.loss)
                res = dataclasses.replace(res, loss=loss)
            return res

    monkeypatch.setattr(loop, "ObjectiveModule", Faulty)


# --------------------------------------------------------------------------- non-finite steps

@pytest.mark.parametrize("mode,extra", [("loss", ()), ("grad", ("train.max_grad_norm=0",)),
                                        ("loss", ("train.grad_accum=2",))], ids=["loss", "grad-noclip", "loss-accum"])
def test_a_non_finite_step_is_skipped_and_counted(run, tmp_path, monkeypatch, caplog, mode, extra):
    ga = 2 if "train.grad_accum=2" in extra else 1
    snaps: list[torch.Tensor] = []
    # step 3's first micro-batch goes bad: with accumulation the whole step is skipped
    _faulty_module(monkeypatch, {2 * ga + 1}, mode, snaps)
    out = tmp_path / "rm"
    code, summary, err = run(out, "train.max_steps=5", *extra)
    assert code == 0, err[-2000:]
    before = {s: snaps[(s - 1) * ga] for s in range(1, 6)}  # weights before step s's first forward
    assert not torch.equal(before[2], before[3])  # a good step moves the weights
    assert torch.equal(before[3], before[4])  # the bad one did not
    assert not torch.equal(before[4], before[5])  # and training goes on
    rows = [r for r in _rows(out) if r["split"] == "train"]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 0, 0]
    assert "loss" not in rows[2] and all(math.isfinite(r["loss"]) for r in rows if r["step"] != 3)
    assert "not finite, optimiser step skipped (1 in a row)" in caplog.text
    cfg = json.loads((out / "config.json").read_text())  # strict JSON, finite normalisation
    assert math.isfinite(cfg["mean"]) and math.isfinite(cfg["std"])
    assert json.loads(summary)["steps"] == 5


def test_runaway_lr_stops_with_exit_3_and_saves_no_model(run, tmp_path):
    """Issue 14: lr=1e10 used to exit 0 with NaN weights and `"loss": NaN` in the summary."""
    out = tmp_path / "rm"
    code, summary, err = run(out, "train.lr=1e10", "train.max_bad_steps=3", "train.save_every=1",
                             "train.max_steps=40", "train.warmup_ratio=0")
    line = _one_line_error(err)
    assert code == 3 and summary == "", (code, summary)
    assert "not finite for 3 optimiser steps in a row (train.max_bad_steps" in line and "no model saved" in line
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    text = (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON rows, kept: they show why it stopped
    rows = _rows(out)
    assert rows[-1]["skipped_steps"] >= 1
    kept = sorted((out / "checkpoints").glob("step-*"), key=checkpoints._step_of)
    assert kept and f"the last good checkpoint is {kept[-1]};" in line
    for ckpt in kept:  # saved after good steps only: complete, finite weights
        assert _complete(ckpt)
        assert all(torch.isfinite(w).all() for w in load_file(ckpt / "model.safetensors").values())


def test_non_finite_final_rewards_save_no_model(run, tmp_path, monkeypatch):
    make = loop.make_objective

    def nan_stats(cfg):
        obj = make(cfg)
        evaluate = obj.evaluate
        obj.evaluate = lambda *a, **k: {**evaluate(*a, **k), "reward_mean": float("nan")}
        return obj

    monkeypatch.setattr(loop, "make_objective", nan_stats)
    out = tmp_path / "rm"
    code, _, err = run(out, "train.max_steps=1", "train.reward_stats=pass")  # the statistics from evaluate()
    assert code == 3 and "rewards are not finite" in _one_line_error(err)
    assert not (out / "config.json").exists()


# --------------------------------------------------------------------------- signals

@pytest.fixture
def sigint_default():
    """SIGINT as in a terminal (a test run started in the background has it ignored, and training leaves an
    ignored signal ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _signal_at(monkeypatch, step: int, *signums: int) -> None:
    """Send `signums` to this process right after the train row of `step` is written."""
    write_row = loop.write_row

    def hook(row, **kw):
        write_row(row, **kw)
        if row["split"] == "train" and row["step"] == step:
            for s in signums:
                os.kill(os.getpid(), s)

    monkeypatch.setattr(loop, "write_row", hook)


def test_sigint_saves_a_checkpoint_exits_0_and_resumes(run, tmp_path, monkeypatch, sigint_default):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _signal_at(monkeypatch, 2, signal.SIGINT)
    out = tmp_path / "rm"
    code, summary, err = run(out, "train.max_steps=4")
    assert code == 0, err[-2000:]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored
    s = json.loads(summary)
    assert s["stopped_by"] == "SIGINT" and s["steps"] == 2 and s["checkpoint"] == str(out / "checkpoints" / "step-2")
    assert _complete(out / "checkpoints" / "step-2") and not (out / "model.safetensors").exists()
    monkeypatch.setattr(loop, "write_row", tracking.write_row)  # no more signals
    code, summary, err = run(out, "train.max_steps=4", "train.resume=auto", "train.log_every=2")  # logging may differ
    assert code == 0, err[-2000:]
    assert json.loads(summary)["steps"] == 4 and (out / "model.safetensors").exists()
    assert [r["step"] for r in _rows(out) if r["split"] == "train"] == [1, 2, 4]  # each step once


def test_second_sigint_stops_at_once(run, tmp_path, monkeypatch, sigint_default):
    _signal_at(monkeypatch, 2, signal.SIGINT, signal.SIGINT)
    out = tmp_path / "rm"
    code, _, err = run(out, "train.max_steps=4")
    assert code == 130 and "stopped at once by a second SIGINT" in _one_line_error(err)
    assert not out.exists()  # no checkpoint was made: a failed fresh run leaves nothing


def test_sigterm_whose_save_fails_exits_143(run, tmp_path, monkeypatch):
    _signal_at(monkeypatch, 2, signal.SIGTERM)

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "rm"
    code, _, err = run(out, "train.max_steps=4")
    line = _one_line_error(err)
    assert code == 143 and "SIGTERM at step 2 and the checkpoint could not be saved" in line
    assert "optimizer.bin: [Errno 28] No space left on device" in line
    assert not out.exists()


# --------------------------------------------------------------------------- disks and output folders

def test_full_disk_during_a_checkpoint_keeps_the_previous_one(run, tmp_path, monkeypatch):
    from accelerate.utils import other
    from safetensors import SafetensorError

    save = other.safe_save_file

    def full_at_step_4(tensors, filename, *a, **k):  # safetensors reports a full disk as its own error
        if ".step-4.tmp" in str(filename):
            Path(filename).write_bytes(b"\0" * 100)
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        return save(tensors, filename, *a, **k)

    monkeypatch.setattr(other, "safe_save_file", full_at_step_4)
    out = tmp_path / "rm"
    code, _, err = run(out, "train.max_steps=6", "train.save_every=2")
    line = _one_line_error(err)
    assert code == 2 and f"cannot write checkpoint {out / 'checkpoints' / 'step-4'}" in line and "StorageFull" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # no partial folder
    assert _complete(out / "checkpoints" / "step-2")
    assert (out / "metrics.jsonl").exists()  # kept: the run resumes from step-2
    assert not (out / "model.safetensors").exists()


def test_full_disk_during_the_final_save_keeps_the_previous_model(run, tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    out = tmp_path / "rm"
    assert run(out, "train.max_steps=1")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "metrics.jsonl"}

    def full(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(mu, "safe_save_file", full)
    code, _, err = run(out, "train.max_steps=2", "seed=1")
    line = _one_line_error(err)
    assert code == 2 and f"cannot write the model into {out} (model.safetensors: [Errno 28]" in line
    assert line.count("Errno") == 1 and line.startswith("rewardkit train: error: cannot write")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # the previous model untouched; the failed run's metrics.jsonl gone
    assert [p.name for p in out.iterdir() if p.is_dir()] == []  # no staging folder


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_an_output_dir_that_cannot_be_written_is_refused_first(run, tmp_path, where):
    f = tmp_path / "taken"
    f.write_text("x")
    out = f if where == "file" else f / "rm"
    code, _, err = run(out)
    assert code == 2 and "file, not a folder" in _one_line_error(err) and str(f) in err  # (config checks it too)
    assert "INFO rewardkit.train" not in err  # refused before the model or data loaded


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_output_dir_is_refused_first(run, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run(ro / "rm")
        assert code == 2 and f"cannot write in {ro}" in _one_line_error(err)
    finally:
        ro.chmod(0o755)


def test_a_disk_too_small_for_the_model_is_refused_before_training(run, tmp_path, monkeypatch):
    monkeypatch.setattr(faults.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
    out = tmp_path / "rm"
    code, _, err = run(out)
    assert code == 2 and "1.0 MiB free on its disk, the model alone needs" in _one_line_error(err)
    assert not out.exists()


@pytest.mark.parametrize("bad", ['{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n',
                                 '{"prompt": "a", "chosen": "b"}\n'], ids=["bad-json", "missing-field"])
def test_a_train_that_fails_on_its_data_leaves_no_folder(tmp_path, bad, tiny_models, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(bad)
    out = tmp_path / "rm"
    code = main(["train", f"model={tiny_models['llama']}", f"data.train={data}", f"output_dir={out}",
                 "train.progress=false"])
    assert code == 2 and "bad.jsonl" in _one_line_error(capsys.readouterr().err)
    assert not out.exists()


# --------------------------------------------------------------------------- resume checks, metrics, determinism

def test_resume_refuses_a_config_that_changes_the_run(run, tmp_path):
    out = tmp_path / "rm"
    assert run(out, "train.max_steps=3", "train.save_every=2")[0] == 0
    code, _, err = run(out, "train.max_steps=3", "train.resume=auto", "train.lr=2e-3", "train.batch_size=2")
    line = _one_line_error(err)
    assert code == 2 and f"cannot resume from {out / 'checkpoints' / 'step-2'}" in line
    assert "train.batch_size: 4 -> 2" in line and "train.lr: 0.001 -> 0.002" in line
    assert (out / "model.safetensors").exists()  # the folder's model untouched


def test_resume_auto_skips_incomplete_checkpoints(tmp_path, caplog):
    ck = tmp_path / "checkpoints"
    for step, state in ((4, {"files": {"optimizer.bin": 3}}), (6, None), (8, {"files": {"optimizer.bin": 3}})):
        (ck / f"step-{step}").mkdir(parents=True)
        (ck / f"step-{step}" / "optimizer.bin").write_bytes(b"abc" if step == 4 else b"a")  # step-8: truncated
        if state is not None:
            (ck / f"step-{step}" / "trainer_state.json").write_text(json.dumps({"step": step, **state}))
    (ck / ".step-10.tmp").mkdir()  # an interrupted save of this version: never a candidate
    with caplog.at_level(logging.WARNING, logger="rewardkit.train"):
        assert checkpoints.latest_checkpoint(tmp_path, warn=True) == ck / "step-4"
    assert "step-8: optimizer.bin is missing or truncated" in caplog.text
    assert "step-6: no trainer_state.json (a save was interrupted)" in caplog.text
    with pytest.raises(ConfigError, match="cannot resume from it: no trainer_state.json"):
        checkpoints.resume_point(tmp_path, str(ck / "step-6"), 1)


def test_trim_metrics_drops_rows_past_the_checkpoint_and_a_cut_line(tmp_path):
    from rewardkit.train.tracking import trim_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"split": "train", "step": s} for s in range(1, 6)] + [{"split": "eval", "step": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"split": "train", "st')
    trim_metrics(path, 4)
    assert [(r["split"], r["step"]) for r in map(json.loads, path.read_text().splitlines())] == \
        [("train", 1), ("train", 2), ("train", 3), ("train", 4), ("eval", 4)]


def test_same_seed_same_metrics(run, tmp_path):
    rows = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run(out, "train.max_steps=4", "train.eval_every=2", "data.eval_size=8")[0] == 0
        rows.append([{k: v for k, v in r.items() if k not in TIMING} for r in _rows(out)])
    assert [(r["split"], r["step"]) for r in rows[0]] == [("train", 1), ("train", 2), ("eval", 2), ("train", 3),
                                                          ("train", 4), ("eval", 4)]
    assert rows[0] == rows[1]
