"""Reward-model training: one explicit accelerate loop, read it top to bottom (`loop.py`).

setup (objective, model, data, optimiser) -> loop (forward, loss, step, log, eval, checkpoint) -> final
eval, normalisation stats, save. What differs between loss families (data format, batch -> loss, eval
metric) sits behind `rewardkit.objectives.Objective`; for pairs a micro-batch is chosen+rejected in
one forward.

Several processes (`accelerate launch [--config_file F] -m rewardkit train ...`): `train.batch_size` is per
process. Every process builds the same global batches (seed, epoch) and keeps its own share
(`data.batching.RankBatches`), so no item is read twice in an epoch and N processes x batch B see exactly
the items of 1 process x batch N*B. Each share's loss is weighted by its item count, so the gradient is the
mean over every item of the optimiser step, whatever the shares. Evaluation is shared between the processes
and gathered (`scoring.sharded_scoring`); training rows are summed over processes; only the main process
writes files, logs to trackers or shows the progress bar.

Where the parts live: `loop` (train, TrainResult), `plan` (which items make each micro-batch, collation),
`checkpoints` (save, find, resume), `sharded` (FSDP2 / ZeRO-3 whole weights for eval and the final save,
DeepSpeed batch keys), `tracking` (metrics.jsonl rows, trackers, rows reduced over processes), `launch`
(launch checks, bf16 detection, quiet logs off the main process), `faults` (non-finite steps, stop signals,
output folder and disk checks, failed saves, what a failed run leaves).

Exit codes of `rewardkit train`: 0 done, or stopped by SIGTERM/SIGINT with a checkpoint saved; 2 bad input
or options, a resume whose config differs, an output folder or save that fails; 3 the loss or gradients
kept going non-finite (TrainingDiverged); 128+N a second signal N, or a first one whose save failed.
"""

from __future__ import annotations

import sys
import types

from rewardkit.train.faults import SaveError, TrainingDiverged, TrainingInterrupted
from rewardkit.precision import bf16_native
from rewardkit.train.launch import LaunchError, check_launch
from rewardkit.train.loop import TrainResult, train
from rewardkit.train.plan import resolve_batching
from rewardkit.train.sharded import fill_weights, full_params, sharded_weights, structure_copy
from rewardkit.train.tracking import TRACKERS, reduce_window, resolve_trackers

__all__ = ["TRACKERS", "LaunchError", "SaveError", "TrainResult", "TrainingDiverged", "TrainingInterrupted",
           "bf16_native", "check_launch", "fill_weights", "full_params", "reduce_window", "resolve_batching",
           "resolve_trackers", "sharded_weights", "structure_copy", "train"]


class _CallablePackage(types.ModuleType):
    """`rewardkit.train` is both this package and the function `rewardkit` exports: once the package is
    imported, Python sets `rewardkit.train` to it, so calling it must still run the training."""

    def __call__(self, *args, **kwargs) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
