"""Readouts, padding, pad == eos, save -> AutoModelForSequenceClassification reload, batch invariance."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rewardkit.data.collators import pad_sequences
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.models.backbone import ensure_pad_token
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring import RewardScorer

TEXTS = [("Tell me about cats.", "Cats are small domesticated felines that sleep a lot."),
         ("Hi", "Hello!"),
         ("What is two plus two? Please answer briefly and explain.", "Four."),
         ("", "A response without any prompt at all, somewhat longer than the others here.")]


def _encode(model, tok, max_length=64):
    enc = SequenceEncoder(tok, max_length, model.is_encoder)
    return [enc.encode(p, r) for p, r in TEXTS]


@pytest.mark.parametrize("readout", ["last", "mean", "cls"])
def test_padding_side_and_batch_invariance(tiny_model, readout):
    if readout == "cls" and tiny_model.name != "bert":  # a decoder's first token sees only itself
        with pytest.raises(ValueError, match="readout=cls reads the first token"):
            RewardModel.from_pretrained(str(tiny_model), readout=readout)
        return
    model, tok = RewardModel.from_pretrained(str(tiny_model), readout=readout)
    model.eval()
    seqs = _encode(model, tok)
    with torch.no_grad():
        alone = torch.cat([model(pad_sequences([s], tok.pad_token_id)) for s in seqs])
        right = model(pad_sequences(seqs, tok.pad_token_id, "right"))
        left = model(pad_sequences(seqs, tok.pad_token_id, "left"))
        wide = model(pad_sequences(seqs, tok.pad_token_id, "right", pad_to_multiple_of=64))
    assert alone.std() > 0  # different texts get different rewards
    torch.testing.assert_close(right, alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(wide, alone, atol=1e-4, rtol=0)


def test_last_readout_reads_the_eos_token(tiny_models):
    """`last` is the final real token (the appended EOS), not the pad before or after it."""
    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]))
    model.eval()
    seqs = _encode(model, tok)
    batch = pad_sequences(seqs, tok.pad_token_id)
    with torch.no_grad():
        hidden = model.hf.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        expected = torch.stack([model.head.linear(hidden[i, len(s.input_ids) - 1]) for i, s in enumerate(seqs)])[:, 0]
        assert all(s.input_ids[-1] == tok.eos_token_id for s in seqs)
        torch.testing.assert_close(model(batch), expected, atol=1e-5, rtol=0)


def test_pad_differs_from_eos(tiny_models):
    """GPT-2 has pad == eos == unk: a distinct pad token is added so HF pooling keeps the EOS."""
    for kind in ("gpt2", "llama", "qwen2"):
        model, tok = RewardModel.from_pretrained(str(tiny_models[kind]))
        assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
        assert model.config.pad_token_id == tok.pad_token_id
        assert model.hf.get_input_embeddings().weight.shape[0] >= len(tok)


def test_ensure_pad_token_when_pad_is_eos(tiny_models):
    tok = AutoTokenizer.from_pretrained(str(tiny_models["gpt2"]))
    tok.pad_token = tok.eos_token  # what most recipes do, and what breaks HF's last-token pooling
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_models["gpt2"]), num_labels=1)
    before = model.get_input_embeddings().weight.shape[0]
    ensure_pad_token(tok, model)
    assert tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == max(before, len(tok))
    assert model.config.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "bert"])
def test_saved_folder_loads_in_transformers_with_same_scores(tiny_models, tmp_path, kind):
    model, tok = RewardModel.from_pretrained(str(tiny_models[kind]), seed=3)
    with torch.no_grad():  # a non-trivial head so equal scores mean something
        model.head.linear.weight.normal_(0, 0.5)
    model.mean, model.std = 0.25, 2.0
    model.save_pretrained(tmp_path / "rm", tok, max_length=64)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert hf.config.num_labels == 1
    assert hf.config.rewardkit["readout"] == model.readout and hf.config.rewardkit["mean"] == 0.25
    assert hf.config.mean == 0.25 and hf.config.std == 2.0
    scorer = RewardScorer.load(tmp_path / "rm")
    ours = scorer.score_texts([p for p, _ in TEXTS], [r for _, r in TEXTS])
    batch = pad_sequences(_encode(scorer.model, scorer.tokenizer), scorer.tokenizer.pad_token_id, "right")
    kw = {"token_type_ids": batch.token_type_ids} if batch.token_type_ids is not None else {}
    with torch.no_grad():
        theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kw).logits[:, 0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(scorer.score_texts([TEXTS[0][0]], [TEXTS[0][1]], normalize=True),
                               (ours[:1] - 0.25) / 2.0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_plain_transformers_cuts_a_long_text_as_rewardkit_does(tiny_models, tmp_path, kind):
    """The saved tokenizer keeps a too-long text's end at max_length (what rewardkit keeps), so a user's plain
    `tokenizer(text + eos, truncation=True)` (decoders: rewardkit ends every sequence with EOS) scores the same."""
    model, tok = RewardModel.from_pretrained(str(tiny_models[kind]), seed=3)
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "rm", tok, max_length=32)
    plain = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert (plain.truncation_side, plain.model_max_length) == ("left", 32)
    assert tok.truncation_side == "right"  # the tokenizer handed to save_pretrained is left as it was
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    text = " ".join(f"word{i}" for i in range(80))  # far over 32 tokens
    ours = RewardScorer.load(tmp_path / "rm").score_texts([""], [text])
    enc = plain(text if model.is_encoder else text + plain.eos_token, truncation=True, return_tensors="pt")
    assert enc.input_ids.shape[1] == 32
    with torch.no_grad():
        theirs = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, 0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_a_folder_with_only_top_level_mean_std_is_normalised_with_them(tiny_models, tmp_path):
    """OpenRLHF's reward models keep their normalisation in config.json's top-level mean/std (no rewardkit block)."""
    import json

    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]), seed=1)
    model.mean, model.std = 0.5, 4.0
    model.save_pretrained(tmp_path / "rm", tok, max_length=32)
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    block = cfg.pop("rewardkit")  # the value head's weights stay where HF keeps them; only the block goes
    (tmp_path / "rm" / "config.json").write_text(json.dumps(cfg))
    again, _ = RewardModel.from_pretrained(str(tmp_path / "rm"))
    assert block["mean"] == 0.5 and (again.mean, again.std) == (0.5, 4.0)


def test_saving_over_another_model_leaves_none_of_its_tokenizer_files(tiny_models, tmp_path):
    """A BERT reward model saved where a Llama one was must not keep the Llama chat template (chats would then
    render with it) nor its BPE files."""
    llama, ltok = RewardModel.from_pretrained(str(tiny_models["llama"]))
    llama.save_pretrained(tmp_path / "rm", ltok, max_length=32)
    assert ltok.chat_template and (tmp_path / "rm" / "chat_template.jinja").exists()
    bert, btok = RewardModel.from_pretrained(str(tiny_models["bert"]))
    bert.save_pretrained(tmp_path / "rm", btok, max_length=32)
    assert not (tmp_path / "rm" / "chat_template.jinja").exists() and not (tmp_path / "rm" / "merges.txt").exists()
    again, tok = RewardModel.from_pretrained(str(tmp_path / "rm"))
    assert again.is_encoder and not tok.chat_template


def test_reload_keeps_head_and_readout(tiny_models, tmp_path):
    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]), readout="mean", seed=1)
    model.save_pretrained(tmp_path / "rm", tok, max_length=32)
    again, _ = RewardModel.from_pretrained(str(tmp_path / "rm"))
    assert again.readout == "mean" and again.saved_max_length == 32
    torch.testing.assert_close(again.head.linear.weight, model.head.linear.weight)


def test_new_head_is_seeded_and_small(tiny_models):
    a, _ = RewardModel.from_pretrained(str(tiny_models["llama"]), seed=5)
    b, _ = RewardModel.from_pretrained(str(tiny_models["llama"]), seed=5)
    c, _ = RewardModel.from_pretrained(str(tiny_models["llama"]), seed=6)
    torch.testing.assert_close(a.head.linear.weight, b.head.linear.weight)
    assert not torch.equal(a.head.linear.weight, c.head.linear.weight)
    assert a.head.linear.weight.std() < 0.1


def test_unknown_readout_is_an_error(tiny_models):
    with pytest.raises(ValueError, match="unknown readout"):
        RewardModel.from_pretrained(str(tiny_models["llama"]), readout="first")


def test_scorer_batch_size_does_not_change_scores(tiny_models):
    scorer = RewardScorer.load(tiny_models["qwen2"], batch_size=1, allow_random_head=True)
    one = scorer.score_texts([p for p, _ in TEXTS], [r for _, r in TEXTS])
    scorer.batch_size = 3
    three = scorer.score_texts([p for p, _ in TEXTS], [r for _, r in TEXTS])
    torch.testing.assert_close(one, three, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_attention_kernel_switch_keeps_rewards(tiny_models, kind):
    """model.attn_implementation only picks a kernel: eager and sdpa give the same rewards, padded or packed."""
    from rewardkit.data.packing import pack_sequences

    model, tok = RewardModel.from_pretrained(str(tiny_models[kind]))
    model.eval()
    seqs = _encode(model, tok)
    padded, packed = pad_sequences(seqs, tok.pad_token_id), pack_sequences(seqs, tok.pad_token_id,
                                                                            causal=not model.is_encoder)
    assert model.set_attention("auto") == "sdpa"  # auto keeps what transformers chose
    with torch.no_grad():
        ref = model(padded), model(packed)
        assert model.set_attention("eager") == "eager"
        got = model(padded), model(packed)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[1], ref[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(ref[1], ref[0], atol=1e-4, rtol=0)
