import math

import pytest
import torch

from rewardkit.losses import LOSSES, PAIRWISE_LOSSES, bradley_terry, center_penalty, get_loss, log_exp


def test_bt_matches_hand_computed_values():
    chosen = torch.tensor([1.0, 0.0, -2.0])
    rejected = torch.tensor([0.0, 0.0, 1.0])
    margin = torch.tensor([0.0, 1.0, 0.5])
    # -log(sigmoid(d)) = log(1 + exp(-d)) with d = rc - rr - m = 1, -1, -3.5
    expected = torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0)), math.log1p(math.exp(3.5))])
    torch.testing.assert_close(bradley_terry(chosen, rejected, margin=margin), expected)
    torch.testing.assert_close(bradley_terry(chosen, rejected), torch.tensor([math.log1p(math.exp(-1.0)), math.log(2.0),
                                                                              math.log1p(math.exp(3.0))]))


def test_logexp_equals_bt_and_is_stable():
    c, r = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    m = torch.rand(16, dtype=torch.float64)
    torch.testing.assert_close(log_exp(c, r, margin=m), bradley_terry(c, r, margin=m))
    big = log_exp(torch.tensor([0.0, 1e4]), torch.tensor([1e4, 0.0]))
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big, torch.tensor([1e4, 0.0]))


def test_center_penalty():
    torch.testing.assert_close(center_penalty(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 2.0])),
                               torch.tensor([9.0, 0.0]))


@pytest.mark.parametrize("name", sorted(PAIRWISE_LOSSES))
def test_gradients_float64(name):
    fn = get_loss(name)
    c = torch.randn(5, dtype=torch.float64, requires_grad=True)
    r = torch.randn(5, dtype=torch.float64, requires_grad=True)
    m = torch.rand(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, margin=m), (c, r))


def test_unknown_loss_lists_choices():
    with pytest.raises(ValueError, match="choose from: " + ", ".join(sorted(LOSSES))):
        get_loss("sigmoid")
