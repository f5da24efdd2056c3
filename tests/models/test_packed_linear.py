"""Packed bf16 inference linears: the same scores as autocast's linears, taken only for CPU bf16 inference,
repacked when the weights change, and invisible to parameters, state dicts and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewardkit.models.packed_linear import pack_linears, packing_available
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring import RewardScorer

needs_packing = pytest.mark.skipif(not packing_available(), reason="this torch/CPU has no oneDNN bf16 inner product "
                                                                   "(packing is then never used)")


def _calls(monkeypatch) -> list[int]:
    """Counts calls of oneDNN's inner product (the packed path)."""
    calls, real = [], torch.ops.mkldnn

    class Ops:
        def __getattr__(self, name):
            return getattr(real, name)

        def _linear_pointwise(self, *a):
            calls.append(1)
            return real._linear_pointwise(*a)

    monkeypatch.setattr(torch.ops, "mkldnn", Ops(), raising=False)
    return calls


@needs_packing
def test_packed_linear_equals_autocast_linear_and_falls_back_outside_inference(monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    ref = nn.Linear(24, 40)
    ref.load_state_dict(lin.state_dict())
    assert pack_linears(nn.Sequential(lin)) == 1 and pack_linears(nn.Sequential(lin)) == 0  # once
    calls = _calls(monkeypatch)
    x = torch.randn(3, 5, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = lin(x), ref(x)
    assert calls and got.dtype == want.dtype == torch.bfloat16 and got.shape == (3, 5, 40)
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)
    calls.clear()
    with torch.no_grad():  # fp32: nn.Linear's own path, exactly
        assert torch.equal(lin(x), ref(x))
    y = lin(x).sum()  # autograd: nn.Linear's path, gradients reach the weights
    y.backward()
    assert not calls and lin.weight.grad is not None
    assert set(lin.state_dict()) == {"weight", "bias"}


@needs_packing
def test_changed_weights_are_repacked():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    pack_linears(lin)
    x = torch.randn(2, 8)
    auto = torch.autocast("cpu", dtype=torch.bfloat16)
    with torch.no_grad():
        with auto:
            before = lin(x).float()
        lin.weight.mul_(-1.0)  # in place: a stale packed copy would keep the old sign
        with auto:
            flipped = lin(x).float()
        lin.weight = nn.Parameter(torch.zeros(4, 8))  # replaced by a new tensor
        with auto:
            zero = lin(x).float()
    torch.testing.assert_close(flipped - lin.bias, -(before - lin.bias), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(zero, lin.bias.detach().bfloat16().float().expand(2, 4))


@needs_packing
def test_weights_trained_by_a_fused_optimiser_are_repacked():
    # fused AdamW changes the weights in place without moving their version counter: the autograd call
    # before it must be what drops the packed copy
    torch.manual_seed(0)
    lin, ref = nn.Linear(16, 8), nn.Linear(16, 8)
    ref.load_state_dict(lin.state_dict())
    pack_linears(lin)
    x = torch.randn(4, 16)
    auto = torch.autocast("cpu", dtype=torch.bfloat16)
    for m in (lin, ref):
        with torch.no_grad(), auto:
            m(x)  # packs lin's weights as they are now
        opt = torch.optim.AdamW(m.parameters(), lr=0.5, fused=True)
        version = m.weight._version
        m(x).pow(2).sum().backward()
        opt.step()
        assert m.weight._version == version  # what the stamp alone cannot see
    with torch.no_grad(), auto:
        got, want = lin(x), ref(x)
    assert torch.equal(got, want)


@needs_packing
def test_bf16_scorer_on_cpu_packs_and_scores_as_before(tiny_models, tmp_path, monkeypatch):
    model, tok = RewardModel.from_pretrained(str(tiny_models["bert"]))
    model.save_pretrained(tmp_path / "rm", tok, max_length=64)
    prompts, responses = ["Tell me about tea."] * 4, ["Tea is a drink.", "No.", "Green or black tea.", "go away"]
    plain = RewardScorer.load(tmp_path / "rm", bf16=True, packed=False).score(prompts, responses)
    calls = _calls(monkeypatch)
    packed = RewardScorer.load(tmp_path / "rm", bf16=True)
    assert packed.score(prompts, responses) == pytest.approx(plain, abs=1e-6) and calls
    calls.clear()
    fp32 = RewardScorer.load(tmp_path / "rm", bf16=False)  # fp32 scorers keep nn.Linear
    fp32.score(prompts, responses)
    assert not calls and not any(hasattr(m, "_rk_packed") for m in fp32.model.modules())


@needs_packing
@pytest.mark.parametrize("kind,options", [("dpo", {"reference_free": True}), ("generative", {})])
def test_lm_judges_pack_on_cpu_bf16_with_the_same_outputs(tiny_models, monkeypatch, kind, options):
    import importlib

    from rewardkit.scoring import load_judge

    module = importlib.import_module(f"rewardkit.scoring.{kind}")
    args = (["Tell me about tea."] * 2, ["Tea is a drink.", "No."], ["go away", "Tea!"])
    with monkeypatch.context() as m:
        m.setattr(module, "pack_for_inference", lambda *a, **k: 0)
        plain = load_judge(str(tiny_models["llama"]), kind=kind, options=options, bf16=True).compare(*args)
    calls = _calls(monkeypatch)
    packed = load_judge(str(tiny_models["llama"]), kind=kind, options=options, bf16=True).compare(*args)
    assert calls and [c.margin for c in packed] == pytest.approx([c.margin for c in plain], abs=1e-6)
