"""On CUDA every attention call runs with cuDNN's SDPA backend off: it builds a plan per new shape, and reward
model batches change shape every step (an H200 trained MiniLM at 1.8 s a step with it on). These tests let the
switch act on CPU (PLANLESS_DEVICES) and watch the backend flags from inside each SDPA call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rewardkit.batches import SequenceBatch
from rewardkit.models import segment_attention as sa
from rewardkit.models.reward_model import RewardModel, backbone_hidden


@pytest.fixture
def seen(monkeypatch):
    """Every SDPA call's view of the cuDNN flag, in call order; the switch acts on CPU too."""
    calls: list[bool] = []
    real = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    monkeypatch.setattr(sa, "PLANLESS_DEVICES", ("cuda", "cpu"))
    return calls


def test_planless_attention_turns_cudnn_off_only_inside_and_only_on_cuda():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with sa.planless_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with sa.planless_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


@pytest.mark.parametrize("flat", [True, False])
def test_segment_attention_calls_sdpa_without_cudnn(seen, flat):
    class Attn(torch.nn.Module):
        is_causal = False

    q, k, v = (torch.randn(1, 2, 600, 8) for _ in range(3))  # units past EXPLICIT_MAX_LEN take SDPA
    units = [(0, 20, None), (20, 600, None)] if flat else None
    sa.segment_attention(Attn(), q, k, v, None, rk_units=units)
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the call


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_padded_forward_with_transformers_own_sdpa_runs_without_cudnn(tiny_models, seen, kind):
    """backbone_hidden covers attention implementations that are not rewardkit's (scoring's padded batches)."""
    model, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    model.set_attention("sdpa")
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        backbone_hidden(model.hf, SequenceBatch(ids, mask, mask.clone()))
    assert seen and not any(seen)


def test_checkpointed_training_recomputes_attention_without_cudnn(tiny_models, seen, tmp_path):
    """Gradient checkpointing runs each layer's attention again inside backward, outside the forward's switch;
    batch rows (the CUDA default) use transformers' own SDPA, so only the loop's backward can turn cuDNN off."""
    from conftest import synthetic_pairs, write_jsonl
    from rewardkit.config import TrainRunConfig, load_config
    from rewardkit.train import train

    data = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(8))
    cfg = load_config(TrainRunConfig, None, [f"model={tiny_models['llama']}", f"data.train={data}",
                                             "data.max_length=48", "train.progress=false", "train.max_steps=1",
                                             "train.batch_size=8", "train.pack_layout=batch_rows",
                                             "train.gradient_checkpointing=true", "train.bf16=false",
                                             "model.attn_implementation=sdpa", f"output_dir={tmp_path / 'rm'}"])
    train(cfg)
    layers = RewardModel.from_pretrained(str(tiny_models["llama"]))[0].hf.config.num_hidden_layers
    assert len(seen) >= 2 * layers  # the forward's calls and the recomputed ones
    assert not any(seen)
