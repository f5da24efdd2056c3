import math

import torch

from rewardkit.metrics import pairwise_stats


def test_pairwise_stats_counts_ties_as_wrong():
    s = pairwise_stats(torch.tensor([1.0, 2.0, 0.5, 3.0]), torch.tensor([0.0, 2.0, 1.0, 1.0]))
    assert s["n"] == 4 and s["ties"] == 1
    assert s["accuracy"] == 0.5
    assert abs(s["margin_mean"] - (1 + 0 - 0.5 + 2) / 4) < 1e-12
    assert abs(s["chosen_mean"] - 1.625) < 1e-12 and abs(s["rejected_mean"] - 1.0) < 1e-12
    both = torch.tensor([1.0, 2.0, 0.5, 3.0, 0.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    assert abs(s["reward_std"] - float(both.std(unbiased=False))) < 1e-12


def test_non_finite_scores_are_left_out_of_auc_and_spearman_and_ratios_are_float64():
    """A NaN score ranked above every number: AUC 1.0 for a NaN 'positive', Spearman over NaNs; k-wise
    accuracy divided int tensors into float32 (0.5088889002799988 for 229/450)."""
    from rewardkit.metrics import auc, ranking_stats, spearman

    nan = float("nan")
    assert math.isnan(auc(torch.tensor([nan, 1.0]), torch.tensor([1, 0])))  # no finite positive left
    assert auc(torch.tensor([nan, 2.0, 1.0, 0.0]), torch.tensor([0, 1, 0, 0])) == 1.0
    assert spearman(torch.tensor([1.0, nan, 2.0, 3.0]), torch.tensor([1.0, 5.0, 2.0, 3.0])) == 1.0
    assert spearman(torch.tensor([nan, nan, 1.0]), torch.tensor([1.0, 2.0, 3.0])) is None
    r = torch.tensor([[3.0, 2.0, 1.0]] * 150)
    pref = torch.tensor([[3.0, 2.0, 1.0]] * 76 + [[1.0, 2.0, 3.0]] * 74)
    out = ranking_stats(r, pref, torch.ones(150, 3, dtype=torch.bool))
    assert out["pair_accuracy"] == 228 / 450 and out["accuracy"] == 76 / 150
