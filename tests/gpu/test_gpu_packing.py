"""CUDA only (skipped elsewhere): FlashAttention-2 varlen packing gives the rewards and gradients of the padded
computation, on tiny random decoders. Needs the flash-attn package for the varlen test."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import synthetic_pairs
from rewardkit.data.collators import PairCollator
from rewardkit.data.packing import PackedPairCollator
from rewardkit.data.tokenize import SequenceEncoder, TokenizedPair
from rewardkit.losses import bradley_terry
from rewardkit.models.backbone import disable_dropout
from rewardkit.models.reward_model import RewardModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pairs(tok, is_encoder: bool, n: int = 12) -> list[TokenizedPair]:
    enc = SequenceEncoder(tok, 96, is_encoder)
    return [TokenizedPair(enc.encode(r["prompt"], r["chosen"]), enc.encode(r["prompt"], r["rejected"]))
            for r in synthetic_pairs(n, seed=3)]


def _rewards_and_grads(model: RewardModel, impl: str, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.set_attention(impl)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        rewards = model(batch.sequences)
    rc, rr = rewards.float().chunk(2)
    bradley_terry(rc, rr).mean().backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return rewards.detach().float(), grads


def _model_and_batches(path):
    """A tiny model on the GPU in training mode without dropout, and the same pairs padded and packed."""
    model, tok = RewardModel.from_pretrained(str(path), seed=0)
    model.to("cuda").train()
    disable_dropout(model)  # training mode without randomness, as rewardkit trains
    pairs = _pairs(tok, model.is_encoder)
    padded = PairCollator(tok.pad_token_id)(pairs).to("cuda")
    packed = PackedPairCollator(tok.pad_token_id, causal=not model.is_encoder, row_length=512)(pairs).to("cuda")
    return model, padded, packed


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_flash_varlen_packing_equals_padded(tiny_models, kind):
    model, padded, packed = _model_and_batches(tiny_models[kind])
    assert packed.sequences.position_ids_suffice  # plain causal blocks: varlen reads them from position_ids
    r_pad, g_pad = _rewards_and_grads(model, "sdpa", padded)
    r_flash, g_flash = _rewards_and_grads(model, "flash_attention_2", packed)
    torch.testing.assert_close(r_flash, r_pad, atol=3e-2, rtol=0)  # bf16 autocast on both sides
    assert g_flash.keys() == g_pad.keys()
    for name, g in g_pad.items():
        err = (g_flash[name] - g).norm() / g.norm().clamp(min=1e-6)
        assert err < 5e-2, (name, float(err))


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_sdpa_packing_equals_padded_on_cuda(tiny_models, kind):
    """The same check without flash-attn (fp32): packed rows with block-diagonal masks vs padding."""
    model, padded, packed = _model_and_batches(tiny_models[kind])

    def run(batch):
        model.zero_grad(set_to_none=True)
        rewards = model(batch.sequences)
        bradley_terry(*rewards.chunk(2)).mean().backward()
        return rewards.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    r_pad, g_pad = run(padded)
    r_pack, g_pack = run(packed)
    torch.testing.assert_close(r_pack, r_pad, atol=1e-4, rtol=1e-4)
    for name, g in g_pad.items():
        torch.testing.assert_close(g_pack[name], g, atol=1e-4, rtol=1e-3, msg=name)
