"""The data rules of issue 14 at unit level: one empty-response rule for every format, counts by reason,
chat roles, majority detection, bytes that are not UTF-8, and the readout token of an empty response."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import bert_tokenizer, gpt2_tokenizer
from rewardkit.config import Columns
from rewardkit.data import DataError, load_examples
from rewardkit.data.fields import CHAT_ROLES, is_empty, messages
from rewardkit.data.pairs import load_preferences, to_example
from rewardkit.data.rankings import ranking_example
from rewardkit.data.readers import LoadReport
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.eval.rewardbench import detect_kind, to_best_of_n_row

EMPTY_IN_EVERY_FORMAT = {  # the rejected answer is empty in each
    "explicit": {"prompt": "Q?", "chosen": "A.", "rejected": ""},
    "implicit": {"chosen": "\n\nHuman: Q?\n\nAssistant: A.", "rejected": "\n\nHuman: Q?\n\nAssistant:"},
    "conversational": {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "A."}],
                       "rejected": [{"role": "assistant", "content": " "}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Q?"}], "chosen": {"from": "gpt", "value": "A."},
                 "rejected": ""},
}


@pytest.mark.parametrize("fmt", EMPTY_IN_EVERY_FORMAT)
def test_an_empty_response_is_kept_and_noted_in_every_format(fmt):
    ex = to_example(EMPTY_IN_EVERY_FORMAT[fmt], fmt, Columns(), "f:line 1")
    assert is_empty(ex.rejected) and not is_empty(ex.chosen)
    assert ex.notes == ("empty_responses",)


def test_empty_responses_in_rankings_and_rewardbench2_are_noted():
    ex = ranking_example({"prompt": "p", "responses": ["a", ""], "ranks": [1, 2]}, Columns(), "w")
    assert ex.notes == ("empty_responses",)
    row = to_best_of_n_row({"prompt": "p", "chosen": ["a"], "rejected": ["", "b"], "subset": "Math"}, "w")
    assert row.notes == ("empty_responses",)


def test_load_counts_notes_and_logs_them(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "p", "chosen": "c", "rejected": ""}, {"prompt": "p", "chosen": "same", "rejected": "same"},
            {"prompt": "p", "chosen": "", "rejected": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        examples, report = load_preferences(str(path))
    assert len(examples) == 3
    assert report.summary() == {"skipped_rows": 0, "empty_responses": 3, "identical_pairs": 2}
    assert f"{path}: 3 empty responses (scored as prompt + end-of-sequence" in caplog.text
    assert f"first: {path}:line 1" in caplog.text


def test_reason_drops_values_and_indices():
    assert DataError("w", "chosen", "expected a string, got int").reason == "`chosen`: expected a string"
    assert DataError("w", "prompt[3].role", "unknown role 'x' (known: ...)").reason == "`prompt[*].role`: unknown role 'x'"
    assert DataError("w", None, "invalid JSON (Expecting value at column 3)").reason == "invalid JSON"


def test_reports_combine():
    a, b = LoadReport(rows=3), LoadReport(rows=2)
    a.skip(DataError("a:line 1", "chosen", "missing (row has: x)"), "skip")
    b.skip(DataError("b:line 2", "chosen", "missing (row has: y)"), "skip")
    b.note("empty_responses", "b:line 1")
    s = LoadReport.combined([a, b]).summary()
    assert s == {"skipped_rows": 2, "skipped_by_reason": {"`chosen`: missing": 2}, "empty_responses": 1,
                 "identical_pairs": 0}


@pytest.mark.parametrize("role", sorted(CHAT_ROLES))
def test_known_roles_pass(role):
    assert messages([{"role": role.upper(), "content": "x"}], "prompt", "w") == [{"role": role, "content": "x"}]


@pytest.mark.parametrize("msg, field, problem", [
    ({"role": "wizard", "content": "x"}, "prompt[0].role", "unknown role 'wizard'"),
    ({"role": 3, "content": "x"}, "prompt[0].role", "unknown role 3"),
    ({"role": "user"}, "prompt[0].content", "missing"),
    ({"role": "user", "content": None}, "prompt[0].content", "is null"),
    ({"role": "user", "content": ["x"]}, "prompt[0].content", "expected a string, got list"),
    ("hello", "prompt[0]", "expected a message object"),
])
def test_bad_messages_name_the_field(msg, field, problem):
    with pytest.raises(DataError, match=rf"w: field `{field.replace('[', '.').replace(']', '.')}`: {problem}"):
        messages([msg], "prompt", "w")


def test_missing_field_suggests_a_close_name():
    with pytest.raises(DataError, match=r"field `chosen`: missing \(row has: prompt, chsoen, rejected\); did you mean "
                                         r"`chsoen`\?"):
        to_example({"prompt": "p", "chsoen": "c", "rejected": "r"}, "explicit", Columns(), "w")


def test_detection_blames_the_odd_row_not_the_first():
    pair = {"prompt": "p", "chosen": "c", "rejected": "r"}
    v2 = {"prompt": "p", "chosen": ["c"], "rejected": ["r"]}
    assert detect_kind([pair, v2]) == "pairs"  # a tie: the first row's kind
    assert detect_kind([pair, v2, v2]) == "rewardbench2"
    assert detect_kind([dict(pair, subset="s"), dict(pair, subset="s"), pair]) == "rewardbench"


def test_non_utf8_line_is_a_row_error_and_can_be_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}).encode()
    path.write_bytes(good + b"\n" + good.replace(b'"p"', b'"caf\xe9"') + b"\n" + good + b"\n")
    with pytest.raises(DataError, match=rf"{path}:line 2: not UTF-8 text \(byte 0xe9 at byte 16 of the line\)"):
        load_preferences(str(path))
    examples, report = load_preferences(str(path), on_error="skip")
    assert len(examples) == 2 and report.by_reason == {"not UTF-8 text": 1}


def test_non_utf8_json_file_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n{"prompt": "p", "chosen": "c", "rejected": "r"},\n{"prompt": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=rf"{path}:line 3: not UTF-8 text \(byte 0xe9 at byte 16 of the line\)"):
        load_examples(str(path), lambda row, where: row)


def test_bom_is_dropped_in_jsonl_and_csv(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}).encode())
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\np,c,r\n")
    for name in ("d.jsonl", "d.csv"):
        examples, _ = load_preferences(str(tmp_path / name))
        assert examples[0].prompt == "p"


@pytest.mark.parametrize("kind", ["gpt2", "chat", "bert"])
def test_an_empty_response_has_a_token_to_read(kind):
    tok = bert_tokenizer() if kind == "bert" else gpt2_tokenizer(chat=kind == "chat")
    enc = SequenceEncoder(tok, 32, is_encoder=kind == "bert")
    end = tok.sep_token_id if kind == "bert" else tok.eos_token_id
    for prompt in ("Q?", "", [{"role": "user", "content": "Q?"}]):
        seq = enc.encode(prompt, "")
        assert seq.input_ids[-1] == end and seq.response_start <= len(seq.input_ids) - 1
        assert seq.input_ids[seq.response_start:] == [end]  # the response is the end token alone
