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
