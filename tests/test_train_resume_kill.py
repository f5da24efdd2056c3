"""A real `python -m rewardkit train` process is stopped by SIGTERM at a random step, resumed, killed by SIGKILL in
the middle of a random checkpoint save, and resumed again: the final weights and metrics.jsonl equal those of
an uninterrupted run (CPU, one thread, max abs diff <= 1e-6).

No sleeping for timing: the child stops itself (SIGSTOP) at the chosen point through a sitecustomize hook that
the test writes, and the test waits for that stop with waitpid before it sends the signal."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_pairs, write_jsonl
from rewardkit.cli import main

TIMING = ("pairs_per_s", "tokens_per_s")

HOOK = '''
import os, signal
_where, _n = os.environ["RK_TEST_STOP_AT"].split(":")
if _where == "row":  # after the train row of step n is written
    from rewardkit.train import loop
    _write = loop.write_row
    def _hook(row, **kw):
        _write(row, **kw)
        if row["split"] == "train" and row["step"] == int(_n):
            os.kill(os.getpid(), signal.SIGSTOP)
    loop.write_row = _hook
else:  # inside the save of step n's checkpoint: its files written, trainer_state.json not yet
    from accelerate import Accelerator
    _save = Accelerator.save_state
    def _hook(self, output_dir=None, **kw):
        r = _save(self, output_dir, **kw)
        if str(output_dir).endswith(f".step-{_n}.tmp"):
            os.kill(os.getpid(), signal.SIGSTOP)
        return r
    Accelerator.save_state = _hook
'''


def _args(model, data, out, *extra) -> list[str]:
    return ["train", f"model={model}", f"data.train={data}", "data.max_length=48", "train.batch_size=4",
            "train.lr=1e-3", "train.max_steps=12", "train.save_every=3", "train.log_every=1", "train.progress=false",
            "train.bf16=false", "seed=0", f"output_dir={out}", *extra]


def _start(tmp: Path, args: list[str], stop_at: str, name: str) -> tuple[subprocess.Popen, Path]:
    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "RK_TEST_STOP_AT": stop_at, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH")) if p)}
    log = tmp / f"{name}.log"
    with log.open("w") as fh:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen([sys.executable, "-m", "rewardkit", *args], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    return proc, log


def _wait_stopped(proc: subprocess.Popen, log: Path, deadline_s: float = 180) -> None:
    """Wait (polling waitpid, with a deadline) until the child stopped itself at its hook."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid and os.WIFSTOPPED(status):
            return
        if pid:
            pytest.fail(f"training ended before its hook (status {status}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"training never reached its hook:\n{log.read_text()[-3000:]}")


def _rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING}
            for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the children (OMP_NUM_THREADS=1): the same float sums
    yield
    torch.set_num_threads(n)


def test_sigterm_then_sigkill_mid_save_then_resume_equals_an_uninterrupted_run(tiny_models, tmp_path, one_thread,
                                                                               caplog, capsys):
    rng = random.Random()
    k_term, s_kill = rng.randint(2, 5), rng.choice([6, 9])
    why = f"SIGTERM after step {k_term}, SIGKILL while saving step {s_kill}"
    model, data = tiny_models["llama"], write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(64))

    ref = tmp_path / "ref"
    assert main(_args(model, data, ref)) == 0, why

    out = tmp_path / "rm"
    proc, log = _start(tmp_path, _args(model, data, out), f"row:{k_term}", "term")
    _wait_stopped(proc, log)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=180) == 0, f"{why}\n{log.read_text()[-3000:]}"
    summary = json.loads(log.read_text().strip().splitlines()[-1])
    assert summary["stopped_by"] == "SIGTERM" and summary["steps"] == k_term, why
    assert summary["checkpoint"] == str(out / "checkpoints" / f"step-{k_term}")
    assert not (out / "model.safetensors").exists()

    proc, log = _start(tmp_path, _args(model, data, out, "train.resume=auto"), f"save:{s_kill}", "kill")
    _wait_stopped(proc, log)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    partial = out / "checkpoints" / f".step-{s_kill}.tmp"
    assert (partial / "optimizer.bin").exists() and not (partial / "trainer_state.json").exists(), why
    assert not (out / "checkpoints" / f"step-{s_kill}").exists()
    assert _rows(out)[-1]["step"] == s_kill  # the dead run logged past its last complete checkpoint
    complete = max(s for s in (k_term, 3, 6) if s < s_kill)
    # what an older version left: a checkpoint folder cut by the kill, and one whose optimiser state was cut
    shutil.copytree(partial, out / "checkpoints" / f"step-{s_kill + 1}")
    cut = out / "checkpoints" / f"step-{s_kill + 2}"
    shutil.copytree(out / "checkpoints" / f"step-{complete}", cut)
    with (cut / "optimizer.bin").open("r+b") as fh:
        fh.truncate(1000)

    with caplog.at_level(logging.INFO, logger="rewardkit.train"):
        assert main(_args(model, data, out, "train.resume=auto")) == 0, why
    capsys.readouterr()
    skipped = f"skipping incomplete checkpoint {out / 'checkpoints'}"
    assert f"{skipped}/step-{s_kill + 2}: optimizer.bin is missing or truncated" in caplog.text
    assert f"{skipped}/step-{s_kill + 1}: no trainer_state.json" in caplog.text
    assert f"resumed from {out / 'checkpoints' / f'step-{complete}'} at step {complete}" in caplog.text, why
    assert not partial.exists()

    assert _rows(out) == _rows(ref), why  # each step once, the same numbers
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-6, f"{why}: max abs diff {diff}"
