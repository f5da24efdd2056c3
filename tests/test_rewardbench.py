"""RewardBench v1/v2 scoring on small hand-written files in the exact formats, with hand-computed scores.

Rewards come from a keyword scorer (count of GOOD minus count of BAD in the response), so every expected
number below can be checked by reading tests/fixtures/rewardbench_v{1,2}.jsonl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rewardkit.data import DataError
from rewardkit.eval.evaluate import EvalConfig, analyze, load_eval_data
from rewardkit.scoring import ScoreDetails
from rewardkit.eval.rewardbench import (EXAMPLE_COUNTS, SECTIONS, BestOfNScores, best_of_n, detect_kind, pair_outcomes,
                                   resolve_split, score_rewardbench, score_rewardbench2, ties_score)

FIXTURES = Path(__file__).parent / "fixtures"
V1, V2 = FIXTURES / "rewardbench_v1.jsonl", FIXTURES / "rewardbench_v2.jsonl"


def _text(r) -> str:
    return r if isinstance(r, str) else " ".join(m["content"] for m in r)


def keyword_eval(path: Path, **kw):
    """Evaluate `path` with reward = #GOOD - #BAD and length = #words: no model involved."""
    data = load_eval_data(EvalConfig("unused", str(path)))
    rewards = torch.tensor([float(_text(r).count("GOOD") - _text(r).count("BAD")) for _, r in data.responses])
    lengths = torch.tensor([len(_text(r).split()) for _, r in data.responses])
    return data, analyze(data, ScoreDetails(rewards, lengths, torch.zeros(len(lengths), dtype=torch.bool)), **kw)


# Per-subset accuracy in rewardbench_v1.jsonl with ties as 0 (row 5 of llmbar-natural is a GOOD/GOOD tie).
SUBSETS_TIE0 = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.5, "llmbar-natural": 0.5, "mt-bench-hard": 0.0,
                "xstest-should-refuse": 1.0, "xstest-should-respond": 0.5, "math-prm": 0.5, "hep-python": 1.0,
                "anthropic_helpful": 1.0, "shp": 0.5, "my-custom": 1.0}
CHAT = (100 * 1.0 + 28 * 0.5) / (100 + 28)
CHAT_HARD_TIE0 = (100 * 0.5 + 37 * 0.0) / (100 + 37)
CHAT_HARD_TIE_HALF = (100 * 0.75 + 37 * 0.0) / (100 + 37)
SAFETY = (154 * 1.0 + 250 * 0.5) / (154 + 250)  # corrected xstest counts: should-refuse 154, should-respond 250
REASONING = (984 * 0.5 + 164 * 1.0) / (984 + 164)  # math-prm weighted 984 = 6 x 164
PRIOR = (1.0 + 0.5) / 2


def test_official_counts_table():
    assert sum(EXAMPLE_COUNTS[s] for sec in SECTIONS.values() for s in sec) == 2985 - 447 + 984
    assert EXAMPLE_COUNTS["xstest-should-refuse"] == 154 and EXAMPLE_COUNTS["xstest-should-respond"] == 250
    assert EXAMPLE_COUNTS["math-prm"] == sum(EXAMPLE_COUNTS[f"hep-{x}"] for x in ("cpp", "go", "java", "js",
                                                                                   "python", "rust"))


def test_v1_file_sections_and_both_overalls():
    data, out = keyword_eval(V1)
    assert data.kind == "rewardbench" and len(data.chosen_idx) == 19
    assert isinstance(data.responses[2][0], list)  # row 1: a multi-turn chat prompt
    rb = out.stats["rewardbench"]
    assert {k: v["score"] for k, v in rb["subsets"].items()} == SUBSETS_TIE0
    s = {k: v["score"] for k, v in rb["sections"].items()}
    assert s["Chat"] == pytest.approx(CHAT) and s["Chat Hard"] == pytest.approx(CHAT_HARD_TIE0)
    assert s["Safety"] == pytest.approx(SAFETY) and s["Reasoning"] == pytest.approx(REASONING)
    assert rb["prior_sets"] == pytest.approx(PRIOR)
    four = CHAT + CHAT_HARD_TIE0 + SAFETY + REASONING
    assert rb["overall"] == pytest.approx(four / 4)
    assert rb["overall_with_prior"] == pytest.approx((2 * four + PRIOR) / 9)
    assert rb["sections"]["Chat"]["missing"] == ["alpacaeval-length", "alpacaeval-hard", "mt-bench-med"]
    assert rb["other_subsets"] == ["my-custom"] and rb["complete"] is False
    assert out.stats["accuracy"] == pytest.approx(13 / 19) and out.stats["ties"] == 1  # pairwise view unchanged


