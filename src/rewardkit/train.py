"""Reward-model training: one explicit accelerate loop, read it top to bottom.

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
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from tqdm.auto import tqdm

from rewardkit.config import ConfigError, TrainRunConfig, to_dict
from rewardkit.data.batching import LengthGroupedBatchSampler, PackedBatchSampler, RankBatches
from rewardkit.data.mixing import MixtureDataset, follow_mixture
from rewardkit.data.packing import PackedPairCollator, unit_length
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.io import atomic_write
from rewardkit.metrics import reward_stats
from rewardkit.models.backbone import disable_dropout
from rewardkit.objectives import ObjectiveModule, StepWindow, make_objective
from rewardkit.scoring import EvalShard, sharded_scoring

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb")
_CPU_LAUNCH = ("ACCELERATE_USE_CPU=true accelerate launch --config_file examples/accelerate/cpu_2proc.yaml "
               "-m rewardkit train ... (or ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m rewardkit train ...)")


class LaunchError(ConfigError):
    """A multi-process launch that would not train as asked (one line, says how to launch instead)."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_eval: dict[str, float]
    loop_seconds: float = 0.0  # wall time of the optimisation loop only (no loading, eval or saving)
    examples: int = 0  # training examples (pairs, prompts...) the loop processed, all processes together
    tokens: int = 0  # real tokens the loop processed, all processes together
    processed_tokens: int = 0  # tokens the forwards computed, padding included, all processes together
    num_processes: int = 1
    is_main_process: bool = True  # only the main process prints the summary (cli) and writes files


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel runs the update in one pass instead of a loop over tensors.
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def bf16_native() -> bool:
    """True where bf16 matmuls run in hardware: a bf16-capable GPU, or a CPU with AVX512-BF16 / AMX.
    Elsewhere CPU autocast emulates bf16 and is slower than fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def _latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last, after every process saved)."""
    ckpts = sorted((p for p in (out / "checkpoints").glob("step-*") if (p / "trainer_state.json").exists()),
                   key=_step_of)
    return ckpts[-1] if ckpts else None


