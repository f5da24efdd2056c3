"""Sharded weights (FSDP2, DeepSpeed ZeRO-3): whole weights for evaluation forwards, and the final save through
a weightless copy of the model filled with the gathered state; DeepSpeed's batch keys set from rewardkit's."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

# One logger for the whole package, named as before the split: log lines read `rewardkit.train: ...`.
log = logging.getLogger("rewardkit.train")


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


def deepspeed_settings(accelerator: Accelerator, batch_size: int, grad_accum: int, max_grad_norm: float) -> None:
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
