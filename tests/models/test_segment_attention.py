"""segment_attention: each unit attends only to itself, on both paths (explicit ops for units up to
EXPLICIT_MAX_LEN on CPU in EXPLICIT_DTYPES, SDPA's kernel otherwise), with causal, shared-prompt-style masks
and grouped-query heads; outputs and gradients."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from rewardkit.models import segment_attention as sa
from rewardkit.models.segment_attention import EXPLICIT_MAX_LEN, segment_attention


class _Attn(torch.nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.is_causal = causal


def _reference(q, k, v, units, causal):
    outs = []
    for s, e, mask in units:
        n = e - s
        allowed = mask if mask is not None else (torch.ones(n, n, dtype=torch.bool).tril() if causal else None)
        outs.append(F.scaled_dot_product_attention(q[:, :, s:e].double(), k[:, :, s:e].double(),
                                                   v[:, :, s:e].double(), attn_mask=allowed))
    return torch.cat(outs, 2).transpose(1, 2).float()


@pytest.mark.parametrize("explicit_in_fp32", [False, True])
def test_units_short_and_long_match_per_unit_attention(monkeypatch, explicit_in_fp32):
    if explicit_in_fp32:  # the explicit path (bf16's) checked at fp32 precision
        monkeypatch.setattr(sa, "EXPLICIT_DTYPES", (torch.float32, torch.bfloat16))
    g = torch.Generator().manual_seed(0)
    lengths = [5, EXPLICIT_MAX_LEN, EXPLICIT_MAX_LEN + 60, 17]  # both sides of the explicit/SDPA switch
    T = sum(lengths)
    q = torch.randn(1, 4, T, 8, generator=g)
    kv = [torch.randn(1, 2, T, 8, generator=g) for _ in range(2)]  # 2 KV heads shared by 4 query heads
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    shared = torch.ones(17, 17, dtype=torch.bool).tril()
    shared[10:, 4:10] = False  # a "rejected" part that must not see the "chosen" part
    units = [(a, b, None) for a, b in zip(bounds[:-2], bounds[1:-1])] + [(bounds[-2], bounds[-1], shared)]
    grad_out = torch.randn(1, T, 4, 8, generator=g)
    for causal in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, *kv)]
        k, v = (t.repeat_interleave(2, dim=1) for t in leaves[1:])
        want = _reference(leaves[0], k, v, units, causal)
        want_grads = torch.autograd.grad(want, leaves, grad_out)
        got, _ = segment_attention(_Attn(causal), *leaves, None, rk_units=units)
        got_grads = torch.autograd.grad(got, leaves, grad_out)
        assert got.shape == (1, T, 4, 8)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_explicit_path_in_bf16_stays_close_to_fp32():
    """Under bf16 autocast the explicit path keeps scores in bf16; it must stay as close to the fp32 result
    as the SDPA kernel does (both ~1e-2 relative)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 12, 200, 32, generator=g) for _ in range(3))
    units = [(0, 120, None), (120, 200, None)]
    want, _ = segment_attention(_Attn(True), q, k, v, None, rk_units=units)
    got, _ = segment_attention(_Attn(True), q.bfloat16(), k.bfloat16(), v.bfloat16(), None, rk_units=units)
    kernel = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e].bfloat16(), k[:, :, s:e].bfloat16(),
                                                       v[:, :, s:e].bfloat16(), is_causal=True)
                        for s, e, _ in units], 2).transpose(1, 2)
    err = (got.float() - want).abs().max() / want.abs().max()
    kernel_err = (kernel.float() - want).abs().max() / want.abs().max()
    assert err < 2e-2 and err < 3 * kernel_err + 1e-3


def test_units_that_do_not_tile_the_row_are_refused():
    q = torch.randn(1, 2, 10, 4)
    with pytest.raises(ValueError, match="tile"):
        segment_attention(_Attn(False), q, q, q, None, rk_units=[(0, 4, None), (5, 10, None)])


def test_grouped_query_keys_are_saved_unexpanded_on_the_kernel_path():
    """SDPA shares KV heads itself (enable_gqa): backward keeps 2 KV heads, not 4 repeated copies, so a
    decoder with grouped-query attention (SmolLM2: 3 KV heads for 9) saves less per token."""
    q = torch.randn(1, 4, 40, 8, requires_grad=True)
    k, v = (torch.randn(1, 2, 40, 8, requires_grad=True) for _ in range(2))
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        segment_attention(_Attn(True), q, k, v, None, rk_units=[(0, 40, None)])
    assert (1, 2, 40, 8) in shapes  # the unexpanded keys/values
    assert shapes.count((1, 4, 40, 8)) <= 2  # queries and output only: no repeated keys or values


