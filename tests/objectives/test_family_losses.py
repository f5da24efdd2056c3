"""Every loss of every family: hand-computed values, float64 gradient checks, finiteness at |delta| = 1e4."""

from __future__ import annotations

import math

import pytest
import torch

from rewardkit.losses import (LOSSES, attribute_regression, binary, first_divergence, gating_bt, get_loss,
                              internlm2, kwise_bt, regression, score_penalty, token_level)

sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus; -logsigmoid(d) = sp(-d)


def test_internlm2_by_hand():
    c, r = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0])
    p = 1 / (1 + math.exp(-1.0))
    decay = (1 - 2 * (p - 0.5)) ** 2  # d = 1 is an easy pair: down-weighted
    barrier = lambda s: -(math.log(5 - s) + math.log(s + 5))  # noqa: E731
    expected = [decay * sp(-1.0) + 0.01 * (barrier(1.0) + barrier(0.0)),
                1.0 * sp(1.0) + 0.01 * (barrier(-1.0) + barrier(0.0))]  # d = -1: factor 1 (max(0, .) = 0)
    torch.testing.assert_close(internlm2(c, r), torch.tensor(expected))
    # gamma, l2 penalty, weight, margin
    m = torch.tensor([0.5, 0.0])
    d0 = 0.5
    p0 = 1 / (1 + math.exp(-d0))
    expected = [(1 - 2 * (p0 - 0.5)) ** 3 * sp(-d0) + 0.1 * (1.0 + 0.0), sp(1.0) + 0.1 * (1.0 + 0.0)]
    torch.testing.assert_close(internlm2(c, r, margin=m, gamma=3, penalty="l2", penalty_weight=0.1),
                               torch.tensor(expected))
    torch.testing.assert_close(internlm2(c, r, penalty="none"), torch.tensor([decay * sp(-1.0), sp(1.0)]))
    with pytest.raises(ValueError, match="choose from: log_barrier, l2, none"):
        internlm2(c, r, penalty="L1")


def test_log_barrier_is_clamped_inside_the_barrier():
    s = torch.tensor([10.0, -10.0, 0.0], dtype=torch.float64)
    inside = 5 - 1e-3
    expected = -(math.log(5 - inside) + math.log(inside + 5))
    want = torch.tensor([expected, expected, -2 * math.log(5)], dtype=torch.float64)
    torch.testing.assert_close(score_penalty(s), want)


def test_first_divergence():
    ids_c = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 0], [1, 2, 3, 4]])
    ids_r = torch.tensor([[5, 6, 9, 0], [5, 6, 7, 8], [1, 2, 3, 4]])
    lc, lr = torch.tensor([4, 3, 4]), torch.tensor([3, 4, 4])
    # differs at 2; prefix -> shorter length 3; identical -> 4
    assert first_divergence(ids_c, ids_r, lc, lr).tolist() == [2, 3, 4]


def test_token_level_by_hand():
    vc = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    vr = torch.tensor([[0.0, 0.5, -1.0, 999.0]])  # 999 sits on padding: never read
    lc, lr, start = torch.tensor([4]), torch.tensor([3]), torch.tensor([1])
    # positions 1, 2, 3; past its end the rejected sequence keeps its last value (-1.0)
    expected = (sp(-0.5) + sp(-3.0) + sp(-4.0)) / 3
    torch.testing.assert_close(token_level(vc, vr, lc, lr, start), torch.tensor([expected]))
    with_margin = (sp(-0.5 + 1) + sp(-3.0 + 1) + sp(-4.0 + 1)) / 3
    torch.testing.assert_close(token_level(vc, vr, lc, lr, start, margin=torch.tensor([1.0])),
                               torch.tensor([with_margin]))
    identical = token_level(vc, vc, lc, lc, torch.tensor([4]))
    assert identical.tolist() == [0.0]


def test_kwise_by_hand_ties_and_padding():
    r = torch.tensor([[2.0, 1.0, 0.0]])
    pref = torch.tensor([[3.0, 2.0, 1.0]])
    full = torch.ones(1, 3, dtype=torch.bool)
    torch.testing.assert_close(kwise_bt(r, pref, full), torch.tensor([(sp(-1.0) + sp(-2.0) + sp(-1.0)) / 3]))
    tie = torch.tensor([[1.0, 1.0, 0.0]])  # pair (0, 1) tied: skipped
    torch.testing.assert_close(kwise_bt(r, tie, full), torch.tensor([(sp(-2.0) + sp(-1.0)) / 2]))
    two = torch.tensor([[True, True, False]])  # a prompt with K = 2 in a K = 3 batch
    torch.testing.assert_close(kwise_bt(r, pref, two), torch.tensor([sp(-1.0)]))
    assert kwise_bt(r, torch.zeros(1, 3), full).tolist() == [0.0]  # all tied: no pair, no loss


