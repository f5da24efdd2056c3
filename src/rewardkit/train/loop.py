"""The training loop, read it top to bottom: setup (objective, model, data, optimiser) -> loop (forward, loss,
step, log, eval, checkpoint) -> final eval, normalisation stats, save. The package docstring
(`rewardkit.train`) says how several processes share the work."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm

from rewardkit.config import TrainRunConfig, to_dict
from rewardkit.data.mixing import MixtureDataset
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.io import atomic_write
from rewardkit.models.backbone import disable_dropout
from rewardkit.objectives import ObjectiveModule, StepWindow, make_objective
from rewardkit.scoring import EvalShard, sharded_scoring
from rewardkit.train.checkpoints import restore, resume_point, save_checkpoint
from rewardkit.train.launch import bf16_native, check_launch, quiet_logs
from rewardkit.train.plan import train_batches
from rewardkit.train.sharded import deepspeed_settings, fill_weights, full_params, sharded_weights, structure_copy
from rewardkit.train.tracking import hparams, reduce_window, resolve_trackers, trim_metrics, write_row

# One logger for the whole package, named as before the split: log lines read `rewardkit.train: ...`.
log = logging.getLogger("rewardkit.train")


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
    quiet = contextlib.nullcontext() if main else quiet_logs()
    with quiet:
        if main:
            out.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        return _train(cfg, objective, accelerator, out, bf16, trackers, main, n_proc, rank)


def _train(cfg, objective, accelerator: Accelerator, out: Path, bf16: bool, trackers: list[str], main: bool,
           n_proc: int, rank: int) -> TrainResult:
    t = cfg.train
    resume, state = resume_point(out, t.resume, n_proc)
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
    batches, collate, fetch, fixed = train_batches(objective, items, model, tok.pad_token_id, cfg, n_proc, rank)
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
    deepspeed_settings(accelerator, t.batch_size, t.grad_accum, t.max_grad_norm)
    # Sharded weights (FSDP, ZeRO-3) are gathered into a weightless copy for the final save (main process).
    template = structure_copy(model) if main and sharded_weights(accelerator) else None
    # accelerate wraps the module whose forward computes the loss (batch -> StepOutput), not the bare model
    net, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)

    step, epoch, skip_batches = 0, 0, 0
    if resume is not None:
        step, epoch, skip_batches = restore(accelerator, resume, state)

    metrics_path = out / "metrics.jsonl"
    if main:
        trim_metrics(metrics_path, step if resume is not None else None)
        if trackers:
            accelerator.init_trackers(cfg.train.project, config=hparams(cfg),
                                      init_kwargs={"wandb": {"dir": str(out), "name": out.name}})

    log_row = functools.partial(write_row, path=metrics_path, accelerator=accelerator, trackers=trackers, main=main)

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
                save_checkpoint(accelerator, out, step, epoch, j + 1, n_batches)
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
