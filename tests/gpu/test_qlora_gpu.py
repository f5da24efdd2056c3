"""QLoRA on a CUDA GPU (bitsandbytes): skipped where either is missing, so the default run stays green on CPUs.

Run on a GPU machine: `pytest tests/gpu -p no:cacheprovider` (with `pip install 'rewardkit[qlora]'`)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import synthetic_pairs, write_jsonl

if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
    pytest.skip("QLoRA needs a CUDA GPU and bitsandbytes", allow_module_level=True)

from rewardkit.config import TrainRunConfig, load_config  # noqa: E402
from rewardkit.models.lora import ADAPTER_WEIGHTS, LoraSpec  # noqa: E402
from rewardkit.models.reward_model import RewardModel  # noqa: E402
from rewardkit.scoring import RewardScorer  # noqa: E402
from rewardkit.train import train  # noqa: E402


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_backbone_trainable_parts(tiny_models, quantization):
    import bitsandbytes as bnb

    model, _ = RewardModel.from_pretrained(str(tiny_models["llama"]), lora=LoraSpec(4), quantization=quantization)
    quantized = [m for m in model.hf.base_model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    assert quantized  # the backbone's linear layers are bitsandbytes layers ...
    assert model.hf.score.weight.dtype == torch.float32 and type(model.hf.score) is torch.nn.Linear  # ... not the head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "hf.score.weight" in trainable
    assert all(n == "hf.score.weight" or ".lora_" in n for n in trainable)


def test_qlora_trains_saves_and_reloads(tiny_models, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(64))
    out = tmp_path / "rm"
    cfg = load_config(TrainRunConfig, None, [
        f"model={tiny_models['llama']}", f"data.train={pairs}", "data.eval_size=16", "data.max_length=48",
        "train.batch_size=8", "train.max_steps=8", "train.lr=5e-3", "train.progress=false", "train.log_every=1",
        "model.lora.r=8", "model.quantization=4bit", f"output_dir={out}", "seed=0"])
    res = train(cfg)
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert res.steps == 8 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    block = json.loads((out / "config.json").read_text())
    assert block["rewardkit"]["lora"]["quantization"] == "4bit" and "quantization_config" not in block
    assert (out / ADAPTER_WEIGHTS).exists() and not (out / "model.safetensors").exists()
    scores = RewardScorer.load(out).score(["Tell me about tea."] * 2, ["Tea is brewed from leaves.", "No. Go away."])
    assert all(map(lambda s: s == s, scores))  # finite, loaded on a full-precision base
