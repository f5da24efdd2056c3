"""The Judge interface as consumers see it: pairwise kinds rank (matrix, knockout) and evaluate through
`compare` margins with the same results a pointwise model gives where the two can agree; kinds without
per-response scores are refused clearly where a consumer needs them."""

from __future__ import annotations

import json

import pytest
import torch

from rewardkit.apps import filter_file, make_pairs_file, rank_file, score_file
from rewardkit.eval.evaluate import EvalConfig, analyze, judge_eval_data, load_eval_data, run_eval
from rewardkit.scoring import Judge, NoScores, PairwiseJudge, PointwiseJudge, RewardScorer, load_judge
from test_rewardbench import V1, V2, keyword_eval

RPS = {("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")}  # a beats b: no scalar reward does this


def _text(r) -> str:
    return r if isinstance(r, str) else " ".join(m["content"] for m in r)


def _kw(r) -> float:
    t = _text(r)
    return float(t.count("GOOD") - t.count("BAD"))


class KeywordPairs(PairwiseJudge):
    """A pairwise judge whose verdict is the keyword count difference (or rock-paper-scissors when told)."""

    kind = "toy_pairwise"

    def __init__(self, rps: bool = False):
        self.rps, self.calls = rps, []

    def margins(self, prompts, a, b):
        self.calls.append(len(a))
        if self.rps:
            return torch.tensor([3.0 if (x, y) in RPS else -3.0 if (y, x) in RPS else 0.0 for x, y in zip(a, b)])
        return torch.tensor([_kw(x) - _kw(y) for x, y in zip(a, b)], dtype=torch.float64)


class KeywordPoints(PointwiseJudge):
    kind = "toy_pointwise"

    def score_texts(self, prompts, responses, *, normalize=False):
        return torch.tensor([_kw(r) for r in responses], dtype=torch.float64)


def test_both_bases_satisfy_the_protocol():
    assert isinstance(KeywordPairs(), Judge) and isinstance(KeywordPoints(), Judge)
    assert issubclass(RewardScorer, PointwiseJudge)


def test_pairwise_compare_is_antisymmetric_and_refuses_scores():
    j = KeywordPairs()
    ab = j.compare(["p", "p"], ["GOOD", "BAD"], ["BAD", "GOOD GOOD"], temperature=2.0)
    ba = j.compare(["p", "p"], ["BAD", "GOOD GOOD"], ["GOOD", "BAD"], temperature=2.0)
    assert [c.prob_a_better + d.prob_a_better for c, d in zip(ab, ba)] == [1.0, 1.0]
    assert ab[0].reward_a is None and ab[0].margin == 2.0 and ab[0].temperature == 2.0
    for call in (lambda: j.score(["p"], ["x"]), lambda: j.score_details(["p"], ["x"]),
                 lambda: j.normalize(torch.zeros(1))):
        with pytest.raises(NoScores, match="toy_pairwise.*compare or rank"):
            call()


def test_matrix_and_knockout_rankings():
    j = KeywordPairs()
    cands = ["BAD", "GOOD GOOD", "", "GOOD", "BAD BAD"]
    m = j.rank("p", cands)
    assert m.order == [1, 3, 2, 0, 4] and m.best == 1 and j.calls == [10]  # one call, N(N-1)/2 pairs
    j.calls.clear()
    k = j.rank("p", cands, strategy="knockout")
    assert k.best == 1 and sum(j.calls) == len(cands) - 1  # N - 1 judgements
    # rank_many: every prompt's pairs in one call
    j.calls.clear()
    out = j.rank_many(["p", "q"], [["BAD", "GOOD"], ["GOOD", "", "BAD", "GOOD GOOD"]])
    assert [r.best for r in out] == [1, 3] and j.calls == [1 + 6]
    with pytest.raises(ValueError, match="unknown rank strategy"):
        j.rank("p", cands, strategy="swiss")


def test_an_intransitive_preference_only_a_pairwise_kind_can_hold():
    j = KeywordPairs(rps=True)
    assert [c.prob_a_better > 0.5 for c in j.compare(["p"] * 3, ["rock", "scissors", "paper"],
                                                      ["scissors", "paper", "rock"])] == [True, True, True]
    assert j.rank("p", ["rock", "paper", "scissors"]).scores == [0.0, 0.0, 0.0]  # a perfect cycle: all equal


