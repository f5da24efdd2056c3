"""The training loop, read it top to bottom: setup (objective, model, data, optimiser) -> loop (forward, loss,
step, log, eval, checkpoint) -> final eval, normalisation stats, save. The package docstring
(`rewardkit.train`) says how several processes share the work."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm

from rewardkit.config import TrainRunConfig, to_dict
from rewardkit.config.outputs import check_output_dir
from rewardkit.data.mixing import MixtureDataset
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.io import atomic_write
from rewardkit.models.backbone import disable_dropout
from rewardkit.models.positions import fit_max_length
from rewardkit.models.segment_attention import planless_attention
from rewardkit.objectives import ObjectiveModule, StepWindow, make_objective
from rewardkit.scoring import EvalShard, sharded_scoring
from rewardkit.scoring.judges import judge_class
from rewardkit.train.checkpoints import (check_resumed_data, check_resumed_precision, latest_checkpoint,
                                         remove_partial, restore, resume_point, save_checkpoint)
from rewardkit.train.host_memory import release_freed_memory
from rewardkit.train.faults import (StopSignals, TrainingDiverged, TrainingInterrupted, any_process, check_free_space,
                                    clean_failed_run, diverged_message, grads_finite, peer_failure, saving)
from rewardkit.precision import bf16_native, precision_name
from rewardkit.train.launch import check_launch, quiet_logs
from rewardkit.train.plan import data_fingerprint, log_global_batch, run_pack_layout, train_batches, tune_backbone
from rewardkit.train.sharded import deepspeed_settings, fill_weights, full_params, sharded_weights, structure_copy
from rewardkit.train.tracking import (RecentRewards, hparams, reduce_window, resolve_trackers, resumed_log_window,
                                      save_log_window, trim_metrics, write_row)

# One logger for the whole package, named as before the split: log lines read `rewardkit.train: ...`.
log = logging.getLogger("rewardkit.train")


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_eval: dict[str, Any]  # the final eval's metrics and what loading counted (ObjectiveData.counts)
    loop_seconds: float = 0.0  # wall time of the optimisation loop only (no loading, eval or saving)
    examples: int = 0  # training examples (pairs, prompts...) the loop processed, all processes together
    tokens: int = 0  # real tokens the loop processed, all processes together
    processed_tokens: int = 0  # tokens the forwards computed, padding included, all processes together
    num_processes: int = 1
    is_main_process: bool = True  # only the main process prints the summary (cli) and writes files
    stopped: str | None = None  # the signal (SIGTERM, SIGINT) that stopped the run before its end
    checkpoint: Path | None = None  # where a stopped run saved its state (train.resume=auto continues it)


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
    `cfg.output_dir` (written by the main process only).

    Faults (`rewardkit.train.faults`): a step whose loss or gradient is not finite is skipped and counted, and
    `train.max_bad_steps` of them in a row raise TrainingDiverged (exit 3, no model saved); SIGTERM or SIGINT
    saves a checkpoint and returns a result with `stopped` set (a second signal: TrainingInterrupted); a failed
    save raises SaveError (exit 2) and leaves what was there before. The output folder is created once the
    model and data are loaded; a run that fails leaves a resumable checkpoint or nothing of its own.

    Precision: every eval, and any statistics pass, runs under the loop's own bf16 autocast when the loop uses it
    (`train.bf16`, default: where bf16 is native), one forward per sequence. The reward mean/std saved in
    config.json (`rewardkit.mean/std`, top-level `mean`/`std`) are the mean and population std of:
    - with an eval set: the rewards of every eval sequence (chosen and rejected alike) under the final weights,
      from the final eval's own forward (no extra pass);
    - without one (`train.reward_stats=loop`, default): the rewards the training forwards already computed over
      the last epoch (the last epoch's worth of good micro-batches: skipped steps excluded; a run shorter than an
      epoch uses the micro-batches it ran; a resumed one also those its checkpoint kept), in training mode and
      at the training precision, with the weights as they were at each step, so they trail the final weights by
      up to one epoch of updates;
    - without one and `train.reward_stats=pass`: one more forward over the first 1000 training examples with the
      final weights.
    Judges that never normalise (pairwise rankers, generative judges) skip the statistics without an eval set."""
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
    if main:
        check_output_dir(str(out), "output_dir")  # again: train() may be called without the CLI's validate
    created = not out.exists()
    quiet = contextlib.nullcontext() if main else quiet_logs()
    with quiet, StopSignals() as signals:
        try:
            return _train(cfg, objective, accelerator, out, bf16, trackers, main, n_proc, rank, signals)
        except BaseException as e:
            if main:
                clean_failed_run(out, created, keep_metrics=isinstance(e, TrainingDiverged),
                                 has_checkpoint=latest_checkpoint(out) is not None)
            if isinstance(e, KeyboardInterrupt) and signals.hard is not None:
                last = latest_checkpoint(out)
                raise TrainingInterrupted(
                    f"stopped at once by a second {signals.name}: nothing saved since "
                    f"{last if last is not None else 'the start (no checkpoint)'}", signals.hard) from None
            if n_proc > 1 and (lost := peer_failure(e, rank)) is not None:
                raise lost from e
            raise


