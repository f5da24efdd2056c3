"""What can go wrong during a run and what the loop does about it: non-finite steps (skipped, counted, too many
in a row stop the run: exit 3), stop signals (SIGTERM / SIGINT: checkpoint and exit 0; a second one stops at
once), an output folder that cannot be written (refused before anything loads), a save that fails (a full
disk: one line naming the file, exit 2), and what a failed run leaves behind (a resumable state, or nothing)."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rewardkit.config import ConfigError

log = logging.getLogger("rewardkit.train")

SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class TrainingDiverged(RuntimeError):
    """The loss or gradients kept going non-finite (train.max_bad_steps in a row), or the trained model's
    rewards are not finite: no model is saved."""

    exit_code = 3


class TrainingInterrupted(RuntimeError):
    """A second stop signal (stop at once), or a first one whose checkpoint could not be saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)  # what a shell reports for a process ended by that signal


class SaveError(OSError):
    """A checkpoint or the model could not be written (full disk, quota, I/O error); what was there before
    is untouched. str() is the message alone (OSError's own would print "[Errno N]" before it a second time)."""

    exit_code = 2

    def __init__(self, errno: int | None, message: str):
        super().__init__(message)
        self.errno = errno


class PeerFailed(RuntimeError):
    """Another training process failed (its own one-line error says why) and this one lost it in a collective."""

    exit_code = 1


# gloo's words for a peer that is gone; NCCL and newer torch raise torch.distributed.DistError subclasses
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def peer_failure(e: BaseException, rank: int) -> PeerFailed | None:
    """PeerFailed when `e` is this process losing another one in a collective, else None (keep `e`)."""
    import torch.distributed as dist

    text = str(e)
    if not (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(w in text for w in PEER_GONE))):
        return None
    first = next((x.strip() for x in text.splitlines() if x.strip()), type(e).__name__)
    return PeerFailed(f"process {rank} stopped: another training process failed (its error is above; nothing of "
                      f"this run was saved beyond its last checkpoint) [{first[:200]}]")


# --------------------------------------------------------------------------- non-finite steps

def grads_finite(params: list[torch.nn.Parameter], grad_norm: Any) -> bool:
    """Whether this process's gradients are finite: from the clipped total norm when there is one, else from
    the norm of the local gradients (a shard of them under FSDP; the flag is reduced over processes)."""
    if grad_norm is None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return True
        grad_norm = torch.nn.utils.get_total_norm(grads)
    return math.isfinite(float(grad_norm))


def any_process(accelerator: Accelerator, *flags: bool) -> list[bool]:
    """Each flag OR-ed over every process, so that all of them skip the same steps and stop at the same one
    (one small all-reduce; nothing on a single process)."""
    if accelerator.num_processes == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=accelerator.device)
    return [x > 0 for x in accelerator.reduce(t, "sum").tolist()]


def diverged_message(step: int, in_a_row: int, loss: float, grad_norm: Any, out: Path, checkpoint: Path | None) -> str:
    where = (f"the last good checkpoint is {checkpoint}" if checkpoint is not None
             else "no checkpoint was saved (train.save_every)")
    return (f"training stopped at step {step}: the loss or gradients were not finite for {in_a_row} optimiser steps "
            f"in a row (train.max_bad_steps; last loss {loss}, grad norm {grad_norm}); no model saved in {out}, "
            f"{where}; try a lower train.lr")


# --------------------------------------------------------------------------- signals

class StopSignals:
    """SIGTERM and SIGINT while training: the first sets `signum` (the loop checks it between optimiser steps,
    saves a checkpoint and returns); a second one raises KeyboardInterrupt at once, which `train` turns into
    TrainingInterrupted. Installed for the duration of the `with` block, then the old handlers come back;
    only the main thread can install handlers, so elsewhere signals keep their usual effect."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hard: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # no work here: a flag, or stop at once
        if self.signum is not None:
            self.hard = signum
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNAL_NAMES:
                if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. SIGINT of a background job: stays ignored
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    @property
    def name(self) -> str:
        return SIGNAL_NAMES.get(self.signum, str(self.signum))


# --------------------------------------------------------------------------- output folder and saves

def check_free_space(out: Path, model: torch.nn.Module, save_every: int) -> None:
    """Refuse a run whose final model alone would not fit on the disk of `out` (checked once the model is
    loaded, before training); warn when the checkpoints (weights and two AdamW moments each, two kept)
    probably would not."""
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    # a LoRA folder holds the adapter and heads only (the trainable part), any other the whole weights
    lora = getattr(model, "lora", None) is not None
    weights = trainable if lora else sum(p.numel() * p.element_size() for p in model.parameters())
    if free < weights:
        raise ConfigError(f"output_dir {out}: {free / 2**20:.1f} MiB free on its disk, the model alone needs about "
                          f"{weights / 2**20:.1f} MiB")
    if save_every and free < weights + 2 * (weights + 2 * trainable):
        log.warning("output_dir %s: %.1f MiB free; the model and two checkpoints need about %.1f MiB", out,
                    free / 2**20, (weights + 2 * (weights + 2 * trainable)) / 2**20)


@contextlib.contextmanager
def saving(what: str, where: Path, untouched: str) -> Iterator[None]:
    """Turn a failed write inside the block (OSError; safetensors' and torch's own errors for a full disk) into
    SaveError: one line naming `what` was being written, the file where known, and what is `untouched`."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as e:
        name = f"{Path(e.filename).name}: " if getattr(e, "filename", None) else ""
        reason = f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
        raise SaveError(e.errno, f"cannot write {what} {where} ({name}{reason}); {untouched}") from e
    except (SafetensorError, RuntimeError) as e:
        text = str(e)
        if isinstance(e, RuntimeError) and not isinstance(e, SafetensorError) and \
                "PytorchStreamWriter" not in text and "file write failed" not in text:
            raise  # not a write failure: a bug, keep its traceback
        free = shutil.disk_usage(where.parent if not where.exists() else where).free
        raise SaveError(None, f"cannot write {what} {where} ({text.splitlines()[0] if text else type(e).__name__}; "
                              f"{free / 2**20:.1f} MiB free); {untouched}") from e


def clean_failed_run(out: Path, created: bool, keep_metrics: bool, has_checkpoint: bool) -> None:
    """What a failed run leaves: with a complete checkpoint, everything (it resumes with train.resume=auto);
    without one, nothing of its own: the folder if this run created it, else its metrics.jsonl (kept when
    `keep_metrics`: the rows of a diverged run say why it stopped) and its unfinished checkpoint folders."""
    if has_checkpoint or not out.exists():
        return
    if keep_metrics and (out / "metrics.jsonl").exists():
        return
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    (out / "metrics.jsonl").unlink(missing_ok=True)
    ckpts = out / "checkpoints"
    if ckpts.is_dir():
        for p in ckpts.glob(".step-*"):
            shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(OSError):
            ckpts.rmdir()  # only when empty
