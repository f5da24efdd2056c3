"""`SequenceEncoder.encode_text`: full texts as OpenRLHF's PPO side sends them to a remote reward model."""

from __future__ import annotations

import pytest

from conftest import bert_tokenizer, gpt2_tokenizer
from rewardkit.data.tokenize import SequenceEncoder, render
from rewardkit.models.backbone import ensure_pad_token

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", params=["chat", "gpt2"])
def encoder(request):
    tok = gpt2_tokenizer(chat=request.param == "chat")
    ensure_pad_token(tok)
    return SequenceEncoder(tok, 32, is_encoder=False)


@pytest.mark.parametrize("prompt,response", [(PROMPT, "Paris."), ("", "Just a response")])
def test_full_text_matches_training_layout(encoder, prompt, response):
    p, r = render(encoder.tok, prompt, response)
    assert encoder.encode_text(p + r).input_ids == encoder.encode(prompt, response).input_ids


def test_exactly_one_eos_whatever_the_text_ends_with(encoder):
    tok = encoder.tok
    p, r = render(tok, PROMPT, "Paris.")
    base = encoder.encode_text(p + r)
    assert base.input_ids[-1] == tok.eos_token_id and base.input_ids[-2] != tok.eos_token_id
    for tail in (tok.eos_token, tok.eos_token + "\n", tok.eos_token * 2 + tok.pad_token * 3, "\n\n"):
        assert encoder.encode_text(p + r + tail).input_ids == base.input_ids, repr(tail)


def test_truncation_keeps_the_end(encoder):
    text = " ".join(f"w{i}" for i in range(100)) + " the end"
    seq = encoder.encode_text(text)
    assert seq.truncated and len(seq.input_ids) == 32
    assert encoder.tok.decode(seq.input_ids[:-1]).endswith("the end")
    assert seq.input_ids[-1] == encoder.tok.eos_token_id


def test_encoder_layout_cls_text_sep():
    tok = bert_tokenizer()
    enc = SequenceEncoder(tok, 32, is_encoder=True)
    seq = enc.encode_text("[CLS] hello world [SEP] [PAD] [PAD]")
    assert seq.input_ids == [tok.cls_token_id, *tok("hello world", add_special_tokens=False)["input_ids"],
                             tok.sep_token_id]
    assert seq.token_type_ids == [0] * len(seq.input_ids)
    assert enc.encode_text("hello world").input_ids == enc.encode("", "hello world").input_ids


@pytest.mark.parametrize("kind", ["chat", "gpt2", "bert"])
def test_encode_texts_in_one_call_equals_one_at_a_time(kind):
    """The batched path (scorer, server) gives exactly encode_text's sequences: tails, padding, BOS, empty texts,
    the character cap and truncation included."""
    tok = bert_tokenizer() if kind == "bert" else gpt2_tokenizer(chat=kind == "chat")
    ensure_pad_token(tok)
    enc = SequenceEncoder(tok, 32, is_encoder=kind == "bert")
    p, r = render(tok, PROMPT, "Paris.")
    texts = [p + r, p + r + (tok.eos_token or "") + "\n" + (tok.pad_token or "") * 2, "", "   ", "x",
             (tok.pad_token or "") * 3 + "left padded", (tok.bos_token or "") + "own bos",
             " ".join(f"w{i}" for i in range(100)), "y" * (enc.max_chars + 50)]
    one = [enc.encode_text(t) for t in texts]
    assert enc.encode_texts(texts) == one
    assert enc.encode_texts([]) == []
    assert any(s.truncated for s in one)