def _train(cfg, objective, accelerator: Accelerator, out: Path, bf16: bool, trackers: list[str], main: bool,
           n_proc: int, rank: int, signals: StopSignals) -> TrainResult:
    t = cfg.train
    flat_cfg = hparams(cfg)  # saved in every checkpoint; a resume with a run-changing difference is refused
    resume, state = resume_point(out, t.resume, n_proc, flat_cfg)
    check_resumed_precision(state, bf16, t.bf16 is None, resume)
    # ---- model and data
    model, tok = objective.build_model(cfg)
    fit_max_length(model, cfg.data.max_length, 0, key="data.max_length")  # longer than its position table?
    log.info("attention: %s", model.set_attention(cfg.model.attn_implementation))
    if t.disable_dropout:
        disable_dropout(model)
    encoder = SequenceEncoder(tok, cfg.data.max_length, model.is_encoder, getattr(model, "token_types", True))
    data = objective.load_data(cfg, encoder)
    log.info("%s: %d training %s, %d eval %s", objective.name, len(data.train), objective.unit, len(data.eval),
             objective.unit)
    fingerprint = data_fingerprint(data.train, data.eval)
    check_resumed_data(state, fingerprint, resume)
    model.to(accelerator.device)  # prepare() may run the model (verbosity debiasing)
    objective.prepare(model, data.train, pad_id=tok.pad_token_id, batch_size=t.eval_batch_size,
                      device=accelerator.device)  # e.g. label statistics, debiasing lambdas
    if main:  # data and model are loaded and checked: only now does the output folder appear
        check_free_space(out, model, t.save_every)
        out.mkdir(parents=True, exist_ok=True)
        remove_partial(out)  # checkpoint folders of saves a kill interrupted
    accelerator.wait_for_everyone()
    tune_backbone(model, t, bf16, accelerator.device.type, sharded=sharded_weights(accelerator))
    # A weighted mixture of sources is drawn anew every epoch (data.mixing); one source is used as it is.
    items = (MixtureDataset(data.train, [s.size for s in data.sources], [s.weight for s in data.sources],
                            seed=cfg.seed) if data.mixed else data.train)
    layout = run_pack_layout(t.pack_layout, model, state.get("pack_layout"))
    batches, collate, fetch, fixed = train_batches(objective, items, model, tok.pad_token_id, cfg, n_proc, rank,
                                                   layout=layout)
    # Global micro-batches per epoch, counted after dealing them to the processes.
    steps_per_epoch = math.ceil(len(batches) / t.grad_accum)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    log_global_batch(t, objective.unit, n_proc, total_steps, fixed)

    # ---- optimisation
    from transformers import get_scheduler

    optimizer = _optimizer(model, t.lr, t.weight_decay)
    scheduler = get_scheduler("constant_with_warmup" if t.scheduler == "constant" else t.scheduler, optimizer,
                              num_warmup_steps=math.ceil(t.warmup_ratio * total_steps),  # as HF/TRL/OpenRLHF
                              num_training_steps=total_steps)
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
    saved_step = None  # the step of the checkpoint in out/checkpoints that holds the current state, if any
    if resume is not None:
        step, epoch, skip_batches = restore(accelerator, resume, state)
        if resume.parent.resolve() == (out / "checkpoints").resolve():
            saved_step = step

    metrics_path = out / "metrics.jsonl"
    if main:
        trim_metrics(metrics_path, step if resume is not None else None)
        if trackers:
            accelerator.init_trackers(cfg.train.project, config=hparams(cfg),
                                      init_kwargs={"wandb": {"dir": str(out), "name": out.name}})

    log_row = functools.partial(write_row, path=metrics_path, accelerator=accelerator, trackers=trackers, main=main)

    shard = EvalShard(rank, n_proc, lambda x: accelerator.gather(x.to(accelerator.device)).cpu())

    def evaluate(items: list) -> dict[str, float]:
        # at the training precision: the loop's bf16 autocast (scoring's bf16=False keeps a caller's autocast)
        with sharded_scoring(shard), full_params(accelerator, net), \
                torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bf16):
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
    window, skipped, good = resumed_log_window(resume, rank)  # the good steps since the last row, their counts
    recent = RecentRewards.resumed(resume, rank)  # the last epoch's training rewards: mean/std without eval data
    totals = StepWindow()  # whole-run throughput for TrainResult
    micro: list = []  # (StepOutput, tokens, processed) of this optimiser step's micro-batches
    losses_finite = True
    in_a_row = state.get("bad_in_a_row", 0)  # consecutive skipped steps (a checkpoint carries the count)
    ga = t.grad_accum

    def save(batch_in_epoch: int, n_batches: int) -> Path:
        path = out / "checkpoints" / f"step-{step}"
        with saving("checkpoint", path, "the previous checkpoints are untouched"):
            return save_checkpoint(accelerator, out, step, epoch, batch_in_epoch, n_batches,
                                   extra={"config": flat_cfg, "bad_in_a_row": in_a_row,
                                          "pack_layout": layout, "bf16": bf16,
                                          "data": fingerprint},
                                   write_own=lambda d: (recent.save(d, rank),
                                                        save_log_window(d, rank, window, skipped, good)))

    def stop(batch_in_epoch: int, n_batches: int) -> TrainResult:
        """A stop signal reached some process: save where the run stands (unless a checkpoint of this very
        state exists) and return; a failed save is TrainingInterrupted (exit 128 + the signal)."""
        name = signals.name if signals.signum is not None else "a stop signal (on another process)"
        try:
            ckpt = out / "checkpoints" / f"step-{step}" if saved_step == step else save(batch_in_epoch, n_batches)
        except OSError as e:
            raise TrainingInterrupted(f"{name} at step {step} and the checkpoint could not be saved: {e}",
                                      signals.signum or signal.SIGTERM) from e
        bar.close()
        log.warning("%s at step %d: state saved in %s; continue with train.resume=auto (same config)", name, step,
                    ckpt)
        for tracker in accelerator.trackers:
            tracker.finish()
        return TrainResult(out, step, {}, time.perf_counter() - totals.start, num_processes=n_proc,
                           is_main_process=main, stopped=name, checkpoint=ckpt)

    net.train()
    while step < total_steps:
        batches.set_epoch(epoch)
        epoch_batches = list(batches)  # this process's micro-batches; the same count on every process
        n_batches = len(epoch_batches)
        recent.new_epoch(n_batches)
        for j in range(skip_batches, n_batches):
            mb = epoch_batches[j]
            first = j - j % ga
            if j == first and any_process(accelerator, signals.signum is not None)[0]:  # between two steps
                return stop(j, n_batches)
            group = epoch_batches[first:min(first + ga, n_batches)]  # the micro-batches of this optimiser step
            last = j == first + len(group) - 1
            step_units = sum(m.global_units for m in group)
            batch = collate(fetch(mb.indices)).to(accelerator.device)
            accelerator.sync_gradients = last  # DeepSpeed steps on the last micro-batch only
            with contextlib.nullcontext() if last else accelerator.no_sync(net):
                res = net(batch)  # StepOutput: loss, rewards, metric sums
                losses_finite &= bool(torch.isfinite(res.loss.detach()))
                # loss = mean over this share's loss terms (items, labelled values, steps); weighted so that the
                # step's gradient is the mean over all its terms (accelerate divides by grad_accum, DDP averages
                # over processes); a stand-in weighs 0.
                with planless_attention(accelerator.device):  # checkpointed layers run attention again here
                    accelerator.backward(res.loss * (mb.units * n_proc * ga / max(step_units, 1)))
            tokens, processed = batch.sequences.num_tokens, batch.sequences.input_ids.numel()
            res.units = mb.units  # the logged loss is weighted as the gradient is
            if mb.size == 0:  # a stand-in: keep the metric names, count nothing
                res = type(res)(res.loss * 0, res.rewards[:0], 0, {k: 0.0 for k in res.sums}, 0)
                tokens = processed = 0
            micro.append((res, tokens, processed))
            totals.add(res, tokens, processed)
            if not last:
                continue
            grad_norm = None
            if t.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(net.parameters(), t.max_grad_norm)
            # A non-finite loss (any micro-batch, any process) or gradient skips the update, as a grad scaler
            # does; the step still counts (its data is consumed, the schedule moves on). Under DeepSpeed the
            # engine has already stepped inside backward: such steps are counted and stop the run, not undone.
            (bad,) = any_process(accelerator, not (losses_finite and grads_finite(list(net.parameters()), grad_norm)))
            if bad:
                in_a_row, skipped = in_a_row + 1, skipped + 1
                log.warning("step %d: loss %s, grad norm %s: not finite, optimiser step skipped (%d in a row)",
                            step + 1, float(micro[-1][0].loss.detach()),
                            None if grad_norm is None else float(grad_norm), in_a_row)
            else:
                optimizer.step()
                for r in micro:
                    window.add(*r)
                    recent.add(r[0].rewards)
                in_a_row, good = 0, good + 1
            lr = scheduler.get_last_lr()[0]  # the lr this step ran at (logged; HF logs it the same way)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if t.trim_memory and accelerator.device.type == "cpu":  # freed activations back to the OS
                release_freed_memory()
            last_loss = float(micro[-1][0].loss.detach())
            micro, losses_finite = [], True
            step += 1
            bar.update(1)
            diverged = in_a_row >= t.max_bad_steps
            if step % t.log_every == 0 or step == total_steps or diverged:
                row = {"split": "train", "step": step, "epoch": epoch + (j + 1) / n_batches,
                       **(reduce_window(accelerator, window, objective.unit) if good else {}),
                       "lr": lr,
                       "grad_norm": float(grad_norm) if grad_norm is not None else None, "skipped_steps": skipped}
                log_row(row)
                if good:
                    bar.set_postfix(loss=f"{row['loss']:.4f}",
                                    metric=f"{row.get(objective.metric, row['loss']):.3f}")  # attributes: mse = loss
                window, skipped, good = StepWindow(), 0, 0
            if diverged:
                raise TrainingDiverged(diverged_message(step, in_a_row, last_loss, row["grad_norm"], out,
                                                        latest_checkpoint(out)))
            if t.eval_every and step % t.eval_every == 0 and step < total_steps:
                run_eval()
                net.train()
            if t.save_every and step % t.save_every == 0 and step < total_steps:
                if in_a_row:  # keep the last checkpoint taken after a good step: it is what a resume should use
                    log.warning("step %d: no checkpoint while steps are being skipped", step)
                else:
                    save(j + 1, n_batches)
                    saved_step = step
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
    stats, source = final, "eval"
    # Judges (pairwise rankers, generative) never normalise: no statistics to measure without an eval set.
    if not final and judge_class(getattr(model, "kind", None) or objective.model_kind).pointwise:
        if t.reward_stats == "pass" or not recent.parts:  # asked for, or the loop computed nothing (resumed at the end)
            stats, source = evaluate(data.train[:1000]), "training"
            log.info("no eval data: reward mean/std measured on up to 1000 training %s", objective.unit)
        else:
            stats, source = recent.stats(accelerator), "last epoch's training"
    model.temperature = 1.0  # a temperature fitted to the old weights does not hold for the new ones
    if stats:
        model.mean, model.std = stats["reward_mean"], stats["reward_std"]
    if not (math.isfinite(model.mean) and math.isfinite(model.std)):  # never save a model whose rewards are NaN
        raise TrainingDiverged(f"the trained model's rewards are not finite (reward mean {model.mean}, std "
                               f"{model.std} on the {source} data): no model saved in {out}")
    final_model = model
    if sharded_weights(accelerator):
        weights = accelerator.get_state_dict(net)  # a collective: the whole weights, on the main process
        if main:
            final_model = fill_weights(template, model, weights)
    if main:
        last = latest_checkpoint(out)
        with saving("the model into", out, "what was there before is untouched" +
                    (f"; train.resume=auto continues from {last}" if last is not None else "")):
            final_model.precision = precision_name(bf16)  # scoring's default follows it (`rewardkit.precision`)
            final_model.save_pretrained(out, tok, max_length=cfg.data.max_length)
            with atomic_write(out / "train_config.yaml") as fh:
                yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # what end_training() does, but keeping the process group for the caller
        tracker.finish()
    return TrainResult(out, step, {**final, **data.counts}, loop_seconds, int(count[0]), int(count[1]),
                       int(count[2]), n_proc, main)