def test_fp32_queries_under_bf16_autocast_take_the_explicit_path(monkeypatch):
    """RoPE models (Llama, Qwen) hand over fp32 queries and keys under bf16 autocast (the rotation multiplies by
    fp32 cos/sin) with bf16 values. They are cast to bf16 and take the explicit ops like any bf16 unit, as
    SDPA's autocast would cast them; the result stays close to the fp32 computation."""
    calls = []
    real = sa.explicit_attention
    monkeypatch.setattr(sa, "explicit_attention", lambda q, k, v, *a, **kw: (calls.append(q.dtype), real(q, k, v, *a,
                                                                                                         **kw))[1])
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 4, 40, 16, generator=g).requires_grad_() for _ in range(2))  # training
    v = torch.randn(1, 4, 40, 16, generator=g)
    units = [(0, 25, None), (25, 40, None)]
    want, _ = segment_attention(_Attn(True), q, k, v, None, rk_units=units)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = segment_attention(_Attn(True), q, k, v.bfloat16(), None, rk_units=units)
    assert calls == [torch.bfloat16, torch.bfloat16]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)
    calls.clear()
    segment_attention(_Attn(True), q, k, v, None, rk_units=units)  # fp32 without autocast: the SDPA kernel
    assert calls == []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # scoring: the flash kernel's forward
        scored, _ = segment_attention(_Attn(True), q, k, v.bfloat16(), None, rk_units=units)
    assert calls == [] and scored.dtype == torch.bfloat16
    torch.testing.assert_close(scored.float(), want.detach(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("pattern", ["full", "causal", "mask"])
def test_explicit_attention_padded_to_a_multiple_is_the_same(pattern):
    """Units computed at a rounded-up size (one matmul shape for many lengths) give the same outputs and
    gradients as at their own size, and no NaN from the padding rows (an all-masked row would give one)."""
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 32, 33, 50):
        q, k, v = (torch.randn(1, 3, n, 8, generator=g, requires_grad=True) for _ in range(3))
        mask = None
        if pattern == "mask":
            mask = torch.ones(n, n, dtype=torch.bool).tril()
            mask[n // 2:, 1:n // 2] = False
        causal = pattern == "causal"
        grad = torch.randn(1, 3, n, 8, generator=g)
        want = sa.explicit_attention(q, k, v, mask, causal=causal)
        want_grads = torch.autograd.grad(want, (q, k, v), grad)
        got = sa.explicit_attention(q, k, v, mask, causal=causal, multiple=32)
        got_grads = torch.autograd.grad(got, (q, k, v), grad)
        assert got.shape == (1, 3, n, 8)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        for a, b in zip(got_grads, want_grads):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _plain_ops(q, k, v, mask, causal, scale):
    """The reference: key/value heads repeated for their query heads, then scores, mask, softmax, weighted sum."""
    reps = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(reps, dim=1), v.repeat_interleave(reps, dim=1)
    scores = (q * scale) @ k.transpose(-1, -2)
    if mask is None and causal:
        mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("pattern", ["full", "causal", "mask"])
@pytest.mark.parametrize("heads,groups", [(4, 4), (6, 2)])
def test_the_fused_unit_matches_the_plain_ops(pattern, heads, groups, bf16):
    """The one-Function unit (cast, padding and scaling in one copy, grouped-query heads without repeated keys)
    against the plain autograd ops: the same outputs, and gradients equal up to rounding (the query heads of a
    group are summed inside one matmul instead of after it)."""
    g = torch.Generator().manual_seed(1)
    n = 45
    q = torch.randn(1, heads, n, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(1, groups, n, 16, generator=g, requires_grad=True) for _ in range(2))
    mask = None
    if pattern == "mask":
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        mask[n // 2:, 1:n // 2] = False
    grad = torch.randn(1, heads, n, 16, generator=g)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    results = []
    for fused in (True, False):
        with ctx:
            args = (q.bfloat16(), k.bfloat16(), v.bfloat16()) if bf16 else (q, k, v)
            out = (sa.explicit_attention(*args, mask, causal=pattern == "causal", scale=0.25, multiple=32) if fused
                   else _plain_ops(*args, mask, pattern == "causal", 0.25))
        results.append((out, torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))))
    (got, got_grads), (want, want_grads) = results
    assert got.dtype == want.dtype and torch.equal(got, want) if bf16 else torch.allclose(got, want, atol=1e-6)
    tol = dict(atol=5e-2, rtol=2e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, **tol)
