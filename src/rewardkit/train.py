"""Reward-model training: one explicit accelerate loop, read it top to bottom.

setup (model, data, optimiser) -> loop (forward chosen+rejected together, pairwise loss, step, log,
eval, checkpoint) -> final eval, normalisation stats, save.
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
from rewardkit.data.collators import PairCollator
from rewardkit.data.formats import Columns, PreferenceExample, load_preferences
from rewardkit.data.tokenize import SequenceEncoder, tokenize_pairs
from rewardkit.evaluate import pair_rewards
from rewardkit.io import atomic_write
from rewardkit.losses import center_penalty, get_loss
from rewardkit.metrics import pairwise_stats
from rewardkit.models.reward_model import RewardModel

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_eval: dict[str, float]


def _load_data(cfg: TrainRunConfig) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    d = cfg.data
    common = dict(fmt=d.format, columns=Columns(**to_dict(d.columns)), on_error=d.on_error, split=d.split)
    train, _ = load_preferences(d.train, max_samples=d.max_samples, **common)
    if d.eval:
        held, _ = load_preferences(d.eval, **common)
    elif d.eval_size > 0:
        n = int(d.eval_size) if d.eval_size >= 1 else max(1, int(len(train) * d.eval_size))
        if n >= len(train):
            raise ValueError(f"data.eval_size={d.eval_size} leaves no training pairs (have {len(train)})")
        train, held = train[:-n], train[-n:]
    else:
        held = []
    return train, held


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def train(cfg: TrainRunConfig) -> TrainResult:
    """Train a reward model as `cfg` says; the model, metrics.jsonl and the resolved config land in
    `cfg.output_dir`."""
    t = cfg.train
    if not cfg.model.path or not cfg.data.train:
        raise ValueError("`model` and `data.train` are required")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    # accelerate keeps mixed precision in a process-wide singleton; forget the previous run's choice so
    # train() can be called again in one process (notebooks, tests). The process group is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="bf16" if t.bf16 else "no", gradient_accumulation_steps=t.grad_accum,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))

    # ---- model and data
    model, tok = RewardModel.from_pretrained(cfg.model.path, gguf_file=cfg.model.gguf_file,
                                             tokenizer=cfg.model.tokenizer, readout=cfg.model.readout,
                                             trust_remote_code=cfg.model.trust_remote_code, seed=cfg.seed)
    if t.disable_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    encoder = SequenceEncoder(tok, cfg.data.max_length, model.is_encoder)
    train_ex, eval_ex = _load_data(cfg)
    train_pairs = tokenize_pairs(encoder, train_ex, "train")
    eval_pairs = tokenize_pairs(encoder, eval_ex, "eval")
    log.info("%d training pairs, %d eval pairs", len(train_pairs), len(eval_pairs))
    loader = DataLoader(train_pairs, batch_size=t.batch_size, shuffle=True,  # type: ignore[arg-type]
                        collate_fn=PairCollator(tok.pad_token_id))
    steps_per_epoch = math.ceil(len(loader) / t.grad_accum)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))

    # ---- optimisation
    from transformers import get_scheduler

    loss_fn = get_loss(t.loss)
    optimizer = _optimizer(model, t.lr, t.weight_decay)
    scheduler = get_scheduler("constant_with_warmup" if t.scheduler == "constant" else t.scheduler, optimizer,
                              num_warmup_steps=int(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

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
        if not eval_pairs:
            return {}
        rc, rr = pair_rewards(model, eval_pairs, pad_id=tok.pad_token_id, batch_size=t.eval_batch_size,
                              device=accelerator.device)
        stats = pairwise_stats(rc, rr)
        stats["loss"] = float(loss_fn(rc, rr, margin=torch.tensor([p.margin for p in eval_pairs])).mean())
        log_row({"split": "eval", "step": step, **stats})
        log.info("eval step %d: accuracy %.4f loss %.4f", step, stats["accuracy"], stats["loss"])
        return stats

    # ---- loop
    bar = tqdm(total=total_steps, initial=step, disable=not (t.progress and accelerator.is_main_process),
               desc="train", dynamic_ncols=True)
    window = {"loss": 0.0, "correct": 0, "pairs": 0, "tokens": 0, "margin": 0.0, "rewards": []}
    t_window = time.perf_counter()
    model.train()
    while step < total_steps:
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        batch_in_epoch = skip_batches
        skip_batches = 0
        for batch in batches:
            batch_in_epoch += 1
            with accelerator.accumulate(model):
                rewards = model(batch.sequences)  # (2B,): chosen rows first
                rc, rr = rewards.chunk(2)
                loss = loss_fn(rc, rr, margin=batch.margin).mean()
                if t.center_rewards_coef:
                    loss = loss + t.center_rewards_coef * center_penalty(rc, rr).mean()
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            d = (rc - rr).detach()
            window["loss"] += float(loss.detach()) * d.numel()
            window["correct"] += int((d > 0).sum())
            window["pairs"] += d.numel()
            window["margin"] += float(d.sum())
            window["tokens"] += batch.sequences.num_tokens
            window["rewards"].append(rewards.detach().float().cpu())
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == total_steps:
                dt = time.perf_counter() - t_window
                r = torch.cat(window["rewards"])
                n = window["pairs"]
                row = {"split": "train", "step": step, "epoch": epoch + batch_in_epoch / len(loader),
                       "loss": window["loss"] / n, "accuracy": window["correct"] / n,
                       "margin_mean": window["margin"] / n, "reward_mean": float(r.mean()),
                       "reward_std": float(r.std(unbiased=False)), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm) if grad_norm is not None else None,
                       "pairs_per_s": n / dt, "tokens_per_s": window["tokens"] / dt}
                log_row(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}")
                window = {"loss": 0.0, "correct": 0, "pairs": 0, "tokens": 0, "margin": 0.0, "rewards": []}
                t_window = time.perf_counter()
            if t.eval_every and step % t.eval_every == 0 and step < total_steps:
                run_eval()
                model.train()
            if t.save_every and step % t.save_every == 0 and step < total_steps:
                _save_checkpoint(accelerator, out, step, epoch, batch_in_epoch, len(loader))
            if step >= total_steps:
                break
        else:
            epoch += 1
    bar.close()

    # ---- final eval, normalisation, save
    final = run_eval()
    unwrapped: RewardModel = accelerator.unwrap_model(model)
    unwrapped.temperature = 1.0  # a temperature fitted to the old weights does not hold for the new ones
    if final:
        unwrapped.mean, unwrapped.std = final["reward_mean"], final["reward_std"]
    else:
        rc, rr = pair_rewards(model, train_pairs[:1000], pad_id=tok.pad_token_id, batch_size=t.eval_batch_size,
                              device=accelerator.device)
        both = torch.cat([rc, rr])
        unwrapped.mean, unwrapped.std = float(both.mean()), float(both.std(unbiased=False))
        log.warning("no eval data: reward mean/std measured on up to 1000 training pairs")
    if accelerator.is_main_process:
        unwrapped.save_pretrained(out, tok, max_length=cfg.data.max_length)
        with atomic_write(out / "train_config.yaml") as fh:
            yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    accelerator.wait_for_everyone()
    return TrainResult(out, step, final)


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

