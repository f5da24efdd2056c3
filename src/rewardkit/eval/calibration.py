"""Calibration of pairwise preferences: P(a ≻ b) = sigmoid((r_a − r_b) / T). Pure torch, no model, no I/O.

Inputs are margins m = r_chosen − r_rejected, shape (N,), so the true outcome of every pair is "chosen wins".
Calibration is measured top-label style (Guo et al. 2017): the model's confidence in the side it prefers is
c = sigmoid(|m| / T) ∈ [0.5, 1], and it is right when m > 0 (a tie, m == 0, is right half the time).
A calibrated model is right a fraction c of the times it says c. Because c never drops below 0.5, the 15
equal-width bins of the expected calibration error (ECE) span [0.5, 1], not [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from rewardkit.metrics import check_temperature, preference_prob

N_BINS = 15


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: pairs with confidence in [lo, hi) (the last bin includes 1.0)."""

    lo: float
    hi: float
    count: int
    confidence: float | None  # mean confidence of its pairs; None when empty
    accuracy: float | None  # fraction of its pairs where the preferred side is the chosen one


@dataclass(frozen=True)
class Calibration:
    """Calibration of one set of pairs at one temperature."""

    temperature: float
    n: int
    ece: float  # expected calibration error, sum_b (n_b / n) |accuracy_b − confidence_b|
    nll: float  # mean −log P(chosen ≻ rejected)
    brier: float  # mean (1 − P(chosen ≻ rejected))^2
    bins: list[ReliabilityBin]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TemperatureFit:
    """Result of `fit_temperature`: the NLL-optimal T and what it changes against the T in use before.
    `saved` and `kept` are filled by `rewardkit calibrate` (eval.evaluate.calibrate): whether T was written,
    and if not why the old one was kept ("at_bound", "no_information", "ece_worse", "save=false")."""

    temperature: float
    n: int
    nll_before: float  # at temperature_before
    nll_after: float
    ece_before: float
    ece_after: float
    at_bound: bool  # True when the optimum lies at the search limit (e.g. every pair right: T -> 0)
    temperature_before: float = 1.0
    saved: bool = False
    kept: str | None = None
    non_finite: int = 0  # pairs left out of the fit: a NaN or infinite reward
    informative: bool = True  # False when every margin is 0: any T fits as well (log 2), nothing to learn

    def to_dict(self) -> dict:
        return asdict(self)


def prob_chosen(margins: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """P(chosen ≻ rejected) = sigmoid(m / T) (`metrics.preference_prob`). margins: (N,) -> (N,) float64."""
    return preference_prob(margins, temperature)


def confidence_and_correct(margins: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-label view of pairs. margins: (N,) -> confidence (N,) in [0.5, 1] and correctness (N,) in {0, 0.5, 1}."""
    m = margins.double()
    conf = torch.sigmoid(m.abs() / check_temperature(temperature))
    correct = (m > 0).double() + 0.5 * (m == 0).double()
    return conf, correct


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS,
                               lo: float = 0.5, hi: float = 1.0) -> tuple[float, list[ReliabilityBin]]:
    """ECE over `n_bins` equal-width bins of [lo, hi]. confidence, correct: (N,).

    Returns (ece, bins). A value exactly at an inner edge goes to the upper bin; `hi` goes to the last bin.
    """
    if confidence.numel() == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    conf, corr = confidence.double(), correct.double()
    width = (hi - lo) / n_bins
    # + 1e-9: (0.6 - 0.5) / (0.5 / 15) is 2.9999999999999996 in floats, and 0.6 belongs to bin 3
    idx = ((conf - lo) / width + 1e-9).floor().long().clamp(0, n_bins - 1)
    n = conf.numel()
    ece, bins = 0.0, []
    for b in range(n_bins):
        sel = idx == b
        k = int(sel.sum())
        if k:
            c, a = float(conf[sel].mean()), float(corr[sel].mean())
            ece += k / n * abs(a - c)
            bins.append(ReliabilityBin(lo + b * width, lo + (b + 1) * width, k, c, a))
        else:
            bins.append(ReliabilityBin(lo + b * width, lo + (b + 1) * width, 0, None, None))
    return ece, bins


def pair_nll(margins: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean −log sigmoid(m / T), computed as softplus(−m / T) so large margins do not overflow."""
    return float(F.softplus(-margins.double() / check_temperature(temperature)).mean())


def calibration(margins: torch.Tensor, temperature: float = 1.0, n_bins: int = N_BINS) -> Calibration:
    """ECE, NLL, Brier score and reliability bins of pairs. margins: (N,) chosen − rejected rewards."""
    conf, correct = confidence_and_correct(margins, temperature)
    ece, bins = expected_calibration_error(conf, correct, n_bins)
    p = prob_chosen(margins, temperature)
    return Calibration(temperature=float(temperature), n=int(margins.numel()), ece=ece,
                       nll=pair_nll(margins, temperature), brier=float(((1 - p) ** 2).mean()), bins=bins)


def fit_temperature(margins: torch.Tensor, *, n_bins: int = N_BINS, iters: int = 200,
                    temperature_before: float = 1.0) -> TemperatureFit:
    """The T minimising mean −log sigmoid(m / T) over pairs. margins: (N,) chosen − rejected rewards.
    The `*_before` numbers are measured at `temperature_before` (the T in use so far).

    The loss is convex in β = 1/T, so its derivative mean(−m·sigmoid(−β m)) is increasing; we bisect it on
    log β over [1e-8, 1e8]. If every pair is right the optimum is T -> 0 and the fit stops at the bound
    (`at_bound`); if the model is worse than chance it stops at T = 1e8 (probabilities near 0.5).
    """
    m = margins.double().flatten()
    finite = torch.isfinite(m)
    non_finite = int((~finite).sum())
    m = m[finite]  # a NaN margin makes every slope NaN and the bisection slide to T = 1e8 unnoticed
    if m.numel() == 0:
        raise ValueError("fit_temperature needs at least one pair with finite rewards"
                         + (f" ({non_finite} had a NaN or infinite reward)" if non_finite else ""))

    def slope(log_beta: float) -> float:
        beta = math.exp(log_beta)
        return float((-m * torch.sigmoid(-beta * m)).mean())

    lo, hi = math.log(1e-8), math.log(1e8)
    at_bound, informative = False, not bool((m == 0).all())
    if not informative:  # every T gives log 2
        log_beta = math.log(1.0 / temperature_before)
    elif slope(hi) <= 0:
        log_beta, at_bound = hi, True
    elif slope(lo) >= 0:
        log_beta, at_bound = lo, True
    else:
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        log_beta = 0.5 * (lo + hi)
    t = 1.0 / math.exp(log_beta)
    before, after = calibration(m, temperature_before, n_bins), calibration(m, t, n_bins)
    return TemperatureFit(temperature=t, n=int(m.numel()), nll_before=before.nll, nll_after=after.nll,
                          ece_before=before.ece, ece_after=after.ece, at_bound=at_bound,
                          temperature_before=float(temperature_before), non_finite=non_finite,
                          informative=informative)