def train(cfg: TrainRunConfig) -> TrainResult:
    """Train a reward model as `cfg` says; the model, metrics.jsonl and the resolved config land in
    `cfg.output_dir` (written by the main process only)."""
    t = cfg.train
    cfg.validate()  # the value checks of every group, and the keys a run needs
    trackers = resolve_trackers(t.report_to)
    objective = make_objective(cfg)  # checks the loss name and its options before anything loads
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)
    # accelerate keeps mixed precision in a process-wide singleton; forget the previous run's choice so
    # train() can be called again in one process (notebooks, tests). The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    bf16 = bf16_native() if t.bf16 is None else t.bf16
    accelerator = Accelerator(
        mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=t.grad_accum,
        # Batches are dealt to the processes here (RankBatches), not by accelerate; split_batches=True also
        # keeps accelerate's scheduler wrapper at one scheduler step per optimiser step.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=trackers or None, project_dir=str(out))
    check_launch(accelerator)
    # accelerate.backward divides every loss by this; a launcher's environment may have set its own
    accelerator.gradient_accumulation_steps = t.grad_accum
    main = accelerator.is_main_process
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    quiet = contextlib.nullcontext() if main else _quiet_logs()
    with quiet:
        if main:
            out.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        return _train(cfg, objective, accelerator, out, bf16, trackers, main, n_proc, rank)


def _train(cfg, objective, accelerator: Accelerator, out: Path, bf16: bool, trackers: list[str], main: bool,
           n_proc: int, rank: int) -> TrainResult:
    t = cfg.train
    resume = _latest_checkpoint(out) if t.resume == "auto" else (Path(t.resume) if t.resume else None)
    state: dict[str, Any] = {}
    if resume is not None:
        state = json.loads((resume / "trainer_state.json").read_text())
        if state.get("num_processes", 1) != n_proc:  # the data dealt per step and each process's RNG differ
            raise LaunchError(f"{resume} was written by {state.get('num_processes', 1)} process(es); resume it with "
                              f"as many (this launch has {n_proc})")
    # ---- model and data
    model, tok = objective.build_model(cfg)
    log.info("attention: %s", model.set_attention(cfg.model.attn_implementation))
    if t.disable_dropout:
        disable_dropout(model)
    encoder = SequenceEncoder(tok, cfg.data.max_length, model.is_encoder)
    data = objective.load_data(cfg, encoder)
    log.info("%s: %d training %s, %d eval %s", objective.name, len(data.train), objective.unit, len(data.eval),
             objective.unit)
    model.to(accelerator.device)  # prepare() may run the model (verbosity debiasing)
    objective.prepare(model, data.train, pad_id=tok.pad_token_id, batch_size=t.eval_batch_size,
                      device=accelerator.device)  # e.g. label statistics, debiasing lambdas
    if t.gradient_checkpointing:
        model.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                                 every_n_layers=t.checkpoint_every)
    if t.compile:
        model.hf.base_model.compile(dynamic=True)
    # A weighted mixture of sources is drawn anew every epoch (data.mixing); one source is used as it is.
    items = (MixtureDataset(data.train, [s.size for s in data.sources], [s.weight for s in data.sources],
                            seed=cfg.seed) if data.mixed else data.train)
    batches, collate, fetch, fixed = _train_batches(objective, items, model, tok.pad_token_id, cfg,
                                                    n_proc, rank)
    # Global micro-batches per epoch, counted after dealing them to the processes.
    steps_per_epoch = math.ceil(len(batches) / t.grad_accum)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    if fixed:
        log.info("global batch: %d %s per process x %d process(es) x %d accumulation = %d %s per optimiser step; "
                 "%d steps", t.batch_size, objective.unit, n_proc, t.grad_accum, t.batch_size * n_proc * t.grad_accum,
                 objective.unit, total_steps)
    else:
        log.info("global batch: one token-budgeted micro-batch per process x %d process(es) x %d accumulation per "
                 "optimiser step; %d steps", n_proc, t.grad_accum, total_steps)

    # ---- optimisation
    from transformers import get_scheduler

    optimizer = _optimizer(model, t.lr, t.weight_decay)
    scheduler = get_scheduler("constant_with_warmup" if t.scheduler == "constant" else t.scheduler, optimizer,
                              num_warmup_steps=int(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    module = ObjectiveModule(model, objective)
    # FSDP's transformer-based wrapping reads `_no_split_modules` from the prepared module: give it the backbone's.
    no_split = getattr(getattr(model, "hf", None), "_no_split_modules", None)
    if no_split:
        module._no_split_modules = list(no_split)
    _deepspeed_settings(accelerator, t.batch_size, t.grad_accum, t.max_grad_norm)
    # Sharded weights (FSDP, ZeRO-3) are gathered into a weightless copy for the final save (main process).
    template = structure_copy(model) if main and sharded_weights(accelerator) else None
    # accelerate wraps the module whose forward computes the loss (batch -> StepOutput), not the bare model
    net, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)

    step, epoch, skip_batches = 0, 0, 0
    if resume is not None:
        accelerator.load_state(str(resume))
        step, epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume, step, epoch, skip_batches)

    metrics_path = out / "metrics.jsonl"
    if main:
        _trim_metrics(metrics_path, step if resume is not None else None)
        if trackers:
            accelerator.init_trackers(cfg.train.project, config=_hparams(cfg),
                                      init_kwargs={"wandb": {"dir": str(out), "name": out.name}})

    def log_row(row: dict) -> None:
        if main:
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        if trackers:  # accelerator.log writes on the main process only
            accelerator.log({f"{row['split']}/{k}": v for k, v in row.items()
                             if k not in ("split", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)},
                            step=row["step"])

    shard = EvalShard(rank, n_proc, lambda x: accelerator.gather(x.to(accelerator.device)).cpu())

    def evaluate(items: list) -> dict[str, float]:
        with sharded_scoring(shard), full_params(accelerator, net):
            return objective.evaluate(model, items, pad_id=tok.pad_token_id, batch_size=t.eval_batch_size,
                                      device=accelerator.device)

    def run_eval() -> dict[str, float]:
        if not data.eval:
            return {}
        stats = evaluate(data.eval)
        if len(data.eval_sets) > 1:  # named sets: each one's metrics too, as <name>/<metric>
            for name, held in data.eval_sets.items():
                stats.update({f"{name}/{k}": v for k, v in evaluate(held).items()})
        log_row({"split": "eval", "step": step, **stats})
        log.info("eval step %d: %s %.4f loss %.4f", step, objective.metric, stats[objective.metric], stats["loss"])
        return stats

    # ---- loop
    bar = tqdm(total=total_steps, initial=step, disable=not (t.progress and main), desc="train", dynamic_ncols=True)
    window = StepWindow()
    totals = StepWindow()  # whole-run throughput for TrainResult
    ga = t.grad_accum
    net.train()
    while step < total_steps:
        batches.set_epoch(epoch)
        epoch_batches = list(batches)  # this process's micro-batches; the same count on every process
        n_batches = len(epoch_batches)
        for j in range(skip_batches, n_batches):
            mb = epoch_batches[j]
            first = j - j % ga
            group = epoch_batches[first:min(first + ga, n_batches)]  # the micro-batches of this optimiser step
            last = j == first + len(group) - 1
            step_items = sum(m.global_size for m in group)
            batch = collate(fetch(mb.indices)).to(accelerator.device)
            accelerator.sync_gradients = last  # DeepSpeed steps on the last micro-batch only
            with contextlib.nullcontext() if last else accelerator.no_sync(net):
                res = net(batch)  # StepOutput: loss, rewards, metric sums
                # loss = mean over this share; weighted so that the step's gradient is the mean over all its
                # items (accelerate divides by grad_accum, DDP averages over processes); a stand-in weighs 0.
                accelerator.backward(res.loss * (mb.size * n_proc * ga / step_items))
            tokens, processed = batch.sequences.num_tokens, batch.sequences.input_ids.numel()
            if mb.size == 0:  # a stand-in: keep the metric names, count nothing
                res = type(res)(res.loss * 0, res.rewards[:0], 0, {k: 0.0 for k in res.sums})
                tokens = processed = 0
            window.add(res, tokens, processed)
            totals.add(res, tokens, processed)
            if not last:
                continue
            grad_norm = None
            if t.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(net.parameters(), t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == total_steps:
                row = {"split": "train", "step": step, "epoch": epoch + (j + 1) / n_batches,
                       **reduce_window(accelerator, window, objective.unit), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm) if grad_norm is not None else None}
                log_row(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", metric=f"{row.get(objective.metric, float('nan')):.3f}")
                window = StepWindow()
            if t.eval_every and step % t.eval_every == 0 and step < total_steps:
                run_eval()
                net.train()
            if t.save_every and step % t.save_every == 0 and step < total_steps:
                _save_checkpoint(accelerator, out, step, epoch, j + 1, n_batches)
            if step >= total_steps:
                break
        else:
            epoch += 1
        skip_batches = 0
    bar.close()
    loop_seconds = time.perf_counter() - totals.start
    count = accelerator.reduce(torch.tensor([totals.n, totals.tokens, totals.processed], dtype=torch.float64,
                                            device=accelerator.device), "sum").tolist()

    # ---- final eval, normalisation, save
    final = run_eval()
    stats = final or evaluate(data.train[:1000])
    if not final:
        log.warning("no eval data: reward mean/std measured on up to 1000 training %s", objective.unit)
    model.temperature = 1.0  # a temperature fitted to the old weights does not hold for the new ones
    model.mean, model.std = stats["reward_mean"], stats["reward_std"]
    final_model = model
    if sharded_weights(accelerator):
        weights = accelerator.get_state_dict(net)  # a collective: the whole weights, on the main process
        if main:
            final_model = fill_weights(template, model, weights)
    if main:
        final_model.save_pretrained(out, tok, max_length=cfg.data.max_length)
        with atomic_write(out / "train_config.yaml") as fh:
            yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # what end_training() does, but keeping the process group for the caller
        tracker.finish()
    return TrainResult(out, step, final, loop_seconds, int(count[0]), int(count[1]), int(count[2]), n_proc, main)


# --------------------------------------------------------------------------- launch, trackers, collectives

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


def _hparams(cfg: TrainRunConfig) -> dict[str, Any]:
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


def _trim_metrics(path: Path, resumed_step: int | None) -> None:
    """A fresh run starts metrics.jsonl anew; a resumed one drops the rows logged after its checkpoint."""
    if resumed_step is None:
        path.unlink(missing_ok=True)
    elif path.exists():
        rows = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("step", 0) <= resumed_step]
        with atomic_write(path) as fh:
            fh.write("".join(r + "\n" for r in rows))


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Other processes than the main one log warnings and errors only."""
    logger = logging.getLogger("rewardkit")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def reduce_window(accelerator: Accelerator, window: StepWindow, unit: str) -> dict[str, float]:
    """`window.row(unit)` for the sums of every process: loss and metrics as means over all their examples,
    reward mean/std over all their rewards, throughput as all examples / tokens per second of wall time."""
    if accelerator.num_processes == 1:
        return window.row(unit)
    keys = sorted(window.sums)
    rewards = torch.cat(window.rewards).double() if window.rewards else torch.zeros(0, dtype=torch.float64)
    local = torch.tensor([window.loss, window.n, window.tokens, window.processed, *(window.sums[k] for k in keys),
                          float(rewards.sum()), float((rewards ** 2).sum()), rewards.numel()], dtype=torch.float64)
    total = accelerator.reduce(local.to(accelerator.device), "sum").cpu().tolist()
    loss, n, tokens, processed, *rest = total
    sums, (rsum, rsq, rn) = dict(zip(keys, rest[:len(keys)])), rest[len(keys):]
    dt = time.perf_counter() - window.start
    mean = rsum / rn if rn else float("nan")
    stats = ({"reward_mean": mean, "reward_std": math.sqrt(max(rsq / rn - mean * mean, 0.0))} if rn
             else reward_stats(torch.zeros(0)))
    return {"loss": loss / max(n, 1), **{k: v / max(n, 1) for k, v in sums.items()}, **stats,
            f"{unit}_per_s": n / dt, "tokens_per_s": tokens / dt,
            "padding_fraction": 1 - tokens / max(processed, 1)}


def sharded_weights(accelerator: Accelerator) -> bool:
    """True where no process holds the whole weights between forwards (FSDP, DeepSpeed ZeRO-3)."""
    dt = accelerator.distributed_type
    return dt == DistributedType.FSDP or (dt == DistributedType.DEEPSPEED
                                          and accelerator.state.deepspeed_plugin.zero_stage == 3)


@contextlib.contextmanager
def full_params(accelerator: Accelerator, net: torch.nn.Module) -> Iterator[None]:
    """Every process holds the whole weights inside this block, so that the bare model (inside `net`) can run
    evaluation forwards: FSDP2 units are unsharded, DeepSpeed ZeRO-3 parameters gathered; DDP and ZeRO-2 hold
    whole weights anyway."""
    dt = accelerator.distributed_type
    if dt == DistributedType.FSDP:
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in net.modules() if isinstance(m, FSDPModule)]
        for m in units:
            m.unshard()
        try:
            yield
        finally:
            for m in units:
                m.reshard()
    elif sharded_weights(accelerator):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(net.parameters()), modifier_rank=None):
            yield
    else:
        yield


def structure_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` (its modules, heads, adapters, attributes) whose weights live on the meta device,
    so it costs no memory; `fill_weights` gives it real ones."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = torch.nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(
            t, torch.nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def fill_weights(template: torch.nn.Module, model: torch.nn.Module, state: dict[str, torch.Tensor]):
    """`template` with the whole weights `state` (keys of the prepared ObjectiveModule, `model.` + the model's
    own) and the statistics the run set on `model` since the copy was made."""
    own = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    template.load_state_dict(own, strict=True, assign=True)
    for name, buf in list(template.named_buffers()):  # non-persistent buffers (rotary tables) are not in `state`
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            src = model.get_buffer(name)
            template.get_submodule(owner).register_buffer(leaf, src.detach().cpu().clone(), persistent=False)
    for attr in ("mean", "std", "temperature", "objective_info"):
        setattr(template, attr, getattr(model, attr))
    return template


def _deepspeed_settings(accelerator: Accelerator, batch_size: int, grad_accum: int, max_grad_norm: float) -> None:
    """DeepSpeed sizes its batch from the prepared data loaders; rewardkit deals batches itself and prepares
    none, so the batch sizes of the DeepSpeed config are set here from train.batch_size and train.grad_accum,
    and its clipping (DeepSpeed clips inside its step) from train.max_grad_norm: rewardkit's keys win."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    want = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": grad_accum,
            "train_batch_size": batch_size * accelerator.num_processes * grad_accum, "gradient_clipping": max_grad_norm}
    for key, value in want.items():
        if ds.get(key, "auto") not in ("auto", value):
            log.warning("DeepSpeed config: %s=%s replaced by %s (from rewardkit's train.* keys)", key, ds[key], value)
        ds[key] = value


