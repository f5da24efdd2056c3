"""Faster bf16 inference linears on CPUs: weights reordered once into oneDNN's blocked layout, bias in the GEMM.

Under bf16 autocast a CPU `nn.Linear` runs as addmm: it broadcasts the bias into the output (a copy as large
as the output) and oneDNN reorders the weight into its blocked layout on every call. `pack_linears` keeps a
reordered bf16 copy of each weight beside the module and routes inference calls through oneDNN's inner product
with the bias fused (the op inductor uses for frozen CPU graphs). Scores are unchanged (the same bf16 GEMM);
MiniLM scoring of 400 HH texts: 4.83-4.99 s against 5.00-5.52 s with autocast's linears (README).

Only inference takes the packed path: no autograd, CPU, bf16 autocast on; anything else runs `nn.Linear`'s own
forward. A weight replaced or modified in place since it was packed (seen from its data pointer and version
counter on every call) is packed again, and so is one after any call with autograd on (a fused optimiser's
step does not move the version counter). A change through `.data` with no such call between is not seen.
Parameters, state_dict and saving are untouched; the packed copies cost half the linears' fp32 size.
"""

from __future__ import annotations

import types

import torch
from torch import nn

_ATTR = "_rk_packed"  # (packed bf16 weight, bf16 bias or None, what the parameters were when packed)


def packing_available() -> bool:
    """True where this torch has oneDNN's bf16 inner product (CPU builds with mkldnn and a bf16-capable CPU)."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
                and hasattr(ops, "_reorder_linear_weight") and bool(ops._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False


def pack_linears(module: nn.Module) -> int:
    """Give every plain `nn.Linear` on the CPU under `module` the packed inference path; returns how many.
    Subclasses (quantised linears) and modules already packed are left alone."""
    if not packing_available():
        return 0
    n = 0
    for m in module.modules():
        if type(m) is not nn.Linear or hasattr(m, _ATTR) or m.weight.device.type != "cpu":
            continue
        _pack(m)
        m.forward = types.MethodType(_packed_forward, m)
        n += 1
    return n


def pack_for_inference(module: nn.Module, device: torch.device | str, bf16: bool) -> int:
    """`pack_linears` for a model loaded for scoring on `device` under bf16 autocast; elsewhere nothing."""
    return pack_linears(module) if bf16 and torch.device(device).type == "cpu" else 0


def _pack(m: nn.Linear) -> None:
    with torch.no_grad():
        w = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach().to(torch.bfloat16), None)
        b = None if m.bias is None else m.bias.detach().to(torch.bfloat16)
    setattr(m, _ATTR, (w, b, _stamp(m)))


def _stamp(m: nn.Linear) -> tuple:
    """Changes when a parameter is replaced or modified in place (load_state_dict, a foreach optimiser step)."""
    return tuple((p.data_ptr(), p._version) for p in (m.weight, m.bias) if p is not None)


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """x (..., in) -> (..., out): bf16, what autocast's linear returns."""
    w, b, stamp = getattr(self, _ATTR)
    if torch.is_grad_enabled():
        # The weights may be trained from here on, and a fused optimiser's step leaves their version counter
        # as it was: forget the packed copy so that the next inference call packs the weights it then finds.
        setattr(self, _ATTR, (w, b, None))
        return nn.Linear.forward(self, x)
    if (x.device.type != "cpu" or not torch.is_autocast_enabled("cpu")
            or torch.get_autocast_dtype("cpu") != torch.bfloat16):
        return nn.Linear.forward(self, x)
    if _stamp(self) != stamp:
        _pack(self)  # the weights changed since they were packed
        w, b, _ = getattr(self, _ATTR)
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), w, b, "none", [], "")
    return y.reshape(*x.shape[:-1], y.shape[-1])
