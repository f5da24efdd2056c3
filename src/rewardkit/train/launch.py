"""Before training: does this launch train as asked (LaunchError, one line, if not), and quiet logs on
every process but the main one (whether bf16 runs in hardware: `rewardkit.precision`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from accelerate import Accelerator
from accelerate.utils import DistributedType

from rewardkit.config import ConfigError

_CPU_LAUNCH = ("ACCELERATE_USE_CPU=true accelerate launch --config_file examples/accelerate/cpu_2proc.yaml "
               "-m rewardkit train ... (or ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m rewardkit train ...)")


class LaunchError(ConfigError):
    """A multi-process launch that would not train as asked (one line, says how to launch instead)."""


def _env_world_size() -> int:
    """Processes the launcher started, as the environment says (torchrun, accelerate, MPI)."""
    sizes = [os.environ.get(k, "") for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")]
    return max([int(s) for s in sizes if s.strip().isdigit()] or [1])


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_launch(accelerator: Accelerator) -> None:
    """Stop (LaunchError, one line) where the launch would not train as asked:
    - several processes were started (WORLD_SIZE > 1) but accelerate runs this one alone (plain torchrun on
      a machine without GPUs and without ACCELERATE_USE_CPU): each would train its own copy into output_dir;
    - `accelerate launch --cpu --num_processes N` (or a MULTI_CPU config): accelerate 1.x starts ONE process
      there unless it runs under mpirun; it leaves MASTER_ADDR set but no world size;
    - an FSDP or DeepSpeed launch that accelerate turned into something else (FSDP and DeepSpeed need GPUs).
    """
    world, n = _env_world_size(), accelerator.num_processes
    if world > 1 and n == 1:
        raise LaunchError(
            f"{world} processes were started (WORLD_SIZE={world}) but accelerate runs each on its own (no GPU found; "
            f"CPU processes need ACCELERATE_USE_CPU=true), so each would train a separate copy into the same "
            f"output_dir; launch with: {_CPU_LAUNCH}")
    if n == 1 and world == 1 and _env_flag("ACCELERATE_USE_CPU") and os.environ.get("MASTER_ADDR"):
        raise LaunchError(
            "`accelerate launch --cpu --num_processes N` (or a MULTI_CPU config) starts only ONE process (accelerate "
            f"starts several CPU processes only under mpirun); launch with: {_CPU_LAUNCH}")
    dt = accelerator.distributed_type
    if dt == DistributedType.FSDP and not getattr(accelerator, "is_fsdp2", False):
        raise LaunchError("rewardkit trains with FSDP2 only (fsdp_version: 2, as examples/accelerate/fsdp.yaml): FSDP1 "
                          "cannot run the bare model's evaluation forwards")
    if _env_flag("ACCELERATE_USE_FSDP") and dt != DistributedType.FSDP:
        raise LaunchError(f"an FSDP launch, but accelerate runs {dt.value} (FSDP needs GPUs); use "
                          "examples/accelerate/ddp.yaml, or cpu_2proc.yaml on CPUs")
    if _env_flag("ACCELERATE_USE_DEEPSPEED") and dt != DistributedType.DEEPSPEED:
        raise LaunchError(f"a DeepSpeed launch, but accelerate runs {dt.value} (DeepSpeed needs GPUs and the "
                          "deepspeed package); use examples/accelerate/ddp.yaml, or cpu_2proc.yaml on CPUs")


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Other processes than the main one log warnings and errors only."""
    logger = logging.getLogger("rewardkit")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
