"""Resumable checkpoints under <output_dir>/checkpoints/step-N: save (weights, optimiser, scheduler, RNG of every
process, data position, the run's config), find the newest complete one, check the config, resume from it.

A checkpoint is written into checkpoints/.step-N.tmp and renamed to step-N once complete (trainer_state.json,
written last, records every file's size), so a kill during a save never leaves a step-N that resume would
pick; folders of older versions that lack trainer_state.json, or whose files do not match it, are skipped
with a warning."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from accelerate import Accelerator

from rewardkit.config import ConfigError
from rewardkit.io import atomic_write
from rewardkit.train.launch import LaunchError

# One logger for the whole package, named as before the split: log lines read `rewardkit.train: ...`.
log = logging.getLogger("rewardkit.train")

# Keys that may differ between a checkpoint's run and the run resuming it: they change where things go, what is
# logged or evaluated, and speed or memory, not the weights. Any other difference is refused (exit 2).
RUN_INDEPENDENT = frozenset({
    "output_dir", "train.resume", "train.progress", "train.log_every", "train.eval_every", "train.eval_batch_size",
    "train.save_every", "train.report_to", "train.project", "train.max_bad_steps", "train.gradient_checkpointing",
    "train.checkpoint_every", "train.compile", "train.trim_memory"})


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def _problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from (None: it is complete): no or unreadable trainer_state.json, or a file
    missing or of another size than recorded."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json (a save was interrupted)"
    except (OSError, ValueError) as e:
        return f"unreadable trainer_state.json ({e})"
    for name, size in state.get("files", {}).items():  # recorded since the atomic saves; older ones lack it
        f = ckpt / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{name} is missing or truncated"
    return None


def latest_checkpoint(out: Path, warn: bool = False) -> Path | None:
    """The newest complete checkpoint in `out`; incomplete step-N folders (older versions wrote in place) are
    skipped, with a warning when `warn`."""
    ckpts = sorted((p for p in (out / "checkpoints").glob("step-*") if p.is_dir() and p.name[5:].isdigit()),
                   key=_step_of, reverse=True)
    for p in ckpts:
        problem = _problem(p)
        if problem is None:
            return p
        if warn:
            log.warning("skipping incomplete checkpoint %s: %s", p, problem)
    return None


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: saved -> now` for every flat config key (`group.key`) both runs have that differs, except the
    RUN_INDEPENDENT ones."""
    return [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in sorted(saved.keys() & now.keys())
            if k not in RUN_INDEPENDENT and saved[k] != now[k]]


def check_resumed_precision(state: dict[str, Any], bf16: bool, auto: bool, checkpoint: Path | None) -> None:
    """`train.bf16=auto` resolves from the machine; a run resumed where it resolves otherwise than where the
    run started would finish in another precision (weights and mean/std then differ): refused."""
    started = state.get("bf16")
    if checkpoint is not None and auto and started is not None and bool(started) != bf16:
        raise ConfigError(f"cannot resume from {checkpoint}: train.bf16=auto chose {'bf16' if started else 'fp32'} "
                          f"where the run started and picks {'bf16' if bf16 else 'fp32'} here, so the rest would "
                          "train in another precision; resume it on a machine like the first, or start a fresh run")


def check_resumed_data(state: dict[str, Any], fingerprint: list[int], checkpoint: Path | None) -> None:
    """A checkpoint's data (`plan.data_fingerprint`) against this run's: an edited file would change the step
    count and schedule under the resumed optimiser without a word. Older checkpoints record none."""
    saved = state.get("data")
    if checkpoint is not None and saved is not None and list(saved) != list(fingerprint):
        what = ", ".join(f"{k} {a} -> {b}" for k, a, b in zip(("training items", "their tokens", "eval items"),
                                                               saved, fingerprint) if a != b)
        raise ConfigError(f"cannot resume from {checkpoint}: the data changed since it was written ({what}); "
                          "resume with the same files, or start a fresh run")


def resume_point(out: Path, resume: str | None, n_proc: int, config: dict[str, Any] | None = None
                 ) -> tuple[Path | None, dict[str, Any]]:
    """(checkpoint to resume from or None, its trainer_state.json): `resume` is "auto" (the newest complete one
    in `out`, if any), a checkpoint folder, or empty (a fresh run). With `config` (the flat config of this run),
    a checkpoint written with a config that would change the run is refused (ConfigError naming the keys)."""
    if resume == "auto":
        path = latest_checkpoint(out, warn=True)
    elif resume:
        path = Path(resume)
        problem = _problem(path) if path.is_dir() else "not a folder"
        if problem is not None:
            raise ConfigError(f"train.resume={resume}: cannot resume from it: {problem}")
    else:
        path = None
    state: dict[str, Any] = {}
    if path is not None:
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("num_processes", 1) != n_proc:  # the data dealt per step and each process's RNG differ
            raise LaunchError(f"{path} was written by {state.get('num_processes', 1)} process(es); resume it with "
                              f"as many (this launch has {n_proc})")
        if config is not None and "config" in state:
            changes = config_changes(state["config"], json.loads(json.dumps(config)))
            if changes:
                raise ConfigError(f"cannot resume from {path}: it was written with another config "
                                  f"({'; '.join(changes)}); use the same values, or start a fresh run (another "
                                  "output_dir, no train.resume)")
        elif config is not None:
            log.warning("%s records no config (an older version): not checked against this run's", path)
    return path, state


def restore(accelerator: Accelerator, path: Path, state: dict[str, Any]) -> tuple[int, int, int]:
    """Load checkpoint `path` into the prepared model, optimiser and scheduler; (step, epoch, micro-batches of
    that epoch already done) from its `state`."""
    accelerator.load_state(str(path))
    step, epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]
    log.info("resumed from %s at step %d (epoch %d, batch %d)", path, step, epoch, skip_batches)
    return step, epoch, skip_batches


def remove_partial(out: Path) -> None:
    """Remove the .step-N.tmp folders of saves that were interrupted (main process, before training)."""
    for p in (out / "checkpoints").glob(".step-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, epoch: int, batch_in_epoch: int,
                    batches_per_epoch: int, extra: dict[str, Any] | None = None, keep: int = 2,
                    write_own: Callable[[Path], None] | None = None) -> Path:
    """Resumable state (weights, optimiser, scheduler, RNG of every process, data position, and `extra`: the
    run's config, counters; `write_own(folder)`: each process's own files); keeps the newest `keep` complete
    ones. Every process writes into checkpoints/.step-N.tmp; then the main process writes trainer_state.json
    (with each file's size) and renames the folder to step-N."""
    if batch_in_epoch >= batches_per_epoch:  # the epoch just ended: resume at the next one
        epoch, batch_in_epoch = epoch + 1, 0
    final = out / "checkpoints" / f"step-{step}"
    tmp = out / "checkpoints" / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if write_own is not None:
            write_own(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
            with atomic_write(tmp / "trainer_state.json") as fh:
                json.dump({"step": step, "epoch": epoch, "batches_in_epoch": batch_in_epoch,
                           "num_processes": accelerator.num_processes, "files": files, **(extra or {})}, fh)
            if final.exists():  # the same step saved again (a stop right after a resume)
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves no partial folder (a kill: the next run's job)
        raise
    if accelerator.is_main_process:  # the newest `keep` complete ones stay; incomplete ones are never resumed
        ckpts = sorted((p for p in (out / "checkpoints").glob("step-*") if p.name[5:].isdigit()), key=_step_of)
        complete = [p for p in ckpts if _problem(p) is None]
        for old in (p for p in ckpts if p not in complete[-keep:]):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
