"""Data for the objective families: rating margins, K-wise / pointwise / attribute rows and their errors,
collators; and the task metrics (ranking accuracy, AUC, Spearman) and verbosity debiasing."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from conftest import write_jsonl
from rewardkit.config import Columns
from rewardkit.data import DataError, load_examples, load_preferences
from rewardkit.data.collators import RankingCollator, TargetCollator
from rewardkit.data.pairs import margin_mapping
from rewardkit.data.rankings import TokenizedRanking, ranking_example
from rewardkit.data.targets import TokenizedTarget, attribute_example, point_example
from rewardkit.data.tokenize import TokenizedSequence
from rewardkit.metrics import auc, binary_stats, ranking_stats, regression_stats, spearman
from rewardkit.objectives.multi_objective import verbosity_lambdas

COLS = Columns(attributes=["helpful", "verbosity"])


def _pair(rating, **kw):
    return {"prompt": "p", "chosen": "a", "rejected": "b", "rating": rating, **kw}


def test_llama2_margin_tables_and_user_map(tmp_path):
    rows = [_pair("Significantly better"), _pair("better"), _pair("slightly_better"), _pair("Negligibly better"),
            _pair("unsure")]
    f = write_jsonl(tmp_path / "r.jsonl", rows)
    small, _ = load_preferences(str(f), margins=margin_mapping("small", None))
    assert [e.margin for e in small] == pytest.approx([1, 2 / 3, 1 / 3, 0, 0])
    large, _ = load_preferences(str(f), margins=margin_mapping("large", None))
    assert [e.margin for e in large] == [3, 2, 1, 0, 0]
    g = write_jsonl(tmp_path / "n.jsonl", [_pair(4), _pair(1.0)])
    mine, _ = load_preferences(str(g), margins=margin_mapping(None, {"4": 2.5, "1": 0.0}))
    assert [e.margin for e in mine] == [2.5, 0.0]
    with pytest.raises(DataError, match=r"n.jsonl:line 1: field `rating`: rating 4 is not in the margin table"):
        load_preferences(str(g), margins=margin_mapping("small", None))
    with pytest.raises(ValueError, match="not both"):
        margin_mapping("small", {"a": 1})


def test_margin_column_still_used_without_a_table(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [_pair("better", margin=0.25)])
    assert load_preferences(str(f))[0][0].margin == 0.25


def test_ranking_rows():
    ex = ranking_example({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 1, 3]}, COLS, "f:line 1")
    assert ex.preference == (-2, -1, -3) and ex.responses == ("a", "b", "c")
    ex = ranking_example({"prompt": [{"role": "user", "content": "p"}], "responses": ["a", "b"], "scores": [0.1, 0.9]},
                         COLS, "f:line 2")
    assert ex.preference == (0.1, 0.9) and ex.prompt[0]["content"] == "p"


@pytest.mark.parametrize("row, field, problem", [
    ({"prompt": "p", "responses": ["a"], "ranks": [1]}, "responses", "at least 2"),
    ({"prompt": "p", "responses": "a", "ranks": [1]}, "responses", "at least 2"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [1]}, "ranks", "expected a list of 2"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1, 1]}, "scores", "tied"),
    ({"prompt": "p", "responses": ["a", "b"]}, "ranks", "need `ranks`"),
    ({"prompt": "p", "responses": ["a", []], "ranks": [1, 2]}, "responses[1]", "no response message"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [1, "x"]}, "ranks[1]", "expected a number"),
])
def test_ranking_errors_name_line_and_field(row, field, problem):
    with pytest.raises(DataError, match=rf"f.jsonl:line 7: field `{re.escape(field)}`: .*{problem}"):
        ranking_example(row, COLS, "f.jsonl:line 7")


def test_point_rows_and_errors():
    assert point_example({"prompt": "p", "response": "r", "label": True}, COLS, "w", "binary").target == 1.0
    assert point_example({"prompt": "p", "response": "r", "label": "0"}, COLS, "w", "binary").target == 0.0
    assert point_example({"prompt": "p", "response": "r", "score": "2.5"}, COLS, "w", "regression").target == 2.5
    with pytest.raises(DataError, match=r"w: field `label`: expected a 0/1"):
        point_example({"prompt": "p", "response": "r", "label": 2}, COLS, "w", "binary")
    with pytest.raises(DataError, match=r"w: field `score`: missing"):
        point_example({"prompt": "p", "response": "r"}, COLS, "w", "regression")
    with pytest.raises(DataError, match=r"w: field `score`: expected a finite"):
        point_example({"prompt": "p", "response": "r", "score": float("inf")}, COLS, "w", "regression")
    with pytest.raises(DataError, match=r"w: field `response`: missing"):
        point_example({"prompt": "p", "label": 1}, COLS, "w", "binary")


def test_attribute_rows_mask_missing_values(tmp_path):
    ex = attribute_example({"prompt": "p", "response": "r", "helpful": None, "verbosity": 0.5}, COLS, "w")
    assert math.isnan(ex.values[0]) and ex.values[1] == 0.5
    with pytest.raises(DataError, match=r"w: field `helpful`: every attribute value is missing"):
        attribute_example({"prompt": "p", "response": "r", "helpful": None, "verbosity": float("nan")}, COLS, "w")
    with pytest.raises(DataError, match=r"w: field `helpful`: missing: none of the attribute columns"):
        attribute_example({"prompt": "p", "response": "r", "other": 1}, COLS, "w")
    with pytest.raises(DataError, match=r"w: field `verbosity`: expected a number"):
        attribute_example({"prompt": "p", "response": "r", "helpful": 1, "verbosity": "lots"}, COLS, "w")
    # CSV: empty cells are missing; a bad row names its line
    f = tmp_path / "a.csv"
    f.write_text("prompt,response,helpful,verbosity\np,r,,0.5\np,r,x,1\n")
    convert = lambda row, where: attribute_example(row, COLS, where)  # noqa: E731
    with pytest.raises(DataError, match=r"a.csv:line 3: field `helpful`"):
        load_examples(str(f), convert)
    ok, report = load_examples(str(f), convert, on_error="skip")
    assert len(ok) == 1 and report.skipped == 1


def test_jsonl_nan_and_line_numbers(tmp_path):
    f = tmp_path / "k.jsonl"
    f.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]}) + "\n\n"
                 + json.dumps({"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]}) + "\n")
    with pytest.raises(DataError, match=r"k.jsonl:line 3: field `ranks`: all completions are tied"):
        load_examples(str(f), lambda row, where: ranking_example(row, COLS, where))


def _seq(n: int) -> TokenizedSequence:
    return TokenizedSequence(list(range(1, n + 1)), 1)


def test_collators():
    batch = RankingCollator(0)([TokenizedRanking((_seq(3), _seq(2), _seq(4)), (3.0, 2.0, 1.0)),
                                TokenizedRanking((_seq(2), _seq(5)), (0.0, 1.0))])
    assert batch.sequences.input_ids.shape == (5, 5)
    assert batch.mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.preference.tolist() == [[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]]  # dense ranks, 0 = worst
    big = RankingCollator(0)([TokenizedRanking((_seq(2), _seq(2), _seq(2)), (16777217.0, 16777216.0, 16777217.0))])
    assert big.preference.tolist() == [[1.0, 0.0, 1.0]]  # as float32 scores all three would tie
    tb = TargetCollator(0)([TokenizedTarget(_seq(2), (1.0, math.nan)), TokenizedTarget(_seq(3), (0.5, 0.0))])
    assert tb.mask.tolist() == [[True, False], [True, True]] and tb.target.shape == (2, 2)


def test_task_metrics():
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == 0.5  # a tie counts one half
    assert binary_stats(torch.tensor([-1.0, 2.0]), torch.tensor([0.0, 1.0]))["accuracy"] == 1.0
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 35.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 1.0, 2.0])) == pytest.approx(-0.5)
    r = regression_stats(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0]))
    assert r["mse"] == pytest.approx(4 / 3) and r["mae"] == pytest.approx(2 / 3)
    rewards = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 0.0]])
    pref = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    s = ranking_stats(rewards, pref, mask)
    # prompt 0: (0>1) right, (0>2) right, (1>2) wrong -> 2/3; prompt 1: (0>1) wrong -> 0
    assert s["accuracy"] == pytest.approx(1 / 3) and s["pair_accuracy"] == pytest.approx(0.5) and s["pairs"] == 4


def test_verbosity_lambdas_pick_the_smallest_that_decorrelates():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(400, generator=g)
    quality = torch.randn(400, generator=g)
    attrs = torch.stack([quality + 0.6 * v, v, quality], dim=1)  # attribute 0 leaks verbosity
    lam = verbosity_lambdas(attrs, verbosity=1, threshold=0.03)
    assert lam[1] == 0 and lam[2] <= 0.05 and 0.3 < lam[0] < 0.9
    assert abs(spearman(attrs[:, 0] - lam[0] * v, v)) <= 0.03
    assert abs(spearman(attrs[:, 0] - (lam[0] - 0.01) * v, v)) > 0.03  # smallest on the 0.01 grid
