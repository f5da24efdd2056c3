"""lean_blocks: RMSNorm and gated MLPs give the same forward, the same gradients, and keep fewer tensors for
backward."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from conftest import bf16_train_losses
from rewardkit.batches import SequenceBatch
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.models.lean_blocks import lean_blocks
from rewardkit.models.reward_model import RewardModel, backbone_hidden
from rewardkit.models.shared_casts import share_input_casts
from rewardkit.train.plan import tune_backbone


def _forward_backward(model: RewardModel, bf16: bool):
    """Hidden states, parameter gradients and the bytes autograd kept for backward, on a padded batch of 3."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden, _ = backbone_hidden(model.hf, SequenceBatch(ids, mask, mask.clone()))
    hidden.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.hf.named_parameters() if p.grad is not None}
    return hidden.detach(), grads, sum(kept.values())


@pytest.mark.parametrize("kind,norms,mlps", [("llama", 2, 1), ("qwen2", 2, 1), ("bert", 0, 0), ("gpt2", 0, 0)])
def test_swaps_the_standard_blocks_only(tiny_models, kind, norms, mlps):
    model, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    layers = model.hf.config.num_hidden_layers
    final_norm = 1 if norms else 0
    assert lean_blocks(model.hf) == {"norms": norms * layers + final_norm, "mlps": mlps * layers}
    assert lean_blocks(model.hf) == {"norms": 0, "mlps": 0}  # idempotent


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_same_forward_same_gradients_less_kept(tiny_models, kind, bf16):
    plain, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    lean, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    if bf16:  # as training runs it: both with the shared casts
        share_input_casts(plain.hf), share_input_casts(lean.hf)
    lean_blocks(lean.hf)
    h0, g0, kept0 = _forward_backward(plain, bf16)
    h1, g1, kept1 = _forward_backward(lean, bf16)
    assert torch.equal(h0, h1)
    assert g0.keys() == g1.keys()
    for name in g0:  # the same ops in another order: equal up to rounding
        tol = dict(rtol=2e-2, atol=1e-3) if bf16 else dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g1[name], g0[name], **tol, msg=name)
    # per layer: the norms' fp32 normalised copies and the MLP's silu(gate) and product are not kept
    cfg = plain.hf.config
    tokens = 3 * 16
    mlp_bytes = 2 * tokens * cfg.intermediate_size * (2 if bf16 else 4)
    norm_bytes = 2 * tokens * cfg.hidden_size * 4
    assert kept0 - kept1 >= cfg.num_hidden_layers * (mlp_bytes + norm_bytes)


def test_a_norm_with_another_formula_keeps_its_own():
    class GemmaLikeRMSNorm(nn.Module):  # 1 + weight, as Gemma's
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)) * (1 + self.weight)

    class GeluMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16, bias=False), nn.Linear(
                8, 16, bias=False), nn.Linear(16, 8, bias=False)
            self.act_fn = nn.SiLU()

        def forward(self, x):  # named like SwiGLU but computes something else
            return self.down_proj(F_gelu(self.gate_proj(x)) * self.up_proj(x))

    F_gelu = torch.nn.functional.gelu
    net = nn.Sequential(GemmaLikeRMSNorm(), GeluMLP())
    assert lean_blocks(net) == {"norms": 0, "mlps": 0}
    assert not hasattr(net[0], "_rk_lean") and not hasattr(net[1], "_rk_lean")


def test_frozen_weights_get_no_gradient(tiny_models):
    model, _ = RewardModel.from_pretrained(str(tiny_models["llama"]))
    lean_blocks(model.hf)
    for name, p in model.hf.named_parameters():
        p.requires_grad_("norm" in name)  # only the norms train: the MLPs' weights get no gradient
    _, grads, _ = _forward_backward(model, bf16=True)
    assert grads and all("norm" in n for n in grads)


def test_train_option_gives_the_same_first_loss(tiny_models, tmp_path):
    losses = {on: bf16_train_losses(tiny_models["llama"], tmp_path / f"lean-{on}", f"train.lean_activations={on}",
                                    steps=3) for on in ("true", "false")}
    assert losses["true"][0] == losses["false"][0]  # the first step's forward is bit-identical
    assert losses["true"][1:] == pytest.approx(losses["false"][1:], abs=1e-3)  # gradients equal up to rounding


@pytest.mark.parametrize("sharded", [False, True])
def test_training_swaps_them_unless_the_weights_are_sharded(tiny_models, sharded):
    model, _ = RewardModel.from_pretrained(str(tiny_models["llama"]))
    t = load_config(TrainRunConfig, None, ["model=x", "data.train=x"]).train
    tune_backbone(model, t, bf16=False, device_type="cpu", sharded=sharded)
    swapped = [m for m in model.hf.modules() if getattr(m, "_rk_lean", False)]
    assert bool(swapped) is not sharded
