"""Packed and shared-prompt forwards equal the plain padded computation (rewards, loss, gradients)."""

from __future__ import annotations

import pytest
import torch

from rewardkit.data.collators import PairCollator
from rewardkit.data.pairs import PreferenceExample
from rewardkit.data.packing import (CPU_ROUND_STEPS, PAD_UNIT, PackedPairCollator, flat_round_steps, pack_sequences,
                                    rounded_width)
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.losses import bradley_terry
from rewardkit.models.reward_model import RewardModel

EXAMPLES = [
    PreferenceExample("\n\nHuman: Tell me about cats, please, in detail.\n\nAssistant:", " Cats are small felines.", " No."),
    PreferenceExample("\n\nHuman: Hi\n\nAssistant:", " Hello! How can I help you today?", " Go away, I am busy."),
    PreferenceExample("\n\nHuman: What is two plus two?\n\nAssistant:", " Four.", " It is five, obviously, trust me."),
    PreferenceExample("", "A response without any prompt.", "Another one."),
]


def _pairs(model, tok, max_length=48):
    enc = SequenceEncoder(tok, max_length, model.is_encoder)
    return [enc.encode_pair(e) for e in EXAMPLES]


def _rewards_and_grads(model, batch):
    model.zero_grad()
    r = model(batch.sequences)
    c, j = r.chunk(2)
    bradley_terry(c, j).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return r.detach(), grads


@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_causal_packing_matches_padded(tiny_models, kind, shared, readout):
    model, tok = RewardModel.from_pretrained(str(tiny_models[kind]), readout=readout, seed=1)
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 0.5)
    pairs = _pairs(model, tok)
    plain = PairCollator(tok.pad_token_id)(pairs)
    packed = PackedPairCollator(tok.pad_token_id, causal=True, shared_prompt=shared, row_length=96)(pairs)
    assert packed.sequences.input_ids.shape[0] < plain.sequences.input_ids.shape[0]  # really packed
    r0, g0 = _rewards_and_grads(model, plain)
    r1, g1 = _rewards_and_grads(model, packed)
    torch.testing.assert_close(r1, r0, atol=1e-4, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("round_steps", [0, CPU_ROUND_STEPS])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "bert"])
def test_flat_segment_attention_matches_padded(tiny_models, kind, shared, round_steps):
    """One row without padding between units, attention confined per unit by segment attention: same rewards
    and gradients; rounded up (`round_steps`, CPU training and scoring), the padding at the end changes none."""
    model, tok = RewardModel.from_pretrained(str(tiny_models[kind]), readout="mean" if kind == "bert" else "last",
                                             seed=1)
    if shared and model.is_encoder:
        pytest.skip("shared prompts need a causal backbone")
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 0.5)
    pairs = _pairs(model, tok)
    plain = PairCollator(tok.pad_token_id)(pairs)
    flat = PackedPairCollator(tok.pad_token_id, causal=not model.is_encoder, shared_prompt=shared, flat=True,
                              round_steps=round_steps)(pairs)
    b = flat.sequences
    assert b.input_ids.shape[0] == 1 and b.attention_mask is None
    width = rounded_width(b.num_tokens, round_steps)
    assert b.input_ids.numel() == width and (width > b.num_tokens) == bool(round_steps)  # padding only if rounded
    units = sum(1 if shared and p.chosen.response_start > 0 else 2 for p in pairs)  # no prompt: nothing to share
    assert b.units[units - 1][1] == b.num_tokens and b.units[-1][1] == width
    assert [e - s for s, e, _ in b.units[units:]] == [min(PAD_UNIT, width - a) for a in range(b.num_tokens, width,
                                                                                               PAD_UNIT)]
    assert (b.input_ids[0, b.num_tokens:] == tok.pad_token_id).all() and not b.position_ids[0, b.num_tokens:].any()
    r0, g0 = _rewards_and_grads(model, plain)
    r1, g1 = _rewards_and_grads(model, flat)
    r2, _ = _rewards_and_grads(model, plain)  # padded batches still work (plain SDPA) after the switch
    torch.testing.assert_close(r1, r0, atol=1e-4, rtol=0)
    torch.testing.assert_close(r2, r0, atol=1e-4, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-4, rtol=1e-3)


def test_shared_prompt_computes_the_prompt_once(tiny_models):
    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]))
    pairs = _pairs(model, tok)
    shared = PackedPairCollator(tok.pad_token_id, causal=True, shared_prompt=True)(pairs)
    plain = PackedPairCollator(tok.pad_token_id, causal=True)(pairs)
    prompt_tokens = sum(p.chosen.response_start for p in pairs)
    assert plain.sequences.num_tokens - shared.sequences.num_tokens == prompt_tokens > 0


@pytest.mark.parametrize("readout", ["cls", "mean", "last"])
def test_encoder_packing_matches_padded(tiny_models, readout):
    model, tok = RewardModel.from_pretrained(str(tiny_models["bert"]), readout=readout, seed=1)
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 0.5)
    pairs = _pairs(model, tok)
    plain = PairCollator(tok.pad_token_id)(pairs)
    packed = PackedPairCollator(tok.pad_token_id, causal=False, row_length=128)(pairs)
    r0, g0 = _rewards_and_grads(model, plain)
    r1, g1 = _rewards_and_grads(model, packed)
    torch.testing.assert_close(r1, r0, atol=1e-4, rtol=0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-4, rtol=1e-3)


def test_shared_prompt_refuses_encoders():
    with pytest.raises(ValueError, match="causal"):
        PackedPairCollator(0, causal=False, shared_prompt=True)


def test_pack_sequences_layout():
    from rewardkit.data.tokenize import TokenizedSequence

    seqs = [TokenizedSequence([1, 2, 3], 1), TokenizedSequence([4, 5], 1), TokenizedSequence([6], 0)]
    b = pack_sequences(seqs, pad_id=0, causal=True, row_length=4)
    assert b.input_ids.shape == (2, 4)
    assert b.input_ids.reshape(-1)[b.last_index].tolist() == [3, 5, 6]
    assert b.input_ids.reshape(-1)[b.first_index].tolist() == [1, 4, 6]
    assert b.num_tokens == 6
    # every token's positions restart at 0 within its own sequence
    flat_pos = b.position_ids.reshape(-1)
    assert flat_pos[b.first_index].tolist() == [0, 0, 0]
    m = b.attention_mask[:, 0]
    row = b.input_ids.tolist().index([1, 2, 3, 6]) if [1, 2, 3, 6] in b.input_ids.tolist() else None
    assert row is not None
    assert not m[row, 3, :3].any() and m[row, 3, 3]  # token 6 sees only itself
    assert m[row, 2, :3].all() and not m[row, 0, 1]  # causal inside a sequence


def test_rounded_width_bounds_the_padding_and_the_shapes():
    """At most 1/steps more tokens (or 7), and few distinct widths: oneDNN compiles a kernel per shape."""
    widths = {rounded_width(t, 16) for t in range(1, 8193)}
    for t in [1, 63, 64, 65, 1000, 1023, 1024, 1025, 2300, 4095, 4096, 4097, 8000]:
        w = rounded_width(t, 16)
        assert t <= w <= t + max(7, t // 16) and w % 8 == 0
        assert rounded_width(t, 0) == t
    for k in range(3, 13):  # at most `steps` widths per power of two
        assert len([w for w in widths if 2 ** k < w <= 2 ** (k + 1)]) <= 16
    assert rounded_width(4000, 4) == 4096 and rounded_width(2049, 8) == 2304
    assert flat_round_steps("cpu") == CPU_ROUND_STEPS and flat_round_steps("meta") == 0
