"""LoRA adapters (models.lora): what trains, what a LoRA folder holds, that the adapter folder, the merged folder
and the in-memory model score alike, that packing keeps its equivalences with an adapter, and the refusals."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from rewardkit.cli import main
from rewardkit.config import ConfigError, TrainRunConfig, load_config
from rewardkit.data.collators import PairCollator
from rewardkit.data.packing import PackedPairCollator
from rewardkit.data.pairs import PreferenceExample
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.losses import bradley_terry
from rewardkit.models.backbone import disable_dropout
from rewardkit.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraSpec
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring import RewardScorer

pytest.importorskip("peft")

PROMPTS = ["Tell me about tea.", "Hi", "What is two plus two?"]
RESPONSES = ["Happy to help: tea is brewed from leaves.", "Go away, I am busy.", "Four."]
EXAMPLES = [
    PreferenceExample("\n\nHuman: Tell me about cats, please, in detail.\n\nAssistant:", " Cats are small felines.", " No."),
    PreferenceExample("\n\nHuman: Hi\n\nAssistant:", " Hello! How can I help you today?", " Go away, I am busy."),
    PreferenceExample("\n\nHuman: What is two plus two?\n\nAssistant:", " Four.", " It is five, obviously, trust me."),
    PreferenceExample("", "A response without any prompt.", "Another one."),
]
HEAD = {"llama": "score", "qwen2": "score", "gpt2": "score", "bert": "classifier"}


def _lora_model(path, r=4, seed=1, **kw):
    """A LoRA model whose adapter is not a no-op (lora_B starts at zero) and whose head is not tiny."""
    model, tok = RewardModel.from_pretrained(str(path), lora=LoraSpec(r, **kw), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        model.head.linear.weight.copy_(torch.randn(model.head.linear.weight.shape, generator=gen) * 0.5)
    return model, tok


def _linear_names(module: nn.Module) -> set[str]:
    from transformers.pytorch_utils import Conv1D

    return {n for n, m in module.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "bert"])
def test_only_adapter_and_head_train(tiny_models, kind):
    plain, _ = RewardModel.from_pretrained(str(tiny_models[kind]))
    linears = _linear_names(plain.hf.base_model)
    model, _ = RewardModel.from_pretrained(str(tiny_models[kind]), lora=LoraSpec(4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {f"hf.{HEAD[kind]}.weight"} | ({f"hf.{HEAD[kind]}.bias"} if kind == "bert" else set())
    assert head <= trainable  # the value head trains in full
    lora = trainable - head
    assert lora and all(".lora_A." in n or ".lora_B." in n for n in lora), sorted(lora)
    assert all(n.startswith(f"hf.{model.hf.base_model_prefix}.") for n in lora)  # never on the head
    adapted = {n.split(".lora_")[0].split(".", 2)[2] for n in lora}  # module names inside the backbone
    assert adapted == linears  # all-linear: every linear layer of the backbone (the BERT pooler included)
    assert not any(HEAD[kind] in n for n in adapted)
    assert model.lora is not None and model.lora.spec.lora_alpha == 8.0  # alpha defaults to 2 * r


def test_target_modules_and_alpha(tiny_models):
    model, _ = RewardModel.from_pretrained(str(tiny_models["llama"]),
                                           lora=LoraSpec(2, alpha=16, target_modules=["q_proj", "v_proj"]))
    lora = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in lora} == {"q_proj", "v_proj"}
    q = model.hf.base_model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == 8.0  # alpha / r
    with pytest.raises(ValueError, match="score"):  # the value head is not in the backbone
        RewardModel.from_pretrained(str(tiny_models["llama"]), lora=LoraSpec(2, target_modules=["score"]))


def test_value_head_and_adapter_get_gradients(tiny_models):
    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]), lora=LoraSpec(4), seed=0)
    batch = PairCollator(tok.pad_token_id)([SequenceEncoder(tok, 48, False).encode_pair(e) for e in EXAMPLES])
    c, r = model(batch.sequences).chunk(2)
    bradley_terry(c, r).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["hf.score.weight"].abs().sum() > 0
    assert any("lora_B" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert all("lora_" in n or n == "hf.score.weight" for n in grads)  # base weights get none


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])  # gpt2: Conv1D layers and a pad token added to its vocab
def test_adapter_folder_merged_folder_and_memory_agree(tiny_models, tmp_path, kind, capsys):
    model, tok = _lora_model(tiny_models[kind])
    model.eval()
    memory = RewardScorer(model, tok, max_length=64).score_texts(PROMPTS, RESPONSES)
    base_only, _ = RewardModel.from_pretrained(str(tiny_models[kind]), seed=1)
    with torch.no_grad():
        base_only.head.linear.weight.copy_(model.head.linear.weight)
        if kind == "bert":
            base_only.head.linear.bias.copy_(model.head.linear.bias)
    no_adapter = RewardScorer(base_only, tok, max_length=64).score_texts(PROMPTS, RESPONSES)
    assert (memory - no_adapter).abs().max() > 1e-3  # the adapter matters in this comparison

    run = tmp_path / "run"
    model.save_pretrained(run, tok, max_length=64)
    names = set(os.listdir(run))
    assert {"config.json", ADAPTER_CONFIG, ADAPTER_WEIGHTS, "tokenizer_config.json"} <= names
    assert not any(n.startswith(("model", "pytorch_model")) for n in names)  # no base weights
    block = json.loads((run / "config.json").read_text())["rewardkit"]
    assert block["lora"]["base"] == str(tiny_models[kind].resolve())
    assert (block["lora"]["r"], block["lora"]["alpha"], block["hf_equivalent"]) == (4, 8.0, False)
    from safetensors.torch import load_file
    saved = load_file(run / ADAPTER_WEIGHTS)
    head_keys = {k for k in saved if ".lora_" not in k}
    assert head_keys == {f"base_model.model.{HEAD[kind]}.weight"} | (
        {f"base_model.model.{HEAD[kind]}.bias"} if kind == "bert" else set())
    peft_cfg = json.loads((run / ADAPTER_CONFIG).read_text())
    assert peft_cfg["modules_to_save"] == [HEAD[kind]] and peft_cfg["task_type"] == "SEQ_CLS"

    adapter = RewardScorer.load(run)
    assert adapter.model.lora is not None and adapter.model.saved_max_length == 64
    torch.testing.assert_close(adapter.score_texts(PROMPTS, RESPONSES), memory, atol=1e-5, rtol=0)

    merged = tmp_path / "merged"
    assert main(["merge", str(run), str(merged)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["merged_layers"] > 0
    assert "model.safetensors" in os.listdir(merged) and ADAPTER_CONFIG not in os.listdir(merged)
    mblock = json.loads((merged / "config.json").read_text())["rewardkit"]
    assert "lora" not in mblock and mblock["max_length"] == 64
    full = RewardScorer.load(merged)
    assert full.model.lora is None
    torch.testing.assert_close(full.score_texts(PROMPTS, RESPONSES), memory, atol=1e-5, rtol=0)
    if kind in ("llama", "bert"):  # last / cls readouts: transformers computes the same reward
        from transformers import AutoModelForSequenceClassification

        assert mblock["hf_equivalent"] is True
        hf = AutoModelForSequenceClassification.from_pretrained(merged, num_labels=1).eval()
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
            seq = full.encoder.encode(p, r)
            ids = torch.tensor([seq.input_ids])
            kw = {"token_type_ids": torch.tensor([seq.token_type_ids])} if seq.token_type_ids is not None else {}
            with torch.no_grad():
                out = hf(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits[0, 0]
            torch.testing.assert_close(out, memory[i], atol=1e-5, rtol=0)


def test_peft_reads_the_adapter_folder(tiny_models, tmp_path):
    """The folder is peft's format: PeftModel on the base (as a sequence classifier) gives the same reward."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    model, tok = _lora_model(tiny_models["llama"])
    model.save_pretrained(tmp_path / "run", tok)
    scorer = RewardScorer.load(tmp_path / "run")
    seq = scorer.encoder.encode(PROMPTS[0], RESPONSES[0])
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=1)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    with torch.no_grad():
        out = peft_model(input_ids=torch.tensor([seq.input_ids])).logits[0, 0]
    torch.testing.assert_close(out, scorer.score_texts(PROMPTS[:1], RESPONSES[:1])[0], atol=1e-5, rtol=0)