def test_pointwise_by_hand():
    torch.testing.assert_close(binary(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])),
                               torch.tensor([math.log(2), sp(2.0)]))
    pred, target = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.5])
    torch.testing.assert_close(regression(pred, target), torch.tensor([4.0, 0.25]))
    torch.testing.assert_close(regression(pred, target, huber_delta=1.0), torch.tensor([1.5, 0.125]))


def test_attribute_regression_masks_missing_labels():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, float("nan")], [3.0, 5.0]])
    loss = attribute_regression(pred, target, ~target.isnan())
    torch.testing.assert_close(loss, torch.tensor(2.0 / 3))
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[2.0, 0.0], [0.0, -2.0]]) / 3)


def test_gating_bt_by_hand():
    ac, ar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    gate = torch.tensor([[0.75, 0.25]])
    torch.testing.assert_close(gating_bt(ac, ar, gate), torch.tensor([sp(-0.5)]))


def test_pairrm_bce_by_hand():
    ab, ba = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.0])  # logits of (c, r) labelled 1, (r, c) labelled 0
    torch.testing.assert_close(get_loss("pairrm")(ab, ba), torch.tensor([(sp(-2.0) + sp(-1.0)) / 2, math.log(2)]))


def _inputs(scale: float):
    """name -> (function of float64 tensors, input tensors) for every registered loss."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).requires_grad_()  # noqa: E731
    lengths_c, lengths_r = torch.tensor([5, 3]), torch.tensor([4, 5])
    start = torch.tensor([1, 0])
    pref = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    target = torch.tensor([[0.5, float("nan")], [1.0, -1.0], [float("nan"), 2.0]], dtype=torch.float64)
    margin = torch.rand(4, generator=g, dtype=torch.float64)
    steps_ok = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    steps_mask = torch.tensor([[True, True, True], [True, False, False]])
    return {
        "bt": (lambda c, r: get_loss("bt")(c, r, margin=margin), (rnd(4), rnd(4))),
        "logexp": (lambda c, r: get_loss("logexp")(c, r, margin=margin), (rnd(4), rnd(4))),
        "internlm2": (lambda c, r: internlm2(c, r, margin=margin), (rnd(4), rnd(4))),
        "internlm2-l2": (lambda c, r: internlm2(c, r, penalty="l2", gamma=1.5), (rnd(4), rnd(4))),
        "token": (lambda vc, vr: token_level(vc, vr, lengths_c, lengths_r, start), (rnd(2, 5), rnd(2, 5))),
        "kwise": (lambda r: kwise_bt(r, pref, mask), (rnd(2, 3),)),
        "binary": (lambda r: binary(r, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)), (rnd(3),)),
        "regression": (lambda p: regression(p, torch.zeros(3, dtype=torch.float64)), (rnd(3),)),
        "regression-huber": (lambda p: regression(p, torch.ones(3, dtype=torch.float64), huber_delta=0.7), (rnd(3),)),
        "attributes": (lambda p: attribute_regression(p, target, ~target.isnan()), (rnd(3, 2),)),
        "gating": (lambda ac, ar, w: gating_bt(ac, ar, w.softmax(-1)), (rnd(3, 2), rnd(3, 2), rnd(3, 2))),
        "pairrm": (lambda ab, ba: get_loss("pairrm")(ab, ba), (rnd(4), rnd(4))),
        "prm": (lambda z: get_loss("prm")(z, steps_ok, steps_mask), (rnd(2, 3),)),
        "judge": (lambda s: get_loss("judge")(s, torch.tensor([0, 1, 1])), (rnd(3, 2),)),
    }


def test_every_registered_loss_is_covered():
    from rewardkit.config import LOSS_NAMES
    from rewardkit.objectives import FAMILIES

    assert {k.split("-")[0] for k in _inputs(1.0)} == set(LOSSES) == set(LOSS_NAMES) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(_inputs(1.0)))
def test_gradcheck_float64(name):
    fn, args = _inputs(1.0)[name]
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("name", sorted(_inputs(1.0)))
def test_finite_at_extreme_inputs(name):
    """float32, the training dtype: the first input alternates +-1e4, the others are 0, so every pairwise
    difference is 1e4 in size (both signs); loss and gradients stay finite."""
    fn, args = _inputs(1.0)[name]
    for sign in (1.0, -1.0):
        first = args[0].detach().float()
        pattern = torch.tensor([1.0, -1.0]).repeat(first.numel())[:first.numel()].reshape(first.shape)
        big = [(sign * 1e4 * pattern).requires_grad_()] + [torch.zeros_like(a.detach().float()).requires_grad_()
                                                          for a in args[1:]]
        out = fn(*big)
        out.sum().backward()
        assert torch.isfinite(out).all(), (name, out)
        assert all(torch.isfinite(b.grad).all() for b in big), name