@pytest.mark.parametrize("path", [V1, V2])
def test_pairwise_eval_matches_pointwise_where_they_can_agree(path):
    _, pointwise = keyword_eval(path)
    data = load_eval_data(EvalConfig("unused", str(path)))
    judged = judge_eval_data(KeywordPairs(), data)
    pairwise = analyze(data, judged)
    for key in ("accuracy", "n", "ties", "margin_mean"):
        assert pairwise.stats[key] == pytest.approx(pointwise.stats[key])
    assert "chosen_mean" not in pairwise.stats and pairwise.pairs[0]["chosen_reward"] is None
    for key in ("ece", "nll", "ece_t1", "nll_t1"):
        assert pairwise.stats["calibration"][key] == pytest.approx(pointwise.stats["calibration"][key])
    assert pairwise.stats["length_bias"]["basis"] == "pair margins"
    if path == V1:
        assert pairwise.stats["rewardbench"] == pointwise.stats["rewardbench"]
    else:  # best-of-N agrees on every row without a tie at the top
        for p, q in zip(pairwise.rows, pointwise.rows):
            if q["best_of_n"] in (0.0, 1.0):
                assert p["best_of_n"] == q["best_of_n"], (p, q)


def test_eval_and_apps_through_a_pairwise_judge(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "p", "chosen": c, "rejected": r}) + "\n"
                             for c, r in [("GOOD", "BAD"), ("GOOD GOOD", "GOOD"), ("meh", "GOOD")]))
    stats = run_eval(EvalConfig("unused", str(pairs)), scorer=KeywordPairs()).stats
    assert stats["accuracy"] == pytest.approx(2 / 3) and stats["n"] == 3
    lists = tmp_path / "lists.jsonl"
    lists.write_text(json.dumps({"prompt": "p", "responses": ["BAD", "GOOD GOOD", "GOOD"]}) + "\n")
    rank_file(str(lists), tmp_path / "ranked.jsonl", KeywordPairs())
    assert json.loads((tmp_path / "ranked.jsonl").read_text())["best_index"] == 1
    report = make_pairs_file(str(lists), tmp_path / "dpo.jsonl", KeywordPairs())
    row = json.loads((tmp_path / "dpo.jsonl").read_text())
    assert (row["chosen"], row["rejected"], report.rows_out) == ("GOOD GOOD", "BAD", 1)
    with pytest.raises(NoScores, match="filter"):
        filter_file(str(lists), tmp_path / "kept.jsonl", KeywordPairs(), threshold=0.0)
    points = tmp_path / "points.jsonl"
    points.write_text(json.dumps({"prompt": "p", "response": "GOOD"}) + "\n")
    with pytest.raises(NoScores):
        score_file(str(points), tmp_path / "scored.jsonl", KeywordPairs())
    assert not (tmp_path / "kept.jsonl").exists() and not (tmp_path / "scored.jsonl").exists()


def test_load_judge_reads_the_saved_kind(tiny_models, tmp_path):
    from rewardkit.models.reward_model import RewardModel

    model, tok = RewardModel.from_pretrained(str(tiny_models["llama"]), seed=0)
    model.save_pretrained(tmp_path / "rm", tok, max_length=32)
    judge = load_judge(tmp_path / "rm")
    assert isinstance(judge, RewardScorer) and judge.kind == "scalar" and judge.pointwise
    with pytest.raises(ValueError, match="unknown model kind 'nope'"):
        load_judge(tmp_path / "rm", kind="nope")


def test_help_lists_every_kind(capsys):
    from rewardkit.cli import KIND_HELP, build_parser
    from rewardkit.config import MODEL_KINDS
    from rewardkit.scoring import JUDGES

    assert set(MODEL_KINDS) == set(JUDGES) == set(KIND_HELP)
    text = build_parser().format_help()
    assert all(f"  {k} " in text for k in MODEL_KINDS)


def test_a_plain_lm_calibrated_as_a_judge_keeps_its_kind(tiny_models, tmp_path):
    import shutil

    from rewardkit.models.reward_model import write_temperature

    lm = tmp_path / "lm"
    shutil.copytree(tiny_models["llama"], lm)
    assert load_judge(lm, kind="generative").temperature == 1.0
    write_temperature(lm, 2.5, kind="generative")
    judge = load_judge(lm)  # auto: the kind written beside T, not a value head
    assert judge.kind == "generative" and not judge.pointwise and judge.temperature == 2.5