# --------------------------------------------------------------------------- batches

def resolve_batching(batching: str, *, flat: bool) -> str:
    """`auto` -> `random` for flat packed rows (they have no padding whatever the lengths, so grouping would
    only make the largest batches larger), `grouped` for padded layouts, where it cuts padding (README)."""
    if batching != "auto":
        return batching
    return "random" if flat else "grouped"


def _item_tokens(item: Any) -> int:
    """Tokens of one training item (a pair, a ranking, a labelled sequence)."""
    if hasattr(item, "chosen"):
        return len(item.chosen.input_ids) + len(item.rejected.input_ids)
    if hasattr(item, "sequences"):
        return sum(len(s.input_ids) for s in item.sequences)
    if hasattr(item, "sequence"):
        return len(item.sequence.input_ids)
    return 1


def _train_batches(objective, items: list, model, pad_id: int, cfg: TrainRunConfig, num_processes: int = 1,
                   process_index: int = 0) -> tuple[RankBatches, Callable, Callable, bool]:
    """(this process's micro-batches, collate, fetch: indices -> items, fixed: batches hold batch_size items).

    Packable objectives (pairs) get length grouping, token budgets and packing; other families shuffle plainly.
    Fixed-size batches are drawn for the global batch (batch_size x processes) and split between the
    processes; token-budgeted and packed batches are per process and dealt in groups of similar token counts.
    """
    t = cfg.train
    deal = dict(num_processes=num_processes, process_index=process_index, seed=cfg.seed,
                cost=lambda i: _item_tokens(items[i]))
    global_batch = t.batch_size * num_processes

    def fetch(indices: list) -> list:
        return [tuple(items[i] for i in x) if isinstance(x, tuple) else items[x] for x in indices]

    if not objective.packable:
        if t.packing not in ("none", "auto") or t.max_tokens:
            raise ValueError(f"train.packing / train.max_tokens apply to pairwise losses, not {objective.name}")
        sampler = LengthGroupedBatchSampler([1] * len(items), batch_size=global_batch, seed=cfg.seed, group=False)
        return RankBatches(follow_mixture(sampler, items, None), split=True, **deal), objective.collator(pad_id), \
            fetch, True
    packing = t.packing
    if packing == "auto":
        packing = "plain" if model.is_encoder else "shared_prompt"
    if packing != "none" and t.row_length:
        # Fixed rows filled first-fit over the whole window: ~0.3% padding; best where attention is varlen (GPU).
        shared = packing == "shared_prompt"
        collate = PackedPairCollator(pad_id, causal=not model.is_encoder, shared_prompt=shared, row_length=t.row_length)
        sampler = PackedBatchSampler([unit_length(p, shared) for p in items], row_length=t.row_length,
                                     rows_per_batch=max(1, (t.max_tokens or t.row_length) // t.row_length),
                                     seed=cfg.seed)
        sampler = follow_mixture(sampler, items, lambda p: unit_length(p, shared))
        return RankBatches(sampler, split=False, **deal), collate, fetch, False
    # Otherwise batches come from the length-grouped sampler and packing (if any) happens inside the batch: one
    # padding-free row with per-unit attention (flat), or rows as wide as its longest sequence (batch_rows).
    # The flat layout brings its own SDPA-based attention; a model explicitly set to eager keeps batch rows.
    flat = t.pack_layout == "flat" and model.hf.config._attn_implementation != "eager"
    collate = (PackedPairCollator(pad_id, causal=not model.is_encoder, shared_prompt=packing == "shared_prompt",
                                  flat=flat)
               if packing != "none" else objective.collator(pad_id))
    batching = resolve_batching(t.batching, flat=flat and packing != "none")
    log.info("batching: %s", batching)
    def pair_length(p) -> int:
        return max(len(p.chosen.input_ids), len(p.rejected.input_ids))

    lengths = [pair_length(p) for p in items]
    if t.max_tokens:  # a budget per process: batches are per process, dealt in groups of similar cost
        sampler = LengthGroupedBatchSampler(lengths, max_tokens=t.max_tokens, seqs_per_item=2, seed=cfg.seed,
                                            group=batching == "grouped")
        return RankBatches(follow_mixture(sampler, items, pair_length), split=False, **deal), collate, fetch, False
    sampler = LengthGroupedBatchSampler(lengths, batch_size=global_batch, seqs_per_item=2, seed=cfg.seed,
                                        group=batching == "grouped")
    return RankBatches(follow_mixture(sampler, items, pair_length), split=True, **deal), collate, fetch, True


def _save_checkpoint(accelerator: Accelerator, out: Path, step: int, epoch: int, batch_in_epoch: int,
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
