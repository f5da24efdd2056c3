"""Reward-model training: one explicit accelerate loop, read it top to bottom.

setup (objective, model, data, optimiser) -> loop (forward, loss, step, log, eval, checkpoint) -> final
eval, normalisation stats, save. What differs between loss families (data format, batch -> loss, eval
metric) sits behind `rewardkit.objectives.Objective`; for pairs a micro-batch is chosen+rejected in
one forward.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rewardkit.config import TrainRunConfig, to_dict
from rewardkit.data.batching import LengthGroupedBatchSampler, PackedBatchSampler
from rewardkit.data.packing import PackedPairCollator, RowDataset, unit_length
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.io import atomic_write
from rewardkit.models.backbone import disable_dropout
from rewardkit.objectives import ObjectiveModule, StepWindow, make_objective

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_eval: dict[str, float]
    loop_seconds: float = 0.0  # wall time of the optimisation loop only (no loading, eval or saving)
    examples: int = 0  # training examples (pairs, prompts...) the loop processed
    tokens: int = 0  # real tokens the loop processed
    processed_tokens: int = 0  # tokens the forwards computed, padding included


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


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def train(cfg: TrainRunConfig) -> TrainResult:
    """Train a reward model as `cfg` says; the model, metrics.jsonl and the resolved config land in
    `cfg.output_dir`."""
    t = cfg.train
    cfg.validate()  # the value checks of every group, and the keys a run needs
    objective = make_objective(cfg)  # checks the loss name and its options before anything loads
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    # accelerate keeps mixed precision in a process-wide singleton; forget the previous run's choice so
    # train() can be called again in one process (notebooks, tests). The process group is kept.
    AcceleratorState._reset_state()
    bf16 = bf16_native() if t.bf16 is None else t.bf16
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=t.grad_accum,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))

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
    loader, sampler = _train_loader(objective, data.train, model, tok.pad_token_id, cfg)
    steps_per_epoch = math.ceil(len(loader) / t.grad_accum)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))

    # ---- optimisation
    from transformers import get_scheduler

    optimizer = _optimizer(model, t.lr, t.weight_decay)
    scheduler = get_scheduler("constant_with_warmup" if t.scheduler == "constant" else t.scheduler, optimizer,
                              num_warmup_steps=int(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    # accelerate wraps the module whose forward computes the loss (batch -> StepOutput), not the bare model
    net, optimizer, loader, scheduler = accelerator.prepare(ObjectiveModule(model, objective), optimizer, loader,
                                                            scheduler)

    step, epoch, skip_batches = 0, 0, 0
    resume = _latest_checkpoint(out) if t.resume == "auto" else (Path(t.resume) if t.resume else None)
    if resume is not None:
        accelerator.load_state(str(resume))
        state = json.loads((resume / "trainer_state.json").read_text())
        step, epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume, step, epoch, skip_batches)

    metrics_path = out / "metrics.jsonl"
    if resume is None:
        metrics_path.unlink(missing_ok=True)

    def log_row(row: dict) -> None:
        if accelerator.is_main_process:
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    def run_eval() -> dict[str, float]:
        if not data.eval:
            return {}
        stats = objective.evaluate(model, data.eval, pad_id=tok.pad_token_id, batch_size=t.eval_batch_size,
                                   device=accelerator.device)
        log_row({"split": "eval", "step": step, **stats})
        log.info("eval step %d: %s %.4f loss %.4f", step, objective.metric, stats[objective.metric], stats["loss"])
        return stats

    # ---- loop
    bar = tqdm(total=total_steps, initial=step, disable=not (t.progress and accelerator.is_main_process),
               desc="train", dynamic_ncols=True)
    window = StepWindow()
    totals = StepWindow()  # whole-run throughput for TrainResult
    net.train()
    while step < total_steps:
        loader.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        batch_in_epoch = skip_batches
        skip_batches = 0
        for batch in batches:
            batch_in_epoch += 1
            with accelerator.accumulate(net):
                res = net(batch)  # StepOutput: loss, rewards, metric sums
                accelerator.backward(res.loss)
                grad_norm = None
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(net.parameters(), t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window.add(res, batch.sequences.num_tokens, batch.sequences.input_ids.numel())
            totals.add(res, batch.sequences.num_tokens, batch.sequences.input_ids.numel())
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == total_steps:
                row = {"split": "train", "step": step, "epoch": epoch + batch_in_epoch / len(loader),
                       **window.row(objective.unit), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm) if grad_norm is not None else None}
                log_row(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", metric=f"{row.get(objective.metric, float('nan')):.3f}")
                window = StepWindow()
            if t.eval_every and step % t.eval_every == 0 and step < total_steps:
                run_eval()
                net.train()
            if t.save_every and step % t.save_every == 0 and step < total_steps:
                _save_checkpoint(accelerator, out, step, epoch, batch_in_epoch, len(loader))
            if step >= total_steps:
                break
        else:
            epoch += 1
    bar.close()
    loop_seconds = time.perf_counter() - totals.start

    # ---- final eval, normalisation, save
    final = run_eval()
    stats = final or objective.evaluate(model, data.train[:1000], pad_id=tok.pad_token_id,
                                        batch_size=t.eval_batch_size, device=accelerator.device)
    if not final:
        log.warning("no eval data: reward mean/std measured on up to 1000 training %s", objective.unit)
    model.temperature = 1.0  # a temperature fitted to the old weights does not hold for the new ones
    model.mean, model.std = stats["reward_mean"], stats["reward_std"]
    if accelerator.is_main_process:
        model.save_pretrained(out, tok, max_length=cfg.data.max_length)
        with atomic_write(out / "train_config.yaml") as fh:
            yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    accelerator.wait_for_everyone()
    return TrainResult(out, step, final, loop_seconds, totals.n, totals.tokens, totals.processed)


def resolve_batching(batching: str, *, flat: bool) -> str:
    """`auto` -> `random` for flat packed rows (they have no padding whatever the lengths, so grouping would
    only make the largest batches larger), `grouped` for padded layouts, where it cuts padding (README)."""
    if batching != "auto":
        return batching
    return "random" if flat else "grouped"


def _train_loader(objective, items: list, model, pad_id: int, cfg: TrainRunConfig):
    """The training DataLoader and its length-aware batch sampler (None for plain random batches).

    Packable objectives (pairs) get length grouping, token budgets and packing; other families shuffle plainly.
    """
    t = cfg.train
    if not objective.packable:
        if t.packing not in ("none", "auto") or t.max_tokens:
            raise ValueError(f"train.packing / train.max_tokens apply to pairwise losses, not {objective.name}")
        return DataLoader(items, batch_size=t.batch_size, shuffle=True, collate_fn=objective.collator(pad_id)), None
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
        return DataLoader(RowDataset(items), batch_sampler=sampler, collate_fn=collate), sampler
    # Otherwise batches come from the length-grouped sampler and packing (if any) happens inside the batch: one
    # padding-free row with per-unit attention (flat), or rows as wide as its longest sequence (batch_rows).
    # The flat layout brings its own SDPA-based attention; a model explicitly set to eager keeps batch rows.
    flat = t.pack_layout == "flat" and model.hf.config._attn_implementation != "eager"
    collate = (PackedPairCollator(pad_id, causal=not model.is_encoder, shared_prompt=packing == "shared_prompt",
                                  flat=flat)
               if packing != "none" else objective.collator(pad_id))
    batching = resolve_batching(t.batching, flat=flat and packing != "none")
    log.info("batching: %s", batching)
    if batching == "random" and not t.max_tokens:
        return DataLoader(items, batch_size=t.batch_size, shuffle=True, collate_fn=collate), None
    lengths = [max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in items]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=None if t.max_tokens else t.batch_size,
                                        max_tokens=t.max_tokens, seqs_per_item=2, seed=cfg.seed,
                                        group=batching == "grouped")
    return DataLoader(items, batch_sampler=sampler, collate_fn=collate), sampler


def _save_checkpoint(accelerator: Accelerator, out: Path, step: int, epoch: int, batch_in_epoch: int,
                     batches_per_epoch: int, keep: int = 2) -> None:
    """Resumable state (weights, optimiser, scheduler, RNG, data position); keeps the newest `keep`."""
    if batch_in_epoch >= batches_per_epoch:  # the epoch just ended: resume at the next one
        epoch, batch_in_epoch = epoch + 1, 0
    path = out / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        with atomic_write(path / "trainer_state.json") as fh:
            json.dump({"step": step, "epoch": epoch, "batches_in_epoch": batch_in_epoch}, fh)
        for old in sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

