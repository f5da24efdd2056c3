"""Process reward models (kind `prm`): stepwise rows, the step layout and its readout positions, truncation
by whole steps, the head saved and loaded with its separator, and the `StepScorer` judge (per-step scores,
min / product / last aggregates, Best-of-N through `rank`, score_details' `steps`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import write_jsonl
from rewardkit.config import Columns
from rewardkit.data.collators import StepCollator
from rewardkit.data.readers import DataError, load_examples
from rewardkit.data.steps import StepEncoder, split_steps, step_example
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.models.prm import step_logits
from rewardkit.models.reward_model import RewardModel
from rewardkit.scoring import Judge, load_judge, saved_kind
from rewardkit.scoring.prm import StepScorer, aggregate

COLS = Columns()


def _load(path, on_error="raise"):
    return load_examples(str(path), lambda row, where: step_example(row, COLS, where), on_error=on_error)


def test_stepwise_rows_parse(tmp_path):
    f = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "Start at 2, then add 3.", "completions": ["2 + 3 = 5.", "Done."], "labels": [True, "true"]},
        {"prompt": [{"role": "user", "content": "Hi"}], "completions": ["a"], "labels": [0]},
    ])
    examples, report = _load(f)
    assert report.skipped == 0 and len(examples) == 2
    assert examples[0].steps == ("2 + 3 = 5.", "Done.") and examples[0].labels == (1.0, 1.0)
    assert examples[1].labels == (0.0,) and examples[1].prompt[0]["role"] == "user"
    assert examples[0].source.endswith(":line 1")


@pytest.mark.parametrize("row, field, words", [
    ({"prompt": "p", "completions": ["a", "b"], "labels": [True]}, "labels", "1 labels for 2 steps"),
    ({"prompt": "p", "completions": ["a"], "labels": ["maybe"]}, "labels[0]", "0/1 or true/false"),
    ({"prompt": "p", "completions": [], "labels": []}, "completions", "non-empty list"),
    ({"prompt": "p", "completions": ["a", " "], "labels": [True, False]}, "completions[1]", "empty text"),
    ({"prompt": "p", "labels": [True]}, "completions", "missing"),
])
def test_malformed_rows_name_line_and_field(tmp_path, row, field, words):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completions": ["ok"], "labels": [True]}, row])
    with pytest.raises(DataError) as e:
        _load(f)
    assert e.value.where.endswith(":line 2") and e.value.field == field and words in str(e.value)
    examples, report = _load(f, on_error="skip")  # data.on_error=skip: counted, the good row kept
    assert len(examples) == 1 and report.skipped == 1


def test_split_steps():
    assert split_steps("a\n\nb\n") == ["a", "b"]
    assert split_steps(["x", "y"]) == ["x", "y"]
    assert split_steps("a ки b ки", " ки") == ["a", "b"]
    assert split_steps([{"role": "assistant", "content": "s1\ns2"}]) == ["s1", "s2"]


@pytest.fixture(scope="module")
def prm(tiny_models):
    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]), kind="prm", seed=0)
    return model.eval(), tok


def test_readouts_sit_on_each_steps_separator(prm):
    model, tok = prm
    enc = StepEncoder(SequenceEncoder(tok, 64, model.is_encoder))
    it = enc.encode("Start at 2.", ["2 + 3 = 5.", "So 5."], (1.0, 0.0))
    ids = it.sequence.input_ids
    assert tok.decode(ids) == "Start at 2.\n2 + 3 = 5.\nSo 5.\n"  # prompt, then every step, each closed by "\n"
    assert [tok.decode(ids[p]) for p in it.positions] == ["\n", "\n"] and it.positions[-1] == len(ids) - 1
    assert tok.decode(ids[it.sequence.response_start:it.positions[0] + 1]) == "2 + 3 = 5.\n"
    # a chat prompt ends with the template's generation prompt ("assistant\n"): no extra separator
    chat = enc.encode([{"role": "user", "content": "Hi"}], ["a", "b"])
    assert tok.decode(chat.sequence.input_ids).endswith("<|im_start|>assistant\na\nb\n")
    # each step is tokenised alone: the separator never merges with the next step's first token
    other = StepEncoder(SequenceEncoder(tok, 64, False), " ки")
    it2 = other.encode("Q", ["x", "y"])
    assert [tok.decode(it2.sequence.input_ids[p]) for p in it2.positions] == [tok.decode(other.sep_ids[-1:])] * 2


def test_encoder_layout_reads_each_steps_last_token(tiny_models):
    """WordPiece drops "\n": the readout is then the step's own last token, inside [CLS] p [SEP] steps [SEP]."""
    model, tok = RewardModel.from_pretrained(str(tiny_models["bert"]), kind="prm", seed=0)
    enc = StepEncoder(SequenceEncoder(tok, 64, model.is_encoder))
    it = enc.encode("start at 2", ["two plus three is five", "so five"])
    ids = it.sequence.input_ids
    assert tok.decode(ids) == "[CLS] start at 2 [SEP] two plus three is five so five [SEP]"
    assert [tok.decode(ids[p]) for p in it.positions] == ["five", "five"] and it.positions[-1] == len(ids) - 2
    assert it.sequence.token_type_ids[it.positions[0]] == 1
    b = StepCollator(tok.pad_token_id)([it])
    with torch.no_grad():
        assert step_logits(model.eval(), b.sequences, b.positions).shape == (1, 2)


