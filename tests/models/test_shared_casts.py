"""share_input_casts: under bf16 autocast a norm output feeding q/k/v (and gate/up) is cast once, not once per
projection. Forward values are bit-identical (each projection saw the same bf16 tensor before); gradients only
change where three bf16 gradients now add in bf16; fewer fp32->bf16 copies run."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import bf16_train_losses
from rewardkit.batches import SequenceBatch
from rewardkit.models.reward_model import RewardModel, backbone_hidden
from rewardkit.models.shared_casts import share_input_casts


class _CountCasts(TorchDispatchMode):
    """Counts fp32 -> bf16 copies (autocast's casts among them)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].dtype == torch.float32 \
                and kwargs.get("dtype") == torch.bfloat16:
            self.n += 1
        return func(*args, **kwargs)


def _forward_backward(model: RewardModel, count: bool = False):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    counter = _CountCasts()
    with torch.autocast("cpu", dtype=torch.bfloat16), (counter if count else contextlib.nullcontext()):
        hidden, _ = backbone_hidden(model.hf, SequenceBatch(ids, mask, mask.clone()))
        loss = hidden.float().pow(2).mean()
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.hf.named_parameters() if p.grad is not None}
    return hidden.detach(), grads, counter.n


@pytest.mark.parametrize("kind,per_layer", [("llama", 2), ("qwen2", 2), ("bert", 1), ("gpt2", 0)])
def test_hooks_where_projections_share_an_input(tiny_models, kind, per_layer):
    model, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    layers = model.hf.config.num_hidden_layers
    assert share_input_casts(model.hf) == per_layer * layers
    assert share_input_casts(model.hf) == 0  # idempotent


@pytest.mark.parametrize("kind,saved_per_layer", [("llama", 3), ("bert", 2)])
def test_same_forward_close_gradients_fewer_casts(tiny_models, kind, saved_per_layer):
    plain, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    shared, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    share_input_casts(shared.hf)
    h0, g0, n0 = _forward_backward(plain, count=True)
    h1, g1, n1 = _forward_backward(shared, count=True)
    assert torch.equal(h0, h1)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=2e-2, atol=2e-4)
    # q/k/v: 3 casts -> 1, gate/up: 2 -> 1 (llama); query/key/value 3 -> 1 (bert)
    assert n0 - n1 == saved_per_layer * plain.hf.config.num_hidden_layers


def test_no_effect_outside_autocast(tiny_models):
    plain, _ = RewardModel.from_pretrained(str(tiny_models["llama"]))
    shared, _ = RewardModel.from_pretrained(str(tiny_models["llama"]))
    share_input_casts(shared.hf)
    ids = torch.randint(5, 100, (2, 10))
    batch = SequenceBatch(ids, torch.ones_like(ids), torch.ones_like(ids))
    with torch.no_grad():
        a, b = backbone_hidden(plain.hf, batch)[0], backbone_hidden(shared.hf, batch)[0]
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_train_option_gives_the_same_first_loss(tiny_models, tmp_path):
    first = {on: bf16_train_losses(tiny_models["llama"], tmp_path / f"shared-{on}", f"train.shared_casts={on}")
             for on in ("true", "false")}
    assert first["true"][0] == first["false"][0]  # the first step's forward is bit-identical
    assert abs(first["true"][1] - first["false"][1]) < 1e-2
