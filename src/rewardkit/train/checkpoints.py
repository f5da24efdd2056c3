"""Resumable checkpoints under <output_dir>/checkpoints/step-N: save (weights, optimiser, scheduler, RNG of every
process, data position), find the newest complete one, and resume from it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from rewardkit.io import atomic_write
from rewardkit.train.launch import LaunchError

# One logger for the whole package, named as before the split: log lines read `rewardkit.train: ...`.
log = logging.getLogger("rewardkit.train")


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def _latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last, after every process saved)."""
    ckpts = sorted((p for p in (out / "checkpoints").glob("step-*") if (p / "trainer_state.json").exists()),
                   key=_step_of)
    return ckpts[-1] if ckpts else None


def resume_point(out: Path, resume: str | None, n_proc: int) -> tuple[Path | None, dict[str, Any]]:
    """(checkpoint to resume from or None, its trainer_state.json): `resume` is "auto" (the newest complete one
    in `out`, if any), a checkpoint folder, or empty (a fresh run)."""
    path = _latest_checkpoint(out) if resume == "auto" else (Path(resume) if resume else None)
    state: dict[str, Any] = {}
    if path is not None:
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("num_processes", 1) != n_proc:  # the data dealt per step and each process's RNG differ
            raise LaunchError(f"{path} was written by {state.get('num_processes', 1)} process(es); resume it with "
                              f"as many (this launch has {n_proc})")
    return path, state


def restore(accelerator: Accelerator, path: Path, state: dict[str, Any]) -> tuple[int, int, int]:
    """Load checkpoint `path` into the prepared model, optimiser and scheduler; (step, epoch, micro-batches of
    that epoch already done) from its `state`."""
    accelerator.load_state(str(path))
    step, epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]
    log.info("resumed from %s at step %d (epoch %d, batch %d)", path, step, epoch, skip_batches)
    return step, epoch, skip_batches


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, epoch: int, batch_in_epoch: int,
                    batches_per_epoch: int, keep: int = 2) -> None:
    """Resumable state (weights, optimiser, scheduler, RNG of every process, data position); keeps the newest
    `keep`. trainer_state.json is written last, once every process has saved, so it marks a complete one."""
    if batch_in_epoch >= batches_per_epoch:  # the epoch just ended: resume at the next one
        epoch, batch_in_epoch = epoch + 1, 0
    path = out / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_write(path / "trainer_state.json") as fh:
            json.dump({"step": step, "epoch": epoch, "batches_in_epoch": batch_in_epoch,
                       "num_processes": accelerator.num_processes}, fh)
        for old in sorted((out / "checkpoints").glob("step-*"), key=_step_of)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
