"""model.token_types: an encoder's response as segment B (default, as a tokenizer lays out a text pair) or
segment A; saved with the model, so scoring lays text out as training did."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForSequenceClassification

from conftest import synthetic_pairs, write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.scoring import RewardScorer
from rewardkit.train import train


def test_encoder_segments_follow_the_option(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    pair = SequenceEncoder(tok, 64, True).encode("a question", "an answer")
    assert pair.token_type_ids == tok("a question", "an answer")["token_type_ids"]  # the tokenizer's pair layout
    single = SequenceEncoder(tok, 64, True, token_types=False).encode("a question", "an answer")
    assert single.input_ids == pair.input_ids and set(single.token_type_ids) == {0} and 1 in pair.token_type_ids


def test_trained_without_segments_scores_without_them(tiny_models, tmp_path):
    assert TrainRunConfig().model.token_types is False  # the default: one segment, as served full texts get
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(16))
    cfg = load_config(TrainRunConfig, None, [f"model={tiny_models['bert']}", f"data.train={data}",
                                             "data.max_length=48", "train.progress=false", "train.max_steps=2",
                                             "train.bf16=false", "model.token_types=false", f"output_dir={tmp_path / 'rm'}"])
    train(cfg)
    block = json.loads((tmp_path / "rm" / "config.json").read_text())["rewardkit"]
    assert block["token_types"] is False
    scorer = RewardScorer.load(tmp_path / "rm")
    seq = scorer.encode("Tell me about tea.", "Tea is a drink.")
    assert set(seq.token_type_ids) == {0}
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():  # HF with all-zero segments (its default) gives the scorer's reward
        want = hf(torch.tensor([seq.input_ids])).logits[0, 0]
    got = scorer.score(["Tell me about tea."], ["Tea is a drink."])[0]
    assert abs(got - float(want)) < 1e-4
