"""Variable-length attention without FlashAttention: one attention call per packed unit.

A flat packed batch holds every sequence of a micro-batch in ONE row with no padding at all. The linear layers
see (1, T, H) and never care where sequences start; only attention must stay inside each unit. FlashAttention
varlen does that on GPUs from the position ids; this does it anywhere SDPA runs (CPU included), and also knows
the shared-prompt pattern ([prompt][chosen][rejected], rejected never sees chosen), which varlen cannot express.

On CPU under bf16, units of up to 512 tokens skip SDPA and run as three explicit ops (scores, softmax,
weighted sum) with a hand-written backward (one autograd Function a unit, `_UnitAttention`), which beats the
CPU flash kernel's at those lengths (README, "Training loop and throughput"); for longer units the flash kernel wins again and its O(n) memory matters, so they keep it.
Those ops run at the unit's length rounded up to EXPLICIT_MULTIPLE: oneDNN compiles a matmul kernel for each
new shape, and per-unit lengths made nearly every call a new one (on an AMX CPU, 400 HH-length units through
one layer, forward + backward: 1.84 s at their own lengths, 1.37 s padded to 32, and 0.9 GB less memory held
by compiled kernels).
The choice follows the dtype attention computes in: under bf16 autocast, RoPE models' fp32 queries and keys
(the rotation multiplies by fp32 cos/sin) are cast to bf16 and take the explicit ops too (SmolLM2's loop: ~8%
faster than the flash kernel they took before). In fp32 the flash kernel is the faster one at every length
(measured on an AVX2 CPU: 1.3-1.7x forward + backward, 1.5-1.9x forward only, 128-512 tokens, head dim 32), so
fp32 units always take it. Without autograd (scoring, eval, serving) every unit takes the flash kernel as well:
its forward beats the explicit ops in bf16 too. Measured on a 2-core Intel Xeon with AMX: 400 units of 20-512
tokens through one layer, 0.153 s against 0.250 s with 12 heads of 32 and 0.144 s against 0.312 s causal with 9
heads of 64; 400 HH texts scored by a MiniLM, alternated in one process, 2.16 s against 2.52 s (not measured on
the AMD EPYC without AMX of earlier sessions).
"""

from __future__ import annotations

import contextlib

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

if TYPE_CHECKING:
    from rewardkit.models.readout_layer import ReadoutKeys

NAME = "rewardkit_segments"  # the name transformers' attention registry knows this function by
_registered = False
EXPLICIT_MAX_LEN = 512  # CPU: units up to this many tokens take `explicit_attention` (see module docstring)
EXPLICIT_DTYPES = (torch.bfloat16,)  # ... when their queries are in one of these dtypes
# ... padded to a multiple of this many tokens: oneDNN compiles a matmul kernel for every new shape (0.5-1 ms each
# on an AMX CPU, and the cache holds 1,024), so per-unit lengths would compile nearly every call (see below).
EXPLICIT_MULTIPLE = 32
# cuDNN's SDPA builds a plan for each new shape and stride it meets (hundreds of ms each: pytorch PR 155958).
# Reward-model batches change shape every step, and a flat batch holds one length per unit, so on CUDA only the
# kernels that need no plan may run. Measured on an H200 before this: 1.8 s per MiniLM step (README).
PLANLESS_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
PLANLESS_DEVICES = ("cuda",)  # where cuDNN attention exists (tests add "cpu" to watch the switch)


