"""Turning rows of every supported format into `PreferenceExample`s, and the errors for bad rows (reading the
files themselves: test_readers.py)."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import HH_DATA, write_jsonl
from format_rows import EXPECTED, ROWS, assistant, strip_source, user
from rewardkit.config import Columns
from rewardkit.data import DataError, read_rows
from rewardkit.data.pairs import PreferenceExample, detect_format, load_preferences, split_transcripts, to_example


# --------------------------------------------------------------------------- formats

def test_explicit():
    ex = to_example({"prompt": "p", "chosen": "c", "rejected": "r"}, "explicit", Columns(), "f:line 1")
    assert ex == PreferenceExample("p", "c", "r", None, "f:line 1")


def test_explicit_empty_prompt_is_allowed():
    ex = to_example({"prompt": "", "chosen": "c", "rejected": "r"}, "explicit", Columns(), "w")
    assert ex.prompt == ""


HH_SINGLE_C = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water and yeast, then bake."
HH_SINGLE_R = "\n\nHuman: How do I bake bread?\n\nAssistant: Buy it."
HH_MULTI_PREFIX = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."
                   "\n\nAssistant:")


def test_split_transcripts_single_turn():
    p, c, r = split_transcripts(HH_SINGLE_C, HH_SINGLE_R)
    assert p == "\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert c == " Mix flour, water and yeast, then bake."
    assert r == " Buy it."


def test_split_transcripts_multi_turn_cuts_at_last_shared_assistant_turn():
    chosen = HH_MULTI_PREFIX + " Why did the chicken cross the road?"
    rejected = HH_MULTI_PREFIX + " No."
    p, c, r = split_transcripts(chosen, rejected)
    assert p == HH_MULTI_PREFIX
    assert p.endswith("\n\nAssistant:") and p.count("\n\nAssistant:") == 2
    assert (c, r) == (" Why did the chicken cross the road?", " No.")
    assert p + c == chosen and p + r == rejected


def test_split_transcripts_responses_sharing_a_beginning():
    # the common prefix runs into the responses ("I think"): the cut must still be at the marker
    chosen = HH_MULTI_PREFIX + " I think you will like this one."
    rejected = HH_MULTI_PREFIX + " I think not."
    p, c, r = split_transcripts(chosen, rejected)
    assert p == HH_MULTI_PREFIX
    assert c == " I think you will like this one." and r == " I think not."


def test_split_transcripts_without_markers_cuts_at_whitespace():
    # the space goes with the response, as after a marker: prompt + response tokenise as the whole text
    p, c, r = split_transcripts("The answer is yes", "The answer is no")
    assert (p, c, r) == ("The answer is", " yes", " no")
    assert split_transcripts("yes", "no") == ("", "yes", "no")


def test_implicit_example():
    ex = to_example({"chosen": HH_SINGLE_C, "rejected": HH_SINGLE_R}, "implicit", Columns(), "w")
    assert ex.prompt.endswith("\n\nAssistant:")
    assert ex.prompt + ex.chosen == HH_SINGLE_C and ex.prompt + ex.rejected == HH_SINGLE_R


def test_implicit_identical_empty_responses_are_kept_and_noted():
    t = "\n\nHuman: hi\n\nAssistant:"
    ex = to_example({"chosen": t, "rejected": t}, "implicit", Columns(), "f.jsonl:line 7")
    assert (ex.chosen, ex.rejected) == ("", "")
    assert ex.notes == ("empty_responses", "empty_responses", "identical_pairs")


def test_implicit_empty_transcript_is_refused():
    with pytest.raises(DataError, match=r"f.jsonl:line 7: field `chosen`: empty text"):
        to_example({"chosen": " ", "rejected": "\n\nHuman: hi\n\nAssistant: x"}, "implicit", Columns(), "f.jsonl:line 7")


def test_conversational_prompt_messages_and_message_responses():
    row = {"prompt": [{"role": "system", "content": "Be nice."}, user("hi")],
           "chosen": [assistant("hello")], "rejected": [assistant("what")]}
    ex = to_example(row, "conversational", Columns(), "w")
    assert ex.prompt == row["prompt"] and ex.chosen == [assistant("hello")] and ex.rejected == [assistant("what")]


def test_conversational_prompt_messages_and_string_responses():
    row = {"prompt": [user("hi")], "chosen": "hello", "rejected": "what"}
    assert detect_format(row, Columns()) == "conversational"
    ex = to_example(row, "conversational", Columns(), "w")
    assert ex.chosen == [assistant("hello")] and ex.rejected == [assistant("what")]


def test_conversational_string_prompt_message_responses():
    row = {"prompt": "hi", "chosen": [assistant("hello")], "rejected": [assistant("what")]}
    assert detect_format(row, Columns()) == "conversational"
    ex = to_example(row, "conversational", Columns(), "w")
    assert ex.prompt == [user("hi")]


def test_conversational_whole_conversations_shared_prefix_is_prompt():
    chosen = [user("hi"), assistant("hello"), user("joke?"), assistant("A good one.")]
    rejected = [user("hi"), assistant("hello"), user("joke?"), assistant("No.")]
    row = {"chosen": chosen, "rejected": rejected}
    assert detect_format(row, Columns()) == "conversational"
    ex = to_example(row, "conversational", Columns(), "w")
    assert ex.prompt == chosen[:3]
    assert ex.chosen == [assistant("A good one.")] and ex.rejected == [assistant("No.")]


def test_conversational_identical_conversations_keep_one_response_message():
    conv = [user("hi"), assistant("hello")]
    ex = to_example({"chosen": conv, "rejected": list(conv)}, "conversational", Columns(), "w")
    assert ex.prompt == [user("hi")] and ex.chosen == [assistant("hello")] == ex.rejected


@pytest.mark.parametrize("empty", ["", []], ids=["empty-string", "empty-list"])
def test_conversational_empty_prompt_means_whole_conversations(empty):
    row = {"prompt": empty, "chosen": [user("hi"), assistant("hello")], "rejected": [user("hi"), assistant("no")]}
    ex = to_example(row, "conversational", Columns(), "w")
    assert ex.prompt == [user("hi")] and ex.chosen == [assistant("hello")] and ex.rejected == [assistant("no")]


def test_conversational_responses_repeating_the_prompt_are_not_duplicated():
    # UltraFeedback-binarized layout: prompt string, chosen/rejected the whole conversation
    row = {"prompt": "hi", "chosen": [user("hi"), assistant("hello")], "rejected": [user("hi"), assistant("no")]}
    ex = to_example(row, "conversational", Columns(), "w")
    assert ex.prompt == [user("hi")] and ex.chosen == [assistant("hello")] and ex.rejected == [assistant("no")]


def test_conversational_bad_message_names_the_field():
    row = {"prompt": [user("hi")], "chosen": [{"role": "assistant"}], "rejected": [assistant("x")]}
    with pytest.raises(DataError, match=r"`chosen\[0\]\.content`: missing"):
        to_example(row, "conversational", Columns(), "f:line 2")
    row = {"prompt": [user("hi")], "chosen": [assistant("x")], "rejected": [{"role": "assistant", "content": 3}]}
    with pytest.raises(DataError, match=r"`rejected\[0\]\.content`"):
        to_example(row, "conversational", Columns(), "f:line 2")


SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"}],
            "chosen": {"from": "gpt", "value": "hello"}, "rejected": {"from": "gpt", "value": "bye"}}


def test_sharegpt():
    ex = to_example(SHAREGPT, "sharegpt", Columns(), "w")
    assert ex.prompt == [{"role": "system", "content": "Be brief."}, user("hi")]
    assert ex.chosen == [assistant("hello")] and ex.rejected == [assistant("bye")]


def test_sharegpt_unknown_role_names_the_field():
    row = dict(SHAREGPT, conversations=[{"from": "robot", "value": "hi"}])
    with pytest.raises(DataError, match=r"`conversations\[0\]\.from`.*unknown role 'robot'"):
        to_example(row, "sharegpt", Columns(), "w")


@pytest.mark.parametrize("row, fmt", [
    ({"prompt": "p", "chosen": "c", "rejected": "r"}, "explicit"),
    ({"chosen": HH_SINGLE_C, "rejected": HH_SINGLE_R}, "implicit"),
    ({"prompt": [user("p")], "chosen": [assistant("c")], "rejected": [assistant("r")]}, "conversational"),
    ({"prompt": [user("p")], "chosen": "c", "rejected": "r"}, "conversational"),
    ({"chosen": [user("p"), assistant("c")], "rejected": [user("p"), assistant("r")]}, "conversational"),
    (SHAREGPT, "sharegpt"),
])
def test_auto_detection(tmp_path, caplog, row, fmt):
    assert detect_format(row, Columns()) == fmt
    path = write_jsonl(tmp_path / "d.jsonl", [row, row])
    with caplog.at_level(logging.INFO, logger="rewardkit.data.pairs"):
        examples, _ = load_preferences(str(path))
    assert f"detected format `{fmt}`" in caplog.text
    assert examples[0] == to_example(row, fmt, Columns(), f"{path}:line 1")


def test_explicit_format_overrides_detection(tmp_path):
    # rows with a prompt column, read as implicit on request: the prompt column is ignored
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "chosen": HH_SINGLE_C, "rejected": HH_SINGLE_R}])
    (ex,), _ = load_preferences(str(path), fmt="implicit")
    assert ex.prompt == "\n\nHuman: How do I bake bread?\n\nAssistant:"
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        load_preferences(str(path), fmt="nope")


def test_detection_is_not_decided_by_a_malformed_first_row(tmp_path):
    # explicit data whose first row lacks `prompt`: must not be read as implicit transcripts
    rows = [{"chosen": "c0", "rejected": "r0"}] + ROWS
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_preferences(str(path))
    assert "d.jsonl:line 1" in str(e.value) and "`prompt`" in str(e.value)
    examples, report = load_preferences(str(path), on_error="skip")
    assert report.skipped == 1 and strip_source(examples) == EXPECTED


def test_column_mapping(tmp_path):
    rows = [{"question": "q", "good": "g", "bad": "b", "score": "3"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cols = Columns(prompt="question", chosen="good", rejected="bad", margin="score")
    (ex,), _ = load_preferences(str(path), columns=cols)
    assert (ex.prompt, ex.chosen, ex.rejected, ex.margin) == ("q", "g", "b", 3.0)
    # errors name the mapped column
    path = write_jsonl(tmp_path / "e.jsonl", [{"question": "q", "good": "g"}])
    with pytest.raises(DataError, match="`bad`: missing"):
        load_preferences(str(path), columns=cols)


def test_column_mapping_conversations():
    row = {"conv": SHAREGPT["conversations"], "chosen": SHAREGPT["chosen"], "rejected": SHAREGPT["rejected"]}
    cols = Columns(conversations="conv")
    assert detect_format(row, cols) == "sharegpt"
    assert to_example(row, "sharegpt", cols, "w") == to_example(SHAREGPT, "sharegpt", Columns(), "w")


@pytest.mark.parametrize("value, expected", [(2, 2.0), (-0.5, -0.5), ("1.25", 1.25), (" 3 ", 3.0),
                                             (None, None), ("", None)])
def test_margin_values(value, expected):
    row = {"prompt": "p", "chosen": "c", "rejected": "r", "margin": value}
    assert to_example(row, "explicit", Columns(), "w").margin == expected


def test_margin_absent_is_none():
    assert to_example({"prompt": "p", "chosen": "c", "rejected": "r"}, "explicit", Columns(), "w").margin is None


@pytest.mark.parametrize("value", ["high", [1], "nan", float("inf")])
def test_margin_non_numeric_errors(value):
    row = {"prompt": "p", "chosen": "c", "rejected": "r", "margin": value}
    with pytest.raises(DataError, match="`margin`") as e:
        to_example(row, "explicit", Columns(), "d.jsonl:line 4")
    assert "d.jsonl:line 4" in str(e.value)


# --------------------------------------------------------------------------- malformed rows

GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}
MALFORMED = {
    "missing-rejected": ([GOOD, GOOD, {"prompt": "p", "chosen": "c"}], 3, "rejected", "missing"),
    "wrong-type": ([GOOD, {"prompt": "p", "chosen": 5, "rejected": "r"}], 2, "chosen", "expected a string, got int"),
    "null-field": ([{"prompt": "p", "chosen": None, "rejected": "r"}, GOOD], 1, "chosen", "is null"),
    "not-an-object": ([GOOD, ["p", "c", "r"]], 2, None, "expected a JSON object, got list"),
    "bad-margin": ([GOOD, dict(GOOD, margin="lots")], 2, "margin", "expected a number"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_row_error_names_file_line_and_field(tmp_path, case):
    rows, line, fld, problem = MALFORMED[case]
    path = write_jsonl(tmp_path / "bad_rows.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_preferences(str(path))
    msg = str(e.value)
    assert "bad_rows.jsonl" in msg and f"line {line}:" in msg and problem in msg
    if fld:
        assert f"`{fld}`" in msg and e.value.field == fld
    assert e.value.where == f"{path}:line {line}"


def test_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"prompt": "p", "chosen": \n' + json.dumps(GOOD) + "\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:line 2: invalid JSON"):
        load_preferences(str(path))
    with pytest.raises(DataError, match=r"broken\.jsonl:line 2: invalid JSON"):
        list(read_rows(str(path)))


def test_invalid_json_file_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"prompt": "p"},\n{oops}\n]')
    with pytest.raises(DataError, match=r"broken\.json:line 3: invalid JSON"):
        load_preferences(str(path))


def test_json_row_errors_name_the_row(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {"prompt": "p", "chosen": "c"}]))
    with pytest.raises(DataError, match=r"d\.json:row 2: field `rejected`"):
        load_preferences(str(path))


def test_csv_row_errors_name_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,chosen,rejected\np,c,r\np,r\n")  # a missing cell reads as null
    with pytest.raises(DataError, match=r"d\.csv:line 3: field `rejected`: is null"):
        load_preferences(str(path))


def test_skip_counts_bad_rows(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(GOOD),
             "{not json",                                   # invalid JSON
             json.dumps({"prompt": "p", "chosen": "c"}),    # missing rejected
             json.dumps([1, 2]),                            # not an object
             json.dumps(dict(GOOD, chosen="")),             # empty response: kept and counted
             json.dumps(dict(GOOD, margin="x")),            # bad margin
             json.dumps(dict(GOOD, prompt="last"))]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="rewardkit.data.pairs"):
        examples, report = load_preferences(str(path), on_error="skip")
    assert [e.prompt for e in examples] == ["p", "p", "last"]
    assert report.rows == 7 and report.skipped == 4 and report.counts == {"empty_responses": 1}
    assert len(report.errors) == 4 and "line 2" in report.errors[0] and "`rejected`" in report.errors[1]
    assert report.by_reason == {"invalid JSON": 1, "`rejected`: missing": 1, "expected a JSON object": 1,
                                "`margin`: expected a number": 1}
    assert "skipped 4 malformed row(s) of 7 (by reason: " in caplog.text
    assert "1 empty responses" in caplog.text and "line 5" in caplog.text


def test_skip_with_nothing_usable_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p"}, {"prompt": "q"}])
    with pytest.raises(DataError, match="no usable rows"):
        load_preferences(str(path), on_error="skip")


def test_on_error_must_be_known(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(ValueError, match="on_error"):
        load_preferences(str(path), on_error="ignore")


def test_max_samples(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    examples, report = load_preferences(str(path), max_samples=2)
    assert strip_source(examples) == EXPECTED[:2] and report.rows == 2


# --------------------------------------------------------------------------- real data

def test_hh_harmless_first_200_rows(tmp_path):
    if not HH_DATA.exists():
        pytest.skip(f"real HH data not found at {HH_DATA} (shared data is optional)")
    head = tmp_path / "hh200.jsonl"
    with HH_DATA.open(encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(200)]
    head.write_text("".join(lines), encoding="utf-8")
    examples, report = load_preferences(str(head))
    assert report.rows == 200 and report.skipped == 0 and len(examples) == 200
    for line, ex in zip(lines, examples):
        row = json.loads(line)
        assert isinstance(ex.prompt, str) and ex.prompt.endswith("Assistant:"), ex.source
        assert ex.prompt.startswith("\n\nHuman:"), ex.source
        assert ex.prompt + ex.chosen == row["chosen"], ex.source
        assert ex.prompt + ex.rejected == row["rejected"], ex.source
        assert ex.chosen != ex.rejected, ex.source


def test_a_prompt_under_another_name_is_not_silently_dropped(tmp_path):
    """{question, chosen, rejected} rows would be read as transcripts (format implicit) and lose the question."""
    from rewardkit.config import Columns
    from rewardkit.data import DataError
    from rewardkit.data.pairs import load_preferences

    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "q1", "chosen": "a", "rejected": "b"}\n{"question": "q2", "chosen": "c", "rejected": "d"}\n')
    with pytest.raises(DataError, match="missing, and the rows have text in `question`: set data.columns.prompt=question"):
        load_preferences(str(f))
    examples, _ = load_preferences(str(f), columns=Columns(prompt="question"))
    assert [e.prompt for e in examples] == ["q1", "q2"]
    assert len(load_preferences(str(f), fmt="implicit")[0]) == 2  # asked for: transcripts, as the user says
    hh = tmp_path / "hh.jsonl"  # a transcript that holds the question too: nothing is lost, it loads
    hh.write_text('{"question": "Hi", "chosen": "\\n\\nHuman: Hi\\n\\nAssistant: yo", '
                  '"rejected": "\\n\\nHuman: Hi\\n\\nAssistant: no"}\n')
    assert load_preferences(str(hh))[0][0].chosen.strip() == "yo"