@pytest.mark.parametrize("kind", ["chat", "gpt2", "bert"])
def test_a_query_that_starts_with_its_prompt_is_read_as_the_training_pair(kind):
    """OpenRLHF sends each query's prompt: such a query gets exactly `encode(prompt, response)` (encoders: the
    [SEP] between them), whatever end-of-turn, EOS or padding the decoded text ends with; a query that does not
    start with its prompt, a non-string or empty prompt, or no prompts at all keep the full-text reading."""
    tok = bert_tokenizer() if kind == "bert" else gpt2_tokenizer(chat=kind == "chat")
    ensure_pad_token(tok)
    enc = SequenceEncoder(tok, 48, is_encoder=kind == "bert")
    prompt = PROMPT if kind == "chat" else "Human: What is the capital of France?\n\nAssistant:"
    p, r = render(tok, prompt, " Paris, of course.")
    tails = ["", "\n"] if kind == "bert" else [tok.eos_token, tok.eos_token + "\n" + tok.pad_token * 2]
    queries = [p + r + t for t in tails] + [p + r, "unrelated text", p + r]
    prompts = [p] * len(tails) + ["Tell me about rain.", p, 7]
    got = enc.encode_queries(queries, prompts)
    pair = enc.encode(prompt, " Paris, of course.")
    assert got[:len(tails)] == [pair] * len(tails) and got[len(tails)] == enc.encode_text(p + r)
    assert got[-2:] == [enc.encode_text("unrelated text"), enc.encode_text(p + r)]
    assert enc.encode_queries(queries) == enc.encode_texts(queries)
    assert enc.encode_queries([p + r], [""]) == enc.encode_texts([p + r])
    if kind == "bert":  # the encoder's full text lacks the middle [SEP] its training layout has
        assert pair.input_ids.count(tok.sep_token_id) == 2 and enc.encode_text(p + r).input_ids.count(
            tok.sep_token_id) == 1


@pytest.mark.parametrize("kind", ["chat", "gpt2", "bert"])
def test_left_padding_is_dropped_whatever_the_policy_pads_with(kind):
    """A decoded left-padded batch starts with the policy's pad token, often its EOS (GPT-2: EOS == BOS; the chat
    tokenizer here: pad == BOS): the full text scores as without them, BOS handling included."""
    tok = bert_tokenizer() if kind == "bert" else gpt2_tokenizer(chat=kind == "chat")
    ensure_pad_token(tok)
    enc = SequenceEncoder(tok, 48, is_encoder=kind == "bert")
    p, r = render(tok, PROMPT, "Paris.")
    for pad in {t for t in (tok.pad_token, tok.eos_token) if t}:
        for n in (1, 3):
            assert enc.encode_text(pad * n + p + r) == enc.encode_text(p + r), (pad, n)
    if tok.eos_token and tok.pad_token:
        assert enc.encode_text(tok.eos_token + tok.pad_token * 2 + p + r) == enc.encode_text(p + r)


def test_left_padding_equal_to_bos_keeps_the_bos_the_template_writes():
    tok = gpt2_tokenizer(chat=True)  # pad == BOS here
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    ensure_pad_token(tok)
    enc = SequenceEncoder(tok, 48, is_encoder=False)
    p, r = render(tok, PROMPT, "Paris.")
    assert p.startswith(tok.bos_token) and tok.pad_token == tok.bos_token
    want = enc.encode(PROMPT, "Paris.")
    assert want.input_ids[:2] == [tok.bos_token_id, *tok(p[len(tok.bos_token):])["input_ids"][:1]]
    for n in (0, 2):
        assert enc.encode_text(tok.pad_token * n + p + r).input_ids == want.input_ids


@pytest.mark.parametrize("kind", ["chat", "gpt2", "bert"])
def test_encode_many_equals_encode_one_at_a_time(kind):
    """The batched tokenising of training, eval and scoring gives exactly `encode`'s sequences: shared prompts,
    chat messages, empty prompts and responses, the character cap, truncation, chunk edges."""
    tok = bert_tokenizer() if kind == "bert" else gpt2_tokenizer(chat=kind == "chat")
    ensure_pad_token(tok)
    enc = SequenceEncoder(tok, 32, is_encoder=kind == "bert")
    long = " ".join(f"w{i}" for i in range(100))
    prompts = [PROMPT, PROMPT, "", "Q: why?", long, "Q: why?", "y" * (enc.max_chars + 50)]
    responses = ["Paris.", "Lyon.", "just this", "", "short", long, "end"]
    one = [enc.encode(p, r) for p, r in zip(prompts, responses)]
    assert enc.encode_many(prompts, responses) == one and enc.encode_many(prompts, responses, chunk=3) == one
    assert any(s.truncated for s in one) and enc.encode_many([], []) == []