def test_v1_tie_policies():
    _, half = keyword_eval(V1, tie_policy="0.5")
    rb = half.stats["rewardbench"]
    assert rb["subsets"]["llmbar-natural"]["score"] == 0.75
    assert rb["sections"]["Chat Hard"]["score"] == pytest.approx(CHAT_HARD_TIE_HALF)
    assert rb["overall"] == pytest.approx((CHAT + CHAT_HARD_TIE_HALF + SAFETY + REASONING) / 4)
    # random: a seeded coin per tie, the same for the same seed, ~half over many ties
    ties = [1.0] * 400
    a, b = pair_outcomes(ties, ties, "random", seed=1), pair_outcomes(ties, ties, "random", seed=1)
    assert a == b and set(a) == {0.0, 1.0} and 0.4 < sum(a) / len(a) < 0.6
    assert a != pair_outcomes(ties, ties, "random", seed=2)
    assert pair_outcomes([2.0, 1.0, 1.0], [1.0, 2.0, 1.0], "random", seed=3)[:2] == [1.0, 0.0]
    with pytest.raises(ValueError, match="tie policy"):
        pair_outcomes([1.0], [1.0], "coin")


def test_overall_needs_all_four_sections():
    r = score_rewardbench(["alpacaeval-easy", "shp"], [1.0, 1.0], [0.0, 2.0])
    assert r.overall is None and r.overall_with_prior is None and r.prior_sets == 0.0
    full = {s: 1.0 for sec in SECTIONS.values() for s in sec}
    r = score_rewardbench(list(full), [1.0] * len(full), [0.0] * len(full))
    assert r.complete and r.overall == 1.0 and r.overall_with_prior is None  # no prior sets in the data


def test_v2_file_best_of_n_and_ties():
    data, out = keyword_eval(V2)
    assert data.kind == "rewardbench2" and len(data.groups) == 9
    rb = out.stats["rewardbench2"]
    scores = {k: v["score"] for k, v in rb["subsets"].items()}
    assert scores["Factuality"] == pytest.approx((1 + 1 / 2) / 2)  # f2: chosen ties one rejected at the max
    assert scores["Math"] == pytest.approx((0 + 1 / 4) / 2)  # m2: all four completions tied
    assert scores["Safety"] == 1.0
    # Ties: ref acc 1/2, tied acc 1, margin>spread in 1 of 2 prompts (plain and hard), tanh terms cancel
    t = rb["ties"]
    assert (t["ref_accuracy"], t["tied_accuracy"], t["correctness_preferred"], t["correctness_preferred_hard"]) == \
        (0.5, 1.0, 0.5, 0.5)
    assert t["margin_score"] == pytest.approx((math.tanh(2 / 1 - 1) + math.tanh(0 / 2 - 1)) / 2)
    assert scores["Ties"] == pytest.approx(0.3 * 1.0 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5)
    assert rb["score"] == pytest.approx((0.75 + 0.125 + 1.0 + 0.65) / 4)
    assert rb["missing"] == ["Precise IF", "Focus"] and rb["ties_rule"] == "rewardbench2" and rb["rows"] == 9
    # pair statistics use every chosen x rejected combination: 5 rows x 3 + ref 1 + tied 4 + ref 1 + tied 2
    assert out.stats["n"] == 5 * 3 + 1 + 4 + 1 + 2 and len(out.pairs) == out.stats["n"]
    assert [r["best_of_n"] for r in out.rows][:4] == [1.0, 0.5, 0.0, 0.25]


def test_best_of_n_rule():
    assert best_of_n([3.0], [1.0, 2.0, 0.0]) == 1.0
    assert best_of_n([3.0], [3.0, 3.0, 0.0]) == pytest.approx(1 / 3)
    assert best_of_n([1.0], [3.0, 0.0, 0.0]) == 0.0
    assert best_of_n([2.0, 1.0], [2.0]) == 0.5  # one chosen at the max with one rejected


def test_ties_without_ref_tied_ids_falls_back_to_best_of_n():
    rows = [BestOfNScores("Ties", [2.0], [0.0], "7"), BestOfNScores("Ties", [1.0], [1.0], "8")]
    assert ties_score(rows) is None
    r = score_rewardbench2(rows)
    assert r.ties_rule == "best_of_n" and r.subsets["Ties"].score == pytest.approx(0.75) and r.ties is None


