"""Training blocks that keep fewer activations for backward: RMSNorm and the gated (SwiGLU) MLP.

Autograd keeps every intermediate an op needs for its own backward. In a Llama-style layer that is, per token:
the RMSNorm's fp32 input AND its fp32 normalised copy (x * 1/rms, kept by the weight multiply), twice a layer;
and four [intermediate]-wide tensors in the MLP: gate, silu(gate), up and their product (kept by down_proj).
For SmolLM2 on one 8-pair HH micro-batch those were 0.56 GB and 0.84 GB of the 2.26 GB autograd held
(`saved_tensors_hooks` count). The two functions here compute the same forward with the same ops (bit-identical
outputs) but keep only what backward cannot rebuild in one cheap pass: the norm keeps its input and 1/rms
(recomputing x * 1/rms), the MLP keeps its input, gate and up (recomputing silu(gate) and the product).

`lean_blocks(model)` swaps the forward of every module that has the standard shape (a `weight` and
`variance_epsilon` norm; `gate_proj`/`up_proj`/`down_proj` plain bias-free linears with SiLU), after checking on
a small random input that the module's own forward gives the same numbers, so variants with another formula
(Gemma's 1 + weight, other activations) keep theirs. Adapter-wrapped projections (LoRA) are not plain linears
and are left alone. Parameters are read from the modules directly, so it is for weights each process holds
whole (not DeepSpeed ZeRO-3 or FSDP, whose submodule hooks gather them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_SILU = ("SiLU", "SiLUActivation")  # torch's and transformers' SiLU modules


class _RMSNorm(torch.autograd.Function):
    """y = weight * (x * rsqrt(mean(x^2) + eps)), computed in fp32 as transformers' LlamaRMSNorm does.
    Keeps x ([..., H]) and 1/rms ([..., 1]); backward rebuilds the normalised x."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        y = weight * (x32 * rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        n = x.to(torch.float32) * rstd  # [..., H], the normalised input, fp32
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (dy * n.to(x.dtype)).sum(dim=tuple(range(dy.dim() - 1))).to(weight.dtype)
        dx = None
        if ctx.needs_input_grad[0]:
            dn = (dy * weight).to(torch.float32)
            # d/dx of x * rsqrt(mean(x^2)): rstd * (dn - n * mean(dn * n))
            c = (dn * n).mean(-1, keepdim=True)
            dx = dn.sub_(n.mul_(c)).mul_(rstd).to(x.dtype)
        return dx, dw, None


class _GatedMLP(torch.autograd.Function):
    """y = down(silu(gate(x)) * up(x)) with x [..., H], weights [I, H], [I, H], [H, I], one dtype. Keeps x, gate
    and up ([..., I]); backward recomputes silu(gate) and the product instead of holding them."""

    @staticmethod
    def forward(ctx, x, wg, wu, wd):
        g = F.linear(x, wg)
        u = F.linear(x, wu)
        y = F.linear(F.silu(g) * u, wd)
        ctx.save_for_backward(x, wg, wu, wd, g, u)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, wg, wu, wd, g, u = ctx.saved_tensors
        need_x, need_g, need_u, need_d = ctx.needs_input_grad[:4]
        a = F.silu(g)
        dy2 = dy.reshape(-1, dy.shape[-1])
        dwd = dy2.t().mm((a * u).reshape(-1, a.shape[-1])) if need_d else None
        dp = dy.matmul(wd)  # [..., I]
        du = dp * a
        dg = torch.ops.aten.silu_backward(dp.mul_(u), g)  # dp is not needed after this
        dx = dg.matmul(wg) + du.matmul(wu) if need_x else None
        x2 = x.reshape(-1, x.shape[-1])
        dwg = dg.reshape(-1, dg.shape[-1]).t().mm(x2) if need_g else None
        dwu = du.reshape(-1, du.shape[-1]).t().mm(x2) if need_u else None
        return dx, dwg, dwu, dwd


def _norm_forward(module: nn.Module):
    def forward(hidden_states):
        return _RMSNorm.apply(hidden_states, module.weight, module.variance_epsilon)
    return forward


def _mlp_forward(module: nn.Module):
    def forward(x):
        ws = (module.gate_proj.weight, module.up_proj.weight, module.down_proj.weight)
        dev = x.device.type
        if torch.is_autocast_enabled(dev):  # the casts autocast would make for each linear, made once here
            dtype = torch.get_autocast_dtype(dev)
            x, ws = x.to(dtype), tuple(w.to(dtype) for w in ws)
        return _GatedMLP.apply(x, *ws)
    return forward


def _is_norm(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return (type(m).__name__.endswith("RMSNorm") and isinstance(w, nn.Parameter) and w.dim() == 1
            and isinstance(getattr(m, "variance_epsilon", None), float))


def _is_mlp(m: nn.Module) -> bool:
    projections = [getattr(m, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    return (all(type(p) is nn.Linear and p.bias is None for p in projections)
            and type(getattr(m, "act_fn", None)).__name__ in _SILU)


def _same_forward(module: nn.Module, lean, width: int) -> bool:
    """The module's own forward and the lean one agree on a small random input (fp32, no grad)."""
    p = next(module.parameters())
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    with torch.no_grad(), torch.autocast(p.device.type, enabled=False):
        return torch.allclose(module(x), lean(x), rtol=1e-5, atol=1e-6)


def lean_blocks(model: nn.Module) -> dict[str, int]:
    """Swap in the lean forward on every matching module (see the module docstring). Idempotent; returns how
    many norms and MLPs it changed now."""
    done = {"norms": 0, "mlps": 0}
    checked: dict[type, bool] = {}  # one check per class: its forward's formula is the class's
    for m in model.modules():
        if getattr(m, "_rk_lean", False):
            continue
        if _is_norm(m):
            kind, lean, width = "norms", _norm_forward(m), m.weight.shape[0]
        elif _is_mlp(m):
            kind, lean, width = "mlps", _mlp_forward(m), m.gate_proj.in_features
        else:
            continue
        if type(m) not in checked:
            checked[type(m)] = _same_forward(m, lean, width)
        if checked[type(m)]:
            m.forward = lean
            m._rk_lean = True
            done[kind] += 1
    return done