def test_truncation_keeps_whole_steps(prm):
    model, tok = prm
    full = StepEncoder(SequenceEncoder(tok, 512, False)).encode("Start at 2. " * 5, ["2 + 3 = 5."] * 4, (1, 0, 1, 0))
    step_len = full.positions[1] - full.positions[0]
    enc = StepEncoder(SequenceEncoder(tok, 2 * step_len + 3, False))
    it = enc.encode("Start at 2. " * 5, ["2 + 3 = 5."] * 4, (1.0, 0.0, 1.0, 0.0))
    assert it.truncated and it.steps == 4 and len(it.positions) == 2 and it.labels == (1.0, 0.0)
    assert len(it.sequence.input_ids) <= 2 * step_len + 3
    assert tok.decode(it.sequence.input_ids).endswith("2 + 3 = 5.\n2 + 3 = 5.\n")  # whole steps; prompt cut first
    # a first step longer than the budget keeps its end (and its readout)
    tiny = StepEncoder(SequenceEncoder(tok, 8, False)).encode("p", ["one two three four five six seven eight nine"])
    assert len(tiny.sequence.input_ids) == 8 and tiny.positions == (7,)


def test_step_logits_match_single_sequences(prm):
    """Padding does not change a step's logit: a batch of two equals each row alone."""
    model, tok = prm
    enc = StepEncoder(SequenceEncoder(tok, 64, False))
    items = [enc.encode("Q", ["a b c", "d"]), enc.encode("Longer question here", ["x", "y", "z w"])]
    collate = StepCollator(tok.pad_token_id)
    with torch.no_grad():
        both = step_logits(model, collate(items).sequences, collate(items).positions)
        for i, it in enumerate(items):
            b = collate([it])
            alone = step_logits(model, b.sequences, b.positions)[0]
            torch.testing.assert_close(both[i, :len(it.positions)], alone, atol=1e-5, rtol=1e-5)


def test_aggregates_on_a_hand_example():
    probs = [0.9, 0.5, 0.8]
    assert aggregate(probs, "min") == 0.5
    assert math.isclose(aggregate(probs, "product"), 0.36)
    assert aggregate(probs, "last") == 0.8
    with pytest.raises(ValueError, match="min, product, last"):
        aggregate(probs, "mean")


class _Fixed(StepScorer):
    """A StepScorer whose step probabilities are given: the aggregation and ranking logic alone."""

    def __init__(self, table, how):
        self.table, self.aggregate, self.separator = table, how, "\n"

    def _probs(self, prompts, step_lists):
        return [None] * len(prompts), [[self.table[s] for s in steps] for steps in step_lists]


def test_score_aggregates_and_rank_picks_the_candidate_without_a_bad_step():
    table = {"good": 0.9, "ok": 0.7, "bad": 0.1, "end": 0.95}
    cands = ["good\nbad\nend", "good\nok\nend", "ok\nok\nok"]
    for how, expected in (("min", [0.1, 0.7, 0.7]), ("product", [0.9 * 0.1 * 0.95, 0.9 * 0.7 * 0.95, 0.343]),
                          ("last", [0.95, 0.95, 0.7])):
        judge = _Fixed(table, how)
        assert judge.score(["p"] * 3, cands) == pytest.approx(expected)
    assert _Fixed(table, "min").rank("p", cands).best == 1  # ties keep input order
    assert _Fixed(table, "product").rank("p", cands).best == 1


def test_saved_prm_round_trip_and_judge(prm, tmp_path):
    model, tok = prm
    model.head.separator = " ки"
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "prm", tok, max_length=64)
    block = json.loads((tmp_path / "prm" / "config.json").read_text())["rewardkit"]
    assert block["kind"] == "prm" and block["prm"] == {"step_separator": " ки"} and not block["hf_equivalent"]
    assert saved_kind(tmp_path / "prm") == "prm"
    judge = load_judge(tmp_path / "prm", options={"aggregate": "product"})
    assert isinstance(judge, StepScorer) and isinstance(judge, Judge) and judge.pointwise
    assert judge.separator == " ки" and judge.aggregate == "product" and judge.encoder.max_length == 64
    enc = StepEncoder(SequenceEncoder(tok, 64, False), " ки")
    it = enc.encode("Q", ["a b", "c"])
    b = StepCollator(tok.pad_token_id)([it])
    with torch.no_grad():
        expected = torch.sigmoid(step_logits(model, b.sequences, b.positions)[0].double()).tolist()
    steps = judge.score_steps(["Q"], ["a b ки c ки"])[0]  # a string is split on the saved separator
    assert steps == pytest.approx(expected, abs=1e-5)
    assert judge.score_steps(["Q"], [["a b", "c"]])[0] == pytest.approx(steps)
    assert judge.score(["Q"], ["a b ки c"])[0] == pytest.approx(math.prod(steps), abs=1e-5)
    d = judge.score_details(["Q", "Q"], ["a b ки c", "c"])
    rows = d.rows()
    assert rows[0]["steps"] == pytest.approx(steps) and len(rows[1]["steps"]) == 1
    assert rows[0]["score"] == pytest.approx(math.prod(steps)) and d.truncated.tolist() == [False, False]
    cmp = judge.compare(["Q"], ["a b ки c"], ["c"])[0]
    assert cmp.margin == pytest.approx(rows[0]["score"] - rows[1]["score"])


