"""segment_attention: each unit attends only to itself, on both SDPA paths (math for short units on CPU,
the default kernel for long ones), with causal, shared-prompt-style masks and grouped-query heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rewardkit.models.segment_attention import _MATH_MAX_LEN, segment_attention


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


def test_units_short_and_long_match_per_unit_attention():
    g = torch.Generator().manual_seed(0)
    lengths = [5, _MATH_MAX_LEN, _MATH_MAX_LEN + 60, 17]  # both sides of the math/flash switch
    T = sum(lengths)
    q = torch.randn(1, 4, T, 8, generator=g)
    kv = [torch.randn(1, 2, T, 8, generator=g) for _ in range(2)]  # 2 KV heads shared by 4 query heads
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    shared = torch.ones(17, 17, dtype=torch.bool).tril()
    shared[10:, 4:10] = False  # a "rejected" part that must not see the "chosen" part
    units = [(a, b, None) for a, b in zip(bounds[:-2], bounds[1:-1])] + [(bounds[-2], bounds[-1], shared)]
    for causal in (False, True):
        k, v = (t.repeat_interleave(2, dim=1) for t in kv)
        want = _reference(q, k, v, units, causal)
        got, _ = segment_attention(_Attn(causal), q, kv[0], kv[1], None, rk_units=units)
        assert got.shape == (1, T, 4, 8)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
