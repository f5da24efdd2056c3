"""Which training items make each micro-batch of this process, and how they are collated: length grouping,
token budgets and packing for packable objectives, a plain shuffle for the others; batches dealt to the
processes by `data.batching.RankBatches`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rewardkit.config import TrainConfig, TrainRunConfig
from rewardkit.data.batching import LengthGroupedBatchSampler, PackedBatchSampler, RankBatches
from rewardkit.data.mixing import follow_mixture
from rewardkit.data.packing import PackedPairCollator, flat_round_steps, unit_length
from rewardkit.models.backbone import varlen_attention
from rewardkit.models.lean_blocks import lean_blocks
from rewardkit.models.shared_casts import share_input_casts

# One logger for the whole package, named as before the split: log lines read `rewardkit.train: ...`.
log = logging.getLogger("rewardkit.train")


def resolve_batching(batching: str, *, flat: bool) -> str:
    """`auto` -> `random` for flat packed rows (they have no padding whatever the lengths, so grouping would
    only make the largest batches larger), `grouped` for padded layouts, where it cuts padding (README)."""
    if batching != "auto":
        return batching
    return "random" if flat else "grouped"


def resolve_pack_layout(pack_layout: str, device_type: str, attn_implementation: str) -> str:
    """`auto` -> `batch_rows` on CUDA under SDPA, `flat` elsewhere. On an H200 (MiniLM, 1,000 and 1,500 HH pairs,
    bf16) batch rows' one attention call per layer ran the loop 1.47x and 1.36x faster than flat's call per unit,
    at 8% padding and 1.6x the CUDA memory; on CPU flat is the faster one (README). Flash-attention models keep
    flat: transformers runs it as one varlen call per layer from the position ids."""
    if pack_layout != "auto":
        return pack_layout
    return "batch_rows" if device_type == "cuda" and not varlen_attention(attn_implementation) else "flat"


def run_pack_layout(pack_layout: str, model, resumed: str | None) -> str:
    """The layout this run packs with: `resumed` (the one a resumed checkpoint recorded) wins over what `auto`
    resolves to here, so a run resumed on another kind of device keeps its batch order (`train.batching=auto`
    follows the layout). An explicit layout that differs from `resumed` is already refused as a config change."""
    config = getattr(getattr(model, "hf", None), "config", None)  # every packable model kind has one
    here = resolve_pack_layout(pack_layout, next(model.parameters()).device.type,
                               getattr(config, "_attn_implementation", None) or "sdpa")
    if resumed and resumed != here:
        log.warning("pack layout: %s, as the resumed checkpoint was trained (auto would pick %s here); the batch "
                    "order stays the same", resumed, here)
        return resumed
    return here


def _item_tokens(item: Any) -> int:
    """Tokens of one training item (a pair, a ranking, a labelled sequence)."""
    if hasattr(item, "chosen"):
        return len(item.chosen.input_ids) + len(item.rejected.input_ids)
    if hasattr(item, "sequences"):
        return sum(len(s.input_ids) for s in item.sequences)
    if hasattr(item, "sequence"):
        return len(item.sequence.input_ids)
    return 1


def data_fingerprint(train: list, held_out: list) -> list[int]:
    """[training items, their tokens, eval items]: what a checkpoint records of the data it was trained on."""
    return [len(train), sum(_item_tokens(x) for x in train), len(held_out)]


def resolve_packing(packing: str, is_encoder: bool) -> str:
    """`train.packing` as the loop applies it: `auto` = plain for encoders, shared_prompt for decoders."""
    if packing == "auto":
        return "plain" if is_encoder else "shared_prompt"
    return packing


def train_batches(objective, items: list, model, pad_id: int, cfg: TrainRunConfig, num_processes: int = 1,
                  process_index: int = 0, layout: str | None = None) -> tuple[RankBatches, Callable, Callable, bool]:
    """(this process's micro-batches, collate, fetch: indices -> items, fixed: batches hold batch_size items).

    `layout`: the pack layout the loop resolved (`run_pack_layout`, which a resumed checkpoint can decide);
    None resolves `train.pack_layout` the same way, for a fresh run.

    Packable objectives (pairs) get length grouping, token budgets and packing; other families shuffle plainly.
    Fixed-size batches are drawn for the global batch (batch_size x processes) and split between the
    processes; token-budgeted and packed batches are per process and dealt in groups of similar token counts.
    """
    t = cfg.train
    deal = dict(num_processes=num_processes, process_index=process_index, seed=cfg.seed,
                cost=lambda i: _item_tokens(items[i]), units=lambda i: objective.loss_units(items[i]))
    global_batch = t.batch_size * num_processes

    def fetch(indices: list) -> list:
        return [tuple(items[i] for i in x) if isinstance(x, tuple) else items[x] for x in indices]

    if not objective.packable:
        if t.packing not in ("none", "auto") or t.max_tokens:
            raise ValueError(f"train.packing / train.max_tokens apply to pairwise losses, not {objective.name}")
        sampler = LengthGroupedBatchSampler([1] * len(items), batch_size=global_batch, seed=cfg.seed, group=False)
        return RankBatches(follow_mixture(sampler, items, None), split=True, **deal), objective.collator(pad_id), \
            fetch, True
    packing = resolve_packing(t.packing, model.is_encoder)
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
    impl = model.hf.config._attn_implementation or "sdpa"
    layout = layout or run_pack_layout(t.pack_layout, model, None)
    flat = layout == "flat" and impl != "eager"
    if packing != "none":
        log.info("pack layout: %s", "flat" if flat else "batch_rows")
    collate = (PackedPairCollator(pad_id, causal=not model.is_encoder, shared_prompt=packing == "shared_prompt",
                                  flat=flat, round_steps=flat_round_steps(next(model.parameters()).device))
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


def tune_backbone(model, t: TrainConfig, bf16: bool, device_type: str, sharded: bool = False) -> None:
    """The training-only switches on the backbone: activation checkpointing, lean norm/MLP blocks (not where
    `sharded` weights are gathered by submodule hooks), shared bf16 input casts, compile."""
    if t.gradient_checkpointing:
        model.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                                 every_n_layers=t.checkpoint_every)
    if t.lean_activations and not sharded:
        log.info("lean activations: %s", lean_blocks(model.hf))
    if t.shared_casts and bf16:
        share_input_casts(model.hf)
    if t.compile:
        if device_type == "cpu":
            log.warning("train.compile on CPU: measured slower than eager (README, torch.compile)")
        model.hf.base_model.compile(dynamic=True)


def log_global_batch(t: TrainConfig, unit: str, n_proc: int, total_steps: int, fixed: bool) -> None:
    """One log line: what an optimiser step holds, and how many steps the run takes."""
    if fixed:
        log.info("global batch: %d %s per process x %d process(es) x %d accumulation = %d %s per optimiser step; "
                 "%d steps", t.batch_size, unit, n_proc, t.grad_accum, t.batch_size * n_proc * t.grad_accum, unit,
                 total_steps)
    else:
        log.info("global batch: one token-budgeted micro-batch per process x %d process(es) x %d accumulation per "
                 "optimiser step; %d steps", n_proc, t.grad_accum, total_steps)
