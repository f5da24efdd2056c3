"""Calibration (ECE, temperature fit), Spearman and length-bias diagnostics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rewardkit.eval.calibration import calibration, confidence_and_correct, expected_calibration_error, fit_temperature
from rewardkit.metrics import average_ranks, length_bias, spearman


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# Confidences chosen away from the bin edges 0.5 + k/30: 0.5 -> bin 0, 0.62 -> 3, 0.75 -> 7, 0.95 -> 13.
HAND = [0.0, logit(.75), logit(.75), logit(.75), -logit(.75), logit(.95), logit(.95), -logit(.62)]


def test_ece_matches_hand_computation():
    cal = calibration(torch.tensor(HAND, dtype=torch.float64), temperature=1.0)
    # bins: {0.5: one tie, right half the time} gap 0; {0.75: 3 of 4 right} gap 0;
    # {0.95: 2 of 2 right} gap 0.05; {0.62: 0 of 1 right} gap 0.62  ->  (2*0.05 + 0.62) / 8
    assert cal.ece == pytest.approx((2 * 0.05 + 1 * 0.62) / 8, abs=1e-12)
    assert cal.n == 8 and len(cal.bins) == 15
    counts = {i: b.count for i, b in enumerate(cal.bins) if b.count}
    assert counts == {0: 1, 3: 1, 7: 4, 13: 2}
    assert cal.bins[7].accuracy == pytest.approx(0.75) and cal.bins[7].confidence == pytest.approx(0.75)
    assert cal.bins[1].confidence is None and cal.bins[1].accuracy is None
    assert cal.bins[0].lo == 0.5 and cal.bins[-1].hi == pytest.approx(1.0)
    p = [0.5, .75, .75, .75, .25, .95, .95, .38]  # P(chosen wins) per pair
    assert cal.nll == pytest.approx(sum(-math.log(x) for x in p) / 8, abs=1e-12)
    assert cal.brier == pytest.approx(sum((1 - x) ** 2 for x in p) / 8, abs=1e-12)


def test_ece_uses_temperature_and_edges():
    m = torch.tensor(HAND, dtype=torch.float64)
    # Dividing by T=2 moves confidences; the result must equal ECE computed on the rescaled margins.
    assert calibration(m, 2.0).ece == pytest.approx(calibration(m / 2, 1.0).ece, abs=1e-12)
    conf, correct = confidence_and_correct(torch.tensor([50.0, -50.0, 0.0]))
    assert conf.tolist() == [1.0, 1.0, 0.5] and correct.tolist() == [1.0, 0.0, 0.5]
    ece, bins = expected_calibration_error(conf, correct)
    assert bins[-1].count == 2 and bins[0].count == 1  # confidence 1.0 falls in the last bin
    assert ece == pytest.approx(2 / 3 * 0.5)
    with pytest.raises(ValueError, match="temperature"):
        calibration(m, 0.0)


def test_temperature_fit_recovers_known_t():
    """Pairs whose outcome is drawn from sigmoid(Δ/T*) with T* = 2.5: the fit must find T* back."""
    gen = torch.Generator().manual_seed(0)
    true_t = 2.5
    delta = torch.randn(20000, generator=gen, dtype=torch.float64) * 4.0
    chosen_wins = torch.rand(20000, generator=gen, dtype=torch.float64) < torch.sigmoid(delta / true_t)
    margins = torch.where(chosen_wins, delta, -delta)  # chosen - rejected, as the data would record it
    fit = fit_temperature(margins)
    assert fit.temperature == pytest.approx(true_t, rel=0.05)
    assert not fit.at_bound and fit.n == 20000
    assert fit.nll_after <= fit.nll_before and fit.ece_after < fit.ece_before
    assert fit.ece_after < 0.02


def test_temperature_fit_bounds():
    assert fit_temperature(torch.tensor([1.0, 2.0, 3.0])).at_bound  # every pair right: T -> 0
    flat = fit_temperature(torch.zeros(4))
    assert flat.temperature == 1.0 and not flat.at_bound
    with pytest.raises(ValueError):
        fit_temperature(torch.tensor([]))


def test_spearman_hand_case():
    # y ranks with the tie averaged: [1, 2, 3.5, 5, 3.5]; x ranks 1..5.
    # centred: dx = [-2,-1,0,1,2], dy = [-2,-1,.5,2,.5]; sum dx*dy = 8, sum dx^2 = 10, sum dy^2 = 9.5
    x, y = torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([5.0, 6, 7, 8, 7])
    assert average_ranks(y).tolist() == [1.0, 2.0, 3.5, 5.0, 3.5]
    assert spearman(x, y) == pytest.approx(8 / math.sqrt(10 * 9.5), abs=1e-12)
    assert spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert spearman(x, torch.ones(5)) is None and spearman(x[:1], y[:1]) is None


def test_length_bias_hand_case():
    rewards = torch.tensor([3.0, 1, 2, 0, 5, 4])
    lengths = torch.tensor([10, 5, 4, 8, 20, 2])
    chosen, rejected = torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4])
    lb = length_bias(rewards, lengths, chosen, rejected, top_fraction=0.34)
    a = lb.all
    # pair (0,1): chosen longer, right; (2,3): chosen shorter, right; (5,4): chosen shorter, wrong
    assert (a.chosen_longer.n, a.chosen_longer.accuracy) == (1, 1.0)
    assert (a.chosen_shorter.n, a.chosen_shorter.accuracy) == (2, 0.5)
    assert a.equal_length == 0 and a.chosen_longer_rate == pytest.approx(1 / 3)
    assert a.prefers_longer_rate == pytest.approx(2 / 3)  # the model ranks the longer first in pairs 1 and 3
    # reward ranks [4,2,3,1,6,5], length ranks [5,3,2,4,6,1]: sum d^2 = 28 -> 1 - 6*28 / (6*35) = 0.2
    assert a.spearman_reward_length == pytest.approx(0.2)
    assert a.mean_length == pytest.approx(49 / 6)
    t = lb.top  # top ceil(0.34 * 6) = 3 responses: rewards 5, 4, 3 -> pairs won by them: (0,1) and (5,4)
    assert (t.responses, t.pairs) == (3, 2)
    assert (t.chosen_longer.n, t.chosen_longer.accuracy) == (1, 1.0)
    assert (t.chosen_shorter.n, t.chosen_shorter.accuracy) == (1, 0.0)
    assert t.spearman_reward_length == pytest.approx(0.5)  # rewards [5,4,3] vs lengths [20,2,10]
    assert t.mean_length == pytest.approx(32 / 3) and t.prefers_longer_rate == 1.0
    d = lb.to_dict()
    assert d["all"]["chosen_shorter"] == {"n": 2, "accuracy": 0.5} and d["top_fraction"] == 0.34


def test_length_bias_shared_responses_and_empty_splits():
    # best-of-N: response 0 is in both pairs; equal lengths give no longer/shorter pairs at all
    lb = length_bias(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([3, 3, 3]), torch.tensor([0, 0]),
                     torch.tensor([1, 2]))
    assert lb.all.responses == 3 and lb.all.pairs == 2 and lb.all.equal_length == 2
    assert lb.all.chosen_longer.accuracy is None and lb.all.prefers_longer_rate is None
    assert lb.all.spearman_reward_length is None  # constant lengths


def test_temperature_fit_leaves_out_non_finite_margins_and_keeps_t_without_information():
    # a NaN margin made every slope NaN and the bisection slide to T = 1e8, reported as an interior optimum
    fit = fit_temperature(torch.tensor([1.0, 2.0, float("nan"), 0.5, float("inf")]))
    assert fit.non_finite == 2 and fit.n == 3 and fit.at_bound and fit.temperature < 1e-6  # all 3 finite are right
    assert math.isfinite(fit.nll_before) and math.isfinite(fit.ece_before)
    tie = fit_temperature(torch.zeros(4), temperature_before=0.05)  # every pair a tie: nothing to learn
    assert not tie.informative and tie.temperature == pytest.approx(0.05)
    with pytest.raises(ValueError, match="finite rewards"):
        fit_temperature(torch.tensor([float("nan")]))


def test_length_bias_top_ignores_nan_rewards():
    rewards = torch.tensor([float("nan"), 1.0, 0.0, 2.0])  # topk would put the NaN first
    lb = length_bias(rewards, torch.tensor([5, 3, 4, 2]), torch.tensor([1, 3]), torch.tensor([0, 2]), top_fraction=0.25)
    assert lb.top.responses == 1 and lb.top.mean_length == 2.0  # the response with reward 2, not the NaN one


def test_values_on_inner_bin_edges_go_to_the_upper_bin():
    for b in range(1, 15):  # floor() of the float quotient put 8 of these 14 edges one bin low
        edge = 0.5 + b * (0.5 / 15)
        _, bins = expected_calibration_error(torch.tensor([edge], dtype=torch.float64), torch.tensor([1.0]))
        assert [i for i, x in enumerate(bins) if x.count] == [b], edge