def planless_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """SDPA without the cuDNN backend on CUDA (see PLANLESS_BACKENDS); nothing changes elsewhere."""
    return sdpa_kernel(PLANLESS_BACKENDS) if device.type in PLANLESS_DEVICES else contextlib.nullcontext()


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      rk_units: list[tuple[int, int, torch.Tensor | None]] | None = None,
                      rk_keys: "ReadoutKeys | None" = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention interface. query (B, Hq, T, D), key/value (B, Hkv, T, D) -> (B, T, Hq, D).

    rk_units (flat batches, B = 1): (start, end, mask) per unit along T; mask (n, n) bool (True = may attend)
    or None for the module's own pattern (causal for decoders, full for encoders). Without rk_units this is
    plain SDPA with transformers' usual masks, so padded batches (eval, scoring) work unchanged. rk_keys: the
    last layer at readout rows only (`readout_layer`): those rows' queries against every token's keys."""
    if rk_keys is not None:
        return rk_keys.attend(query, scaling, compute_dtype(query)), None
    if rk_units is None:
        with planless_attention(query.device):
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
    return _flat_attention(module, query, key, value, rk_units, dropout, scaling)


# Under torch.compile (train.compile) the per-unit loop stays eager: traced, its unit sizes turn into symbolic
# shapes that inductor either fails on or recompiles for every batch (MiniLM: 19x slower than eager, measured).
@torch.compiler.disable
def _flat_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    rk_units: list[tuple[int, int, torch.Tensor | None]], dropout: float, scaling: float | None,
                    ) -> tuple[torch.Tensor, None]:
    """segment_attention's flat-batch path (same shapes)."""
    # Grouped-query attention. On CPU, SDPA shares each KV head across its query heads itself and saves the
    # unexpanded keys and values for backward; only the explicit ops need them repeated. CUDA's memory-efficient
    # kernel (the one masked units take) refuses enable_gqa and would fall back to the math path, so there the
    # keys and values are repeated once, up front.
    reps = query.shape[1] // key.shape[1]
    if reps > 1 and query.device.type != "cpu":
        key, value = key.repeat_interleave(reps, dim=1), value.repeat_interleave(reps, dim=1)
        reps = 1
    causal = bool(getattr(module, "is_causal", False))
    p = dropout if module.training else 0.0
    dtype = compute_dtype(query)
    # Forward only (scoring, eval), the flash kernel is the faster one here too (module docstring).
    backward = torch.is_grad_enabled() and query.requires_grad
    explicit = EXPLICIT_MAX_LEN if query.device.type == "cpu" and dtype in EXPLICIT_DTYPES and backward else 0
    if explicit and query.dtype != dtype:
        # RoPE models (Llama, Qwen) reach here with fp32 queries and keys under bf16 autocast: the rotation
        # multiplies by fp32 cos/sin. SDPA's autocast would cast them to bf16; the explicit ops need it done here.
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    sizes = [e - s for s, e, _ in rk_units]
    if rk_units[0][0] != 0 or sum(sizes) != query.shape[2] or any(
            a[1] != b[0] for a, b in zip(rk_units, rk_units[1:])):
        raise ValueError("rk_units must tile the packed row: consecutive (start, end) covering all of it")
    # split, whose backward is one cat, rather than slices, each of whose backward writes a zero-filled
    # gradient of the full row.
    parts = zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2))
    outs = []
    with planless_attention(query.device):  # here too: gradient checkpointing recomputes outside the model call
        for (q, k, v), (_, _, mask) in zip(parts, rk_units):
            if q.shape[2] <= explicit:
                outs.append(explicit_attention(q, k, v, mask, causal=causal, dropout=p, scale=scaling,
                                               multiple=EXPLICIT_MULTIPLE))
            else:
                outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                           is_causal=causal and mask is None, dropout_p=p,
                                                           scale=scaling, enable_gqa=reps > 1))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype attention computes `t` in: autocast's on t's device where it is on, t's own otherwise."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *,
                       causal: bool, dropout: float = 0.0, scale: float | None = None,
                       multiple: int = 1) -> torch.Tensor:
    """softmax(q k^T * scale) v for one unit: q (1, H, n, D), k and v (1, Hkv, n, D) with H a multiple of Hkv
    (grouped-query heads share a key/value head) -> (1, H, n, D) in the compute dtype; mask (n, n) bool (True =
    may attend) or None (causal or full). Scores stay in that dtype (bf16 under autocast); softmax accumulates in
    fp32 internally, as the flash kernel does. `multiple`: compute at n rounded up to a multiple of it (zero rows
    appended, masked as keys, dropped from the output), so that many unit lengths share one matmul shape; the
    real rows' results are the same. Without dropout it is one autograd Function (`_UnitAttention`)."""
    n = q.shape[-2]
    size = -(-n // multiple) * multiple
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    masked = None  # (size, size) bool, True where a query may NOT attend; None: full attention
    if mask is not None:
        if size != n:
            # Padding rows attend to the real keys (a row with every key masked would give NaN, even unread).
            mask = F.pad(mask, (0, size - n, 0, size - n))
            mask[n:, :n] = True
        masked = ~mask
    elif causal:  # padding keys come last, so the causal pattern at `size` masks them for the real rows
        masked = torch.ones(size, size, dtype=torch.bool, device=q.device).triu_(1)
    if not dropout:
        return _UnitAttention.apply(q, k, v, masked, scale, size, compute_dtype(q))
    reps = q.shape[1] // k.shape[1]
    if reps > 1:
        k, v = k.repeat_interleave(reps, dim=1), v.repeat_interleave(reps, dim=1)
    if size != n:
        q, k, v = (F.pad(t, (0, 0, 0, size - n)) for t in (q, k, v))
    scores = (q * scale) @ k.transpose(-1, -2)  # (1, H, size, size)
    if masked is not None:
        scores = scores.masked_fill(masked, float("-inf"))
    elif size != n:
        scores[..., n:] = float("-inf")  # full attention over the real keys: only the padding columns change
    out = F.dropout(torch.softmax(scores, dim=-1), dropout) @ v
    return out if size == n else out[:, :, :n]


def _padded(t: torch.Tensor, size: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """t (1, H, n, D) -> (H, size, D) in `dtype`, times `scale`, zero rows after n: one copy (the cast and the
    scaling included)."""
    h, n, d = t.shape[1], t.shape[2], t.shape[3]
    out = torch.empty(h, size, d, dtype=dtype, device=t.device)
    if scale != 1.0:
        torch.mul(t[0], scale, out=out[:, :n])
    else:
        out[:, :n].copy_(t[0])
    out[:, n:].zero_()
    return out


class _UnitAttention(torch.autograd.Function):
    """explicit_attention without dropout as one Function: the padding, cast and scaling are one copy per input,
    grouped-query heads multiply their shared key/value head in one batched matmul (no repeated copies), and
    backward is the four matmuls and one softmax backward, with no autograd node per op. Keeps the padded q
    (scaled), k, v and the probabilities, as the separate ops did."""

    @staticmethod
    def forward(ctx, q, k, v, masked, scale: float, size: int, dtype: torch.dtype):
        heads, groups, n, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
        reps = heads // groups
        qp = _padded(q, size, dtype, scale).view(groups, reps * size, d)
        kp, vp = _padded(k, size, dtype), _padded(v, size, dtype)  # (groups, size, d)
        scores = torch.bmm(qp, kp.transpose(1, 2))  # (groups, reps * size, size)
        if masked is not None:
            scores.view(groups, reps, size, size).masked_fill_(masked, float("-inf"))
        elif size != n:
            scores[..., n:] = float("-inf")
        probs = torch.softmax(scores, dim=-1)
        out = torch.bmm(probs, vp).view(1, heads, size, d)
        ctx.save_for_backward(qp, kp, vp, probs)
        ctx.scale, ctx.n, ctx.dtypes = scale, n, (q.dtype, k.dtype, v.dtype)
        return out[:, :, :n]

    @staticmethod
    def backward(ctx, grad):
        qp, kp, vp, probs = ctx.saved_tensors
        groups, rows, d = qp.shape
        size, n = kp.shape[1], ctx.n
        heads = grad.shape[1]
        g = torch.zeros(heads, size, d, dtype=qp.dtype, device=qp.device)
        g[:, :n] = grad[0]
        g = g.view(groups, rows, d)
        dv = torch.bmm(probs.transpose(1, 2), g)  # (groups, size, d): the query heads of a group summed
        dp = torch.bmm(g, vp.transpose(1, 2))
        ds = torch._softmax_backward_data(dp, probs, -1, probs.dtype)
        dq = torch.bmm(ds, kp).view(1, heads, size, d)[:, :, :n] * ctx.scale
        dk = torch.bmm(ds.transpose(1, 2), qp)
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        return (dq.to(q_dtype), dk[None, :, :n].to(k_dtype), dv[None, :, :n].to(v_dtype),
                None, None, None, None)


def use_segment_attention(config) -> None:
    """Route the model's attention through `segment_attention` (kept, so that gradient checkpointing's
    recomputation takes the same path). The kernel name is not saved in config.json."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, segment_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # padded batches get SDPA's masks
        _registered = True
    config._attn_implementation = NAME
