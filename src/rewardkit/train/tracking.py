"""What a run reports: rows appended to metrics.jsonl and sent to the trackers (tensorboard, wandb), and the
training window's sums reduced over every process into one row."""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rewardkit.config import ConfigError, TrainRunConfig, to_dict
from rewardkit.io import atomic_write, json_line
from rewardkit.metrics import reward_stats
from rewardkit.objectives import StepWindow

# One logger for the whole package, named as before the split: log lines read `rewardkit.train: ...`.
log = logging.getLogger("rewardkit.train")

TRACKERS = ("tensorboard", "wandb")


def resolve_trackers(report_to: str | list[str]) -> list[str]:
    """`train.report_to` as tracker names (`none` -> []); a tracker whose package is missing is an error."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown:
        raise ConfigError(f"train.report_to: {', '.join(unknown)} is not one of none, {', '.join(TRACKERS)}")
    names = [n for n in dict.fromkeys(names) if n != "none"]
    import importlib.util

    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.report_to={name} needs the {name} package: pip install 'rewardkit[{name}]'")
    if "wandb" in names and not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"  # never reach for the network unasked; `wandb sync` uploads later
        log.info("wandb: offline (set WANDB_MODE=online or WANDB_API_KEY to upload while training)")
    return names


def hparams(cfg: TrainRunConfig) -> dict[str, Any]:
    """The config as flat `group.key` -> scalar (what TensorBoard's hparams and wandb's config take)."""
    flat: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(to_dict(cfg), "")
    return flat


def trim_metrics(path: Path, resumed_step: int | None) -> None:
    """A fresh run starts metrics.jsonl anew; a resumed one drops the rows logged after its checkpoint (a killed
    run went on logging past it) and a last line cut by the kill, in one atomic rewrite."""
    if resumed_step is None:
        path.unlink(missing_ok=True)
    elif path.exists():
        rows = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a row cut by a kill while it was appended
            if isinstance(row, dict) and row.get("step", 0) <= resumed_step:
                rows.append(line)
        with atomic_write(path) as fh:
            fh.write("".join(r + "\n" for r in rows))


def write_row(row: dict, *, path: Path, accelerator: Accelerator, trackers: list[str], main: bool) -> None:
    """Append `row` ({"split", "step", name: value}) to metrics.jsonl (main process) and send its numbers to
    the trackers as <split>/<name> at its step."""
    if main:
        with path.open("a") as fh:
            fh.write(json_line(row) + "\n")  # strict JSON: a skipped step's loss is not finite
    if trackers:  # accelerator.log writes on the main process only
        accelerator.log({f"{row['split']}/{k}": v for k, v in row.items()
                         if k not in ("split", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)},
                        step=row["step"])


def reduce_window(accelerator: Accelerator, window: StepWindow, unit: str) -> dict[str, float]:
    """`window.row(unit)` for the sums of every process: loss and metrics as means over all their examples,
    reward mean/std over all their rewards, throughput as all examples / tokens per second of wall time."""
    if accelerator.num_processes == 1:
        return window.row(unit)
    keys = sorted(window.sums)
    rewards = torch.cat(window.rewards).double() if window.rewards else torch.zeros(0, dtype=torch.float64)
    local = torch.tensor([window.loss, window.n, window.units, window.tokens, window.processed,
                          *(window.sums[k] for k in keys),
                          float(rewards.sum()), float((rewards ** 2).sum()), rewards.numel()], dtype=torch.float64)
    total = accelerator.reduce(local.to(accelerator.device), "sum").cpu().tolist()
    loss, n, units, tokens, processed, *rest = total
    sums, (rsum, rsq, rn) = dict(zip(keys, rest[:len(keys)])), rest[len(keys):]
    dt = time.perf_counter() - window.start
    mean = rsum / rn if rn else float("nan")
    stats = ({"reward_mean": mean, "reward_std": math.sqrt(max(rsq / rn - mean * mean, 0.0))} if rn
             else reward_stats(torch.zeros(0)))
    return {"loss": loss / (units or 1), **{k: v / max(n, 1) for k, v in sums.items()}, **stats,
            f"{unit}_per_s": n / dt, "tokens_per_s": tokens / dt,
            "padding_fraction": 1 - tokens / max(processed, 1)}


class RecentRewards:
    """The rewards of the last `maxlen` good micro-batches' training forwards (detached float32 on the CPU):
    one epoch's worth when the loop sets `maxlen` to its micro-batches per epoch, so that the reward mean/std
    saved for normalisation cost no forward of their own (`train.reward_stats=loop`)."""

    def __init__(self) -> None:
        self.parts: collections.deque[torch.Tensor] = collections.deque()

    def new_epoch(self, micro_batches: int) -> None:
        """From now on keep at most `micro_batches` micro-batches (the oldest go first)."""
        self.parts = collections.deque(self.parts, maxlen=max(micro_batches, 1))

    def add(self, rewards: torch.Tensor) -> None:
        self.parts.append(rewards.detach().float().cpu())

    @classmethod
    def resumed(cls, checkpoint: Path | None, rank: int) -> "RecentRewards":
        """Empty, or the rewards process `rank` kept in `checkpoint`: a resumed run then saves the mean/std
        the uninterrupted run would."""
        recent = cls()
        if checkpoint is None:
            return recent
        path = checkpoint / f"recent_rewards_{rank}.pt"
        if path.is_file():
            recent.parts = collections.deque(torch.load(path, weights_only=True))
        else:  # an older version's checkpoint
            log.warning("%s holds no training rewards: mean/std will come from the steps after it", checkpoint)
        return recent

    def save(self, checkpoint: Path, rank: int) -> None:
        """Into a checkpoint folder, one file per process."""
        torch.save(list(self.parts), checkpoint / f"recent_rewards_{rank}.pt")

    def stats(self, accelerator: Accelerator) -> dict[str, float]:
        """reward_mean and (population) reward_std over every process's kept rewards; NaN when none. A
        collective: every process calls it."""
        r = torch.cat(list(self.parts)).double() if self.parts else torch.zeros(0, dtype=torch.float64)
        if accelerator.num_processes == 1:
            return reward_stats(r)
        # two passes (sum, then squared deviations from the global mean): no cancellation in the variance
        n, total = accelerator.reduce(torch.tensor([r.numel(), float(r.sum())], dtype=torch.float64,
                                                   device=accelerator.device), "sum").cpu().tolist()
        if not n:
            return reward_stats(torch.zeros(0))
        mean = total / n
        sq = accelerator.reduce(torch.tensor([float(((r - mean) ** 2).sum())], dtype=torch.float64,
                                             device=accelerator.device), "sum").item()
        return {"reward_mean": mean, "reward_std": math.sqrt(sq / n)}


def save_log_window(checkpoint: Path, rank: int, window: StepWindow, skipped: int, good: int) -> None:
    """The steps since the last metrics row (sums, rewards, skipped and good counts), one file per process:
    a run resumed between two rows then logs the row the uninterrupted run would (timings aside)."""
    torch.save({"loss": window.loss, "n": window.n, "units": window.units, "tokens": window.tokens,
                "processed": window.processed, "sums": dict(window.sums), "rewards": list(window.rewards),
                "skipped": skipped, "good": good},
               checkpoint / f"log_window_{rank}.pt")


def resumed_log_window(checkpoint: Path | None, rank: int) -> tuple[StepWindow, int, int]:
    """(window, skipped, good) as `save_log_window` left them in `checkpoint`; empty for a fresh run or an
    older checkpoint without the file."""
    window = StepWindow()
    path = None if checkpoint is None else checkpoint / f"log_window_{rank}.pt"
    if path is None or not path.is_file():
        return window, 0, 0
    d = torch.load(path, weights_only=True)
    window.loss, window.n, window.tokens, window.processed = d["loss"], d["n"], d["tokens"], d["processed"]
    window.units = d.get("units", float(d["n"]))  # older checkpoints: every loss was a mean over items
    window.sums, window.rewards = dict(d["sums"]), list(d["rewards"])
    return window, int(d["skipped"]), int(d["good"])