def _rewards_and_grads(model, batch):
    model.zero_grad()
    r = model(batch.sequences)
    c, j = r.chunk(2)
    loss = bradley_terry(c, j).mean()
    loss.backward()
    return r.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,layout", [("llama", "shared_prompt"), ("llama", "flat_shared"), ("qwen2", "flat_shared"),
                                         ("gpt2", "flat"), ("bert", "flat")])
def test_packing_matches_padded_with_lora(tiny_models, kind, layout):
    model, tok = _lora_model(tiny_models[kind])
    enc = SequenceEncoder(tok, 48, model.is_encoder)
    pairs = [enc.encode_pair(e) for e in EXAMPLES]
    plain = PairCollator(tok.pad_token_id)(pairs)
    causal = not model.is_encoder
    packed = (PackedPairCollator(tok.pad_token_id, causal=causal, shared_prompt=True, row_length=96)
              if layout == "shared_prompt" else
              PackedPairCollator(tok.pad_token_id, causal=causal, shared_prompt=layout == "flat_shared", flat=True))(pairs)
    r0, l0, g0 = _rewards_and_grads(model, plain)
    r1, l1, g1 = _rewards_and_grads(model, packed)
    torch.testing.assert_close(r1, r0, atol=1e-4, rtol=0)
    torch.testing.assert_close(l1, l0, atol=1e-4, rtol=0)
    assert g0.keys() == g1.keys() and any("lora_" in n for n in g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-4, rtol=1e-3)