def test_steps_cut_by_max_length_are_none(prm, tmp_path):
    model, tok = prm
    judge = StepScorer(model, tok, max_length=12)
    probs = judge.score_steps(["Q"], [["one two three", "four five six", "seven eight nine"]])[0]
    assert probs[0] is not None and probs[-1] is None
    assert judge.score(["Q"], [["one two three", "four five six", "seven eight nine"]])[0] == \
        pytest.approx(min(p for p in probs if p is not None))
    with pytest.raises(ValueError, match="has no steps"):
        judge.score(["Q"], ["\n\n"])


def test_a_response_without_steps_is_the_requests_fault_and_rewardscorer_refuses_a_prm(prm, tmp_path):
    """A blank response has no step to read: a 400 from the server (was a 500), one line from the CLI. And
    RewardScorer would read a PRM at the EOS after an unsplit response, where it was never trained."""
    from rewardkit.scoring import RewardScorer, UnscorableResponse

    model, tok = prm
    model.save_pretrained(tmp_path / "prm", tok, max_length=64)
    judge = load_judge(tmp_path / "prm")
    with pytest.raises(UnscorableResponse, match="response 2 of 2 has no steps"):
        judge.score(["Q", "Q"], ["a\n\nb", " \n\n "])
    with pytest.raises(ValueError, match="holds a 'prm' model"):
        RewardScorer.load(tmp_path / "prm")


def test_the_server_answers_400_for_a_response_without_steps(prm, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rewardkit.serve.app import create_app
    from rewardkit.serve.combine import Single
    from rewardkit.serve.service import RewardService, ServeSettings

    model, tok = prm
    model.save_pretrained(tmp_path / "prm", tok, max_length=64)
    settings = ServeSettings()
    service = RewardService({"m": load_judge(tmp_path / "prm")}, Single("m"), settings)
    with TestClient(create_app(service, settings), raise_server_exceptions=False) as client:
        r = client.post("/v1/score", json={"items": [{"prompt": "Q", "response": "\n\n"}]})
    assert r.status_code == 400 and "has no steps" in r.json()["detail"]


def test_a_step_without_tokens_names_its_row(tiny_models):
    from rewardkit.data.steps import StepExample, tokenize_steps

    _, tok = RewardModel.from_pretrained(str(tiny_models["bert"]), kind="prm", seed=0)
    enc = StepEncoder(SequenceEncoder(tok, 64, True))  # WordPiece keeps nothing of "\u200b" and drops "\n"
    ex = StepExample("start at 2", ("two plus three is five", "\u200b"), (1.0, 0.0), "steps.jsonl:line 4")
    with pytest.raises(DataError, match=r"steps.jsonl:line 4: step 2 \('\\u200b'\) has no tokens"):
        tokenize_steps(enc, [ex])


def test_a_first_wrong_step_cut_by_max_length_is_not_credited(prm):
    """A response whose first wrong step was cut: "none wrong" among the scored steps is not its answer, so
    first_wrong_accuracy must not count it right (it did), in `rewardkit eval` and in training's eval alike."""
    from rewardkit.data.steps import StepExample
    from rewardkit.eval.prm import evaluate_steps
    from rewardkit.metrics import step_stats

    model, tok = prm
    steps = ["one two three", "four five six", "seven eight nine"]
    judge = StepScorer(model, tok, max_length=12)  # keeps the first step only (test above)
    examples = [StepExample("Q", tuple(steps), (1.0, 1.0, 0.0), "f:line 1"),
                StepExample("Q", tuple(steps), (1.0, 1.0, 1.0), "f:line 2")]
    stats, rows = evaluate_steps(judge, examples)
    assert stats["first_wrong_cut"] == 1 and rows[0]["first_wrong"] == 2 and rows[1]["first_wrong"] == -1
    assert stats["first_wrong_accuracy"] <= 0.5  # row 1 can never be right
    it = StepEncoder(SequenceEncoder(tok, 8, False)).encode("Q", steps, (1.0, 1.0, 0.0))  # 2 steps kept
    assert it.wrong_cut and len(it.positions) < 3
    assert not StepEncoder(SequenceEncoder(tok, 512, False)).encode("Q", steps, (1.0, 1.0, 0.0)).wrong_cut
    ok = torch.ones(2, 1)  # every scored step predicted and labelled correct
    assert step_stats(ok, ok, ok.bool())["first_wrong_accuracy"] == 1.0
    assert step_stats(ok, ok, ok.bool(), torch.tensor([True, False]))["first_wrong_accuracy"] == 0.5