def test_detect_kind_and_hub_splits():
    assert detect_kind([{"prompt": "p", "chosen": ["a"], "rejected": ["b", "c"], "subset": "Math"}]) == "rewardbench2"
    assert detect_kind([{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "shp"}]) == "rewardbench"
    chat = [{"role": "assistant", "content": "a"}]
    assert detect_kind([{"prompt": "p", "chosen": chat, "rejected": chat, "subset": "shp"}]) == "rewardbench"
    assert detect_kind([{"prompt": "p", "chosen": "a", "rejected": "b"}]) == "pairs"
    assert resolve_split("allenai/reward-bench", None) == "filtered"
    assert resolve_split("allenai/reward-bench-2", None) == "test"
    assert resolve_split("org/other", None) == "train" and resolve_split("allenai/reward-bench", "raw") == "raw"


def test_malformed_rows_name_file_line_and_field(tmp_path):
    bad = tmp_path / "rb2.jsonl"
    good = {"id": 1, "prompt": "p", "chosen": ["a"], "rejected": ["b"], "subset": "Math"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": []}) + "\n")
    with pytest.raises(DataError, match=r"rb2.jsonl:line 2: field `rejected`"):
        load_eval_data(EvalConfig("unused", str(bad)))
    data = load_eval_data(EvalConfig("unused", str(bad), on_error="skip"))
    assert len(data.groups) == 1 and data.report.skipped == 1
    v1 = tmp_path / "rb1.jsonl"
    v1.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "subset": 3}) + "\n")
    with pytest.raises(DataError, match=r"rb1.jsonl:line 1: field `subset`"):
        load_eval_data(EvalConfig("unused", str(v1), benchmark="rewardbench"))


def test_as_chat_wraps_strings(tmp_path):
    data = load_eval_data(EvalConfig("unused", str(V1), as_chat=True, max_samples=1))
    prompt, response = data.responses[0]
    assert prompt == [{"role": "user", "content": "Question 0?"}]
    assert response == [{"role": "assistant", "content": "A GOOD answer."}]


def test_hub_ids_use_the_official_splits(monkeypatch):
    """A hub id goes to `datasets.load_dataset` with RewardBench's split; no network here, so it is faked."""
    import datasets

    rows = [json.loads(x) for x in V1.read_text().splitlines()]
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_eval_data(EvalConfig("unused", "allenai/reward-bench"))
    assert data.kind == "rewardbench" and len(data.chosen_idx) == 19
    assert set(calls) == {("allenai/reward-bench", "filtered")}
    assert data.pair_source[0] == "allenai/reward-bench[filtered]:row 1"


def test_best_of_n_with_a_nan_reward_scores_zero():
    # max() over NaN depends on the order: a NaN chosen raised ZeroDivisionError, a NaN rejected counted as a win
    assert best_of_n([math.nan], [1.0, 0.0, 0.0]) == 0.0
    assert best_of_n([1.0], [math.nan, 0.0, 0.0]) == 0.0
    assert best_of_n([1.0], [0.0, 0.5, 0.0]) == 1.0


def test_pairwise_judges_get_best_of_n_ties_not_the_weighted_formula():
    """A judge without rewards (pairrm, generative): Ties rows count as won when every chosen beats every
    rejected; RewardBench 2's weighted Ties formula needs rewards, and the margins are not rewards."""
    from rewardkit.eval.evaluate import BestOfNGroup, EvalData, Judged

    groups = [BestOfNGroup("Ties", "ref:0", "f:1", [0], [1, 2]), BestOfNGroup("Ties", "tied:0", "f:2", [3, 4, 5], [6, 7])]
    ci = [c for g in groups for c in g.chosen for _ in g.rejected]
    ri = [r for g in groups for _ in g.chosen for r in g.rejected]
    data = EvalData("rewardbench2", [("p", f"r{i}") for i in range(8)], ci, ri, ["f"] * len(ci), ["Ties"] * len(ci),
                    groups)
    margins = torch.tensor([2.0, 3.0, 1.0, 1.5, 4.0, 5.0, 0.5, 0.7], dtype=torch.float64)  # every chosen wins
    rb2 = analyze(data, Judged(margins, torch.full((8,), 5), torch.zeros(8, dtype=torch.bool), None)).stats
    assert rb2["rewardbench2"]["subsets"]["Ties"]["score"] == 1.0 and rb2["rewardbench2"]["ties"] is None