def test_lora_dropout_survives_disable_dropout(tiny_models):
    model, _ = RewardModel.from_pretrained(str(tiny_models["llama"]), lora=LoraSpec(4, dropout=0.1))
    disable_dropout(model)
    ps = {n: m.p for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert ps and all(p == 0.1 for n, p in ps.items() if "lora_dropout" in n)
    assert any("lora_dropout" in n for n in ps)


def test_saving_one_form_over_the_other_leaves_no_stale_weights(tiny_models, tmp_path):
    out = tmp_path / "rm"
    full, tok = RewardModel.from_pretrained(str(tiny_models["llama"]))
    full.save_pretrained(out, tok)
    model, tok = _lora_model(tiny_models["llama"])
    model.save_pretrained(out, tok)
    assert "model.safetensors" not in os.listdir(out)
    model.merge_lora()
    model.save_pretrained(out, tok)
    assert ADAPTER_CONFIG not in os.listdir(out) and ADAPTER_WEIGHTS not in os.listdir(out)
    assert RewardModel.from_pretrained(str(out))[0].lora is None


def test_continuing_a_lora_folder_keeps_its_adapter(tiny_models, tmp_path):
    model, tok = _lora_model(tiny_models["llama"], r=4)
    model.save_pretrained(tmp_path / "run", tok)
    again, _ = RewardModel.from_pretrained(str(tmp_path / "run"), lora=LoraSpec(4))
    assert again.lora.spec.r == 4 and not any(p.requires_grad for n, p in again.named_parameters()
                                              if "lora_" not in n and "score" not in n)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        RewardModel.from_pretrained(str(tmp_path / "run"), lora=LoraSpec(8))


# --------------------------------------------------------------------------- config and refusals

def test_config_keys():
    cfg = load_config(TrainRunConfig, None, ["model=x", "data.train=y", "model.lora=16"])
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.target_modules) == (16, None, ["all-linear"])
    assert load_config(TrainRunConfig, None, ["model.lora.r=0"]).model.quantization == "none"
    for bad, match in ((["model.lora.r=-1"], "model.lora.r"), (["model.lora.dropout=1.5"], "model.lora.dropout"),
                       (["model.lora.alpha=0"], "model.lora.alpha"), (["model.quantization=3bit"], "quantization"),
                       (["model.quantization=4bit"], "needs LoRA")):
        with pytest.raises(ConfigError, match=match):
            load_config(TrainRunConfig, None, bad)


def test_qlora_without_cuda_or_bitsandbytes_is_one_line_before_any_weights(tiny_models, tmp_path, capsys,
                                                                            monkeypatch):
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("this machine can run QLoRA (tests/gpu covers it)")
    from transformers import AutoModelForSequenceClassification

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the QLoRA check")

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", no_weights)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    out = tmp_path / "rm"
    code = main(["train", f"model={tiny_models['llama']}", f"data.train={data}", "model.lora.r=4",
                 "model.quantization=4bit", f"output_dir={out}", "train.progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "model.quantization=4bit" in err and ("bitsandbytes" in err or "CUDA" in err)
    assert not (out / "config.json").exists()


def test_merge_refuses_a_folder_without_adapter(tiny_models, tmp_path, capsys):
    assert main(["merge", str(tiny_models["llama"]), str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no LoRA adapter" in err
    assert not (tmp_path / "m").exists()
