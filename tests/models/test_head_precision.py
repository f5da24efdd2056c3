"""Heads compute in their weights' precision even under bf16 autocast: rewards are not rounded to bf16."""

from __future__ import annotations

import pytest
import torch

from rewardkit.models.heads import Features, full_precision, pool
from rewardkit.models.reward_model import RewardModel


def _bf16_features(n: int = 64, hidden: int = 64) -> Features:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=gen).bfloat16()
    return Features(pooled=h, prompt=h)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_scalar_head_is_not_rounded_to_bf16_under_autocast(tiny_models, kind):
    model, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    f = _bf16_features(hidden=model.hf.config.hidden_size)
    with torch.no_grad():
        want = model.head.linear(f.pooled.float())[:, 0] if not model.head.encoder_cls else None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.head(f).score
            values = model.head.values(f.pooled)
    assert got.dtype == torch.float32 and values.dtype == torch.float32
    if want is not None:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # bf16 keeps 8 significant bits: fp32 scores of 64 random states are not all on the bf16 grid
    assert not torch.equal(values, values.bfloat16().float())


def test_full_precision_leaves_autocast_and_keeps_gradients():
    lin = torch.nn.Linear(8, 1)
    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = full_precision(lin, x)
        inside = lin(x)
    assert y.dtype == torch.float32 and inside.dtype == torch.bfloat16
    y.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16 and lin.weight.grad.abs().sum() > 0


def test_mean_pooling_sums_in_fp32():
    """A bf16 running sum over 300 tokens drifts; the fp32 one matches the fp64 mean of the same states."""
    gen = torch.Generator().manual_seed(1)
    flat = (torch.randn(300, 16, generator=gen) + 3).bfloat16()
    seq = torch.zeros(300, dtype=torch.long)
    idx = torch.zeros(1, dtype=torch.long)
    got = pool(flat, "mean", last=idx, first=idx, response_seq=seq, n=1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[0].double(), flat.double().mean(0), rtol=1e-6, atol=1e-6)
