"""rewardkit.rlhf against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rewardkit.rlhf import kl_estimate, kl_penalized_rewards, llama2_select, logit, whiten


def test_logit_inverts_sigmoid_and_clamps():
    p = torch.tensor([0.5, 0.75, 0.1])
    torch.testing.assert_close(logit(p), torch.tensor([0.0, math.log(3.0), math.log(1 / 9)]))
    ends = logit(torch.tensor([0.0, 1.0]), eps=1e-4)
    torch.testing.assert_close(ends, torch.tensor([math.log(1e-4 / (1 - 1e-4)), math.log((1 - 1e-4) / 1e-4)]),
                               rtol=1e-4, atol=1e-3)  # float32 holds 1 - 1e-4 only roughly
    x = torch.tensor([-3.0, 0.2, 4.0])
    torch.testing.assert_close(logit(torch.sigmoid(x)), x, atol=1e-4, rtol=1e-4)


def test_whiten_masked_unbiased():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # unmasked values 1,2,3,4: mean 2.5, unbiased var (2.25+0.25+0.25+2.25)/3 = 5/3
    sd = math.sqrt(5 / 3)
    want = torch.tensor([[-1.5 / sd, -0.5 / sd, 0.5 / sd], [1.5 / sd, 100.0, -7.0]])
    torch.testing.assert_close(whiten(x, mask, eps=0.0), want)
    kept = whiten(x, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(kept[0], want[0] + 2.5)
    torch.testing.assert_close(whiten(torch.tensor([1.0, 3.0]), eps=0.0), torch.tensor([-1 / math.sqrt(2), 1 / math.sqrt(2)]))
    with pytest.raises(ValueError, match="at least 2"):
        whiten(x, torch.zeros_like(mask))


def test_llama2_select():
    safety = torch.tensor([0.9, 0.1, 0.5, 0.15])
    helpful = torch.tensor([0.2, 0.8, 0.7, 0.3])
    is_safety = torch.tensor([True, False, False, False])
    # row 0: safety prompt -> safety; row 1: unsafe answer (0.1 < 0.15) -> safety; row 2 -> helpfulness;
    # row 3: exactly at the threshold is not below it -> helpfulness
    torch.testing.assert_close(llama2_select(safety, helpful, is_safety), torch.tensor([0.9, 0.1, 0.7, 0.3]))


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    # r = ref/p = 0.5 and 2.0
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([math.log(2), -math.log(2)]))
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([0.5 * math.log(2) ** 2] * 2))
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"),
                               torch.tensor([(0.5 - 1) - math.log(0.5), (2.0 - 1) - math.log(2.0)]))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logp, ref, "k4")


def test_kl_penalized_rewards_puts_score_on_last_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, -1.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])  # right pad, left pad, empty row
    score = torch.tensor([2.0, -1.0, 5.0])
    out = kl_penalized_rewards(score, logp, ref, mask, beta=0.1, estimator="k1")
    # k1 = logp - ref: row 0 -> 0.5, -1.0, 0.0 ; row 1 (unmasked part) -> 0, 0
    want = torch.tensor([[-0.05, 0.1, 0.0 + 2.0, 0.0], [0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, want)
    k3 = kl_penalized_rewards(score, logp, ref, mask, beta=1.0, estimator="k3")
    assert k3[0, 0] == pytest.approx(-(math.exp(-0.5) - 1 + 0.5), abs=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        kl_penalized_rewards(score[:2], logp, ref, mask, beta=0.1)


def test_low_precision_inputs_are_computed_in_float32():
    # bf16 rounds 1 - 1e-6 to 1 (logit inf, whiten NaN for the whole batch) and 3.0 - 0.001 to 3.0
    assert torch.isfinite(logit(torch.tensor([0.0, 1.0], dtype=torch.bfloat16))).all()
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16)
    out = kl_penalized_rewards(torch.tensor([3.0]), logp, logp - 0.125, torch.ones(1, 2), beta=0.008)
    assert out.dtype == torch.float32 and out[0, 1].item() == pytest.approx(3.0 - 0.001, abs=1e-6)


def test_beta_per_row_masked_positions_and_empty_rows():
    z = torch.zeros(2, 2)
    per_row = kl_penalized_rewards(torch.zeros(2), z, z - 1.0, torch.ones(2, 2), beta=torch.tensor([0.1, 0.5]))
    assert torch.allclose(per_row, torch.tensor([[-0.1, -0.1], [-0.5, -0.5]]))  # (B,) is per row, not per token
    logp = torch.tensor([[-1.0, float("-inf")], [float("nan"), 0.0]])  # garbage where the mask is 0
    out = kl_penalized_rewards(torch.tensor([1.0, float("inf")]), logp, torch.zeros(2, 2),
                               torch.tensor([[1, 0], [0, 0]]), beta=0.1)
    assert torch.allclose(out, torch.tensor([[1.0 + 0.1, 0.0], [0.0, 0.0]]))  # k1 = -1 here; the empty row: zeros


def test_soft_mask_places_the_score_where_the_kl_ends_and_lists_are_taken():
    """A float mask (0.5 weights) counts a token as a response token for the KL; the score must go on the last
    such token too (it went on the last exactly-1 position, or on position 0)."""
    logp, ref = torch.zeros(1, 4), torch.full((1, 4), -1.0)
    soft = torch.tensor([[1.0, 1.0, 0.5, 0.0]])
    r = kl_penalized_rewards(torch.tensor([3.0]), logp, ref, soft, beta=0.1)
    assert r[0, 2] == pytest.approx(3.0 - 0.1) and r[0, 3] == 0
    as_lists = kl_penalized_rewards([3.0], logp.tolist(), ref.tolist(), [[1, 1, 1, 0]], beta=[0.1])
    torch.testing.assert_close(as_lists, r)
