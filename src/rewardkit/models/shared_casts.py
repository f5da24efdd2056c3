"""One autocast cast per shared input instead of one per projection.

Under bf16 autocast every `nn.Linear` casts its fp32 input to bf16 itself. In a transformer block the same fp32
tensor (a norm's output) feeds q, k and v (BERT: query, key, value), and gate and up in gated MLPs, so autocast
casts it three or two times, and backward casts each of their gradients back and adds them in fp32. On a CPU
with native bf16 those casts were 19% of a SmolLM2 training step's time (README, "what limits MFU"). A forward
pre-hook on the module that owns the projections casts the input once; autocast then finds bf16 and passes it
through. The projections' gradients are then summed in bf16 before the one cast back, as in a bf16 model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Projection names that read one shared input inside their parent module (Llama/Qwen2/Mistral/Gemma attention
# and gated MLP, BERT-style self-attention). A parent qualifies when it owns two or more of one group.
SHARED_INPUT_GROUPS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"}, {"query", "key", "value"})


def _cast_once(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
    """Pre-hook: the first tensor input (positional or `hidden_states`) to the autocast dtype, under autocast."""
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or not torch.is_autocast_enabled(x.device.type):
        return None
    dtype = torch.get_autocast_dtype(x.device.type)
    if x.dtype == dtype or x.dtype == torch.float64:
        return None
    x = x.to(dtype)
    return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})


def share_input_casts(model: nn.Module) -> int:
    """Register the pre-hook on every module owning a group of SHARED_INPUT_GROUPS; returns how many. Idempotent
    (a module hooked once is skipped), and a no-op outside autocast."""
    n = 0
    for module in model.modules():
        children = {name for name, _ in module.named_children()}
        if getattr(module, "_rk_shared_cast", False) or not any(len(g & children) >= 2 for g in SHARED_INPUT_GROUPS):
            continue
        module.register_forward_pre_hook(_cast_once, with_kwargs=True)
        module._rk_shared_cast = True
        n += 1
    return n
