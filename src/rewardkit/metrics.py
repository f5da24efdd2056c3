"""Pure metrics over reward tensors (no model, no I/O): pair accuracy, reward statistics, ranking accuracy,
regression error, AUC, Spearman, length-bias diagnostics, process-reward step metrics. Imports torch only."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def preference_prob(delta: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """P(a ≻ b) = sigmoid((r_a − r_b) / T), the one definition of a model's preference probability
    (Python, CLI and HTTP all use it). delta: (N,) reward differences r_a − r_b -> (N,) float64."""
    return torch.sigmoid(delta.double() / check_temperature(temperature))


def reward_stats(rewards: torch.Tensor) -> dict[str, float]:
    """Mean and (population) standard deviation of rewards (N,): what config.json saves for normalisation."""
    r = rewards.double()
    if not r.numel():
        return {"reward_mean": float("nan"), "reward_std": float("nan")}
    return {"reward_mean": float(r.mean()), "reward_std": float(r.std(unbiased=False))}


def pairwise_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy and reward statistics for pairs. chosen, rejected: (B,).

    A tie (rc == rr) counts as wrong, so a constant model scores 0, not 0.5.
    """
    chosen, rejected = chosen.double(), rejected.double()
    delta = chosen - rejected
    both = torch.cat([chosen, rejected])
    n = int(chosen.numel())
    return {
        "accuracy": float((delta > 0).double().mean()) if n else float("nan"),
        "n": n,
        "ties": int((delta == 0).sum()),
        "margin_mean": float(delta.mean()) if n else float("nan"),
        "chosen_mean": float(chosen.mean()) if n else float("nan"),
        "rejected_mean": float(rejected.mean()) if n else float("nan"),
        **reward_stats(both),
    }


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of x (N,), tied values sharing the mean of their ranks (as scipy's rankdata)."""
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    _, inverse, counts = torch.unique_consecutive(x[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # mean of ranks (end - count + 1) .. end
    ranks = torch.empty_like(x)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman rank correlation of x, y (N,): Pearson correlation of average ranks.

    None when it is undefined (fewer than 2 values, or one side constant). Pairs with a NaN/inf on either side
    are left out (ranked, a NaN would sit above every number), as pair eval leaves them out of calibration.
    """
    if x.numel() != y.numel():
        raise ValueError(f"spearman: x has {x.numel()} values, y has {y.numel()}")
    keep = torch.isfinite(x.flatten()) & torch.isfinite(y.flatten())
    x, y = x.flatten()[keep], y.flatten()[keep]
    if x.numel() < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float((rx.square().sum() * ry.square().sum()).sqrt())
    return float((rx * ry).sum()) / denom if denom > 0 else None


def ranking_stats(rewards: torch.Tensor, preference: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Pairwise accuracy within each prompt's completions. rewards, preference: (P, K); mask: (P, K) bool.

    Over the ordered pairs (preference_i > preference_j; ties in preference skipped), a pair is right when
    reward_i > reward_j (a reward tie is wrong). `accuracy` averages each prompt's share of right pairs
    over the prompts that have pairs; `pair_accuracy` pools all pairs.
    """
    r, p = rewards.double(), preference.double()
    pairs = mask[:, :, None] & mask[:, None, :] & (p[:, :, None] > p[:, None, :])
    right = pairs & (r[:, :, None] > r[:, None, :])
    per_prompt, n_right = pairs.sum((1, 2)), right.sum((1, 2))
    has = per_prompt > 0
    return {
        "accuracy": float((n_right[has].double() / per_prompt[has]).mean()) if has.any() else float("nan"),
        "pair_accuracy": float(n_right.sum().double() / per_prompt.sum()) if has.any() else float("nan"),
        "prompts": int(has.sum()),
        "pairs": int(per_prompt.sum()),
    }


def regression_stats(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MSE, MAE and Pearson correlation of predictions (N,) against numeric targets (N,)."""
    p, t = pred.double(), target.double()
    pc, tc = p - p.mean(), t - t.mean()
    denom = (pc.norm() * tc.norm()).item()
    return {"mse": float(((p - t) ** 2).mean()), "mae": float((p - t).abs().mean()),
            "pearson": float((pc * tc).sum() / denom) if denom > 0 else float("nan"), "n": int(p.numel())}


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of scores (N,) for 0/1 labels (N,) (Mann-Whitney U; tied scores count one half). NaN/inf scores
    are left out (ranked, a NaN would sit above every number); NaN when a class has no finite score."""
    keep = torch.isfinite(scores.flatten())
    scores, labels = scores.flatten()[keep], labels.flatten()[keep]
    y = labels.bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(scores)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AUC, accuracy of `logit > 0` and positive rate for 0/1 labels. logits, labels: (N,)."""
    y = labels.bool()
    return {"auc": auc(logits, labels), "accuracy": float(((logits > 0) == y).double().mean()),
            "positive_rate": float(y.double().mean()), "n": int(y.numel())}


def first_wrong(bad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first wrong step, -1 when none is. bad, mask: (N, S) bool -> (N,) long."""
    bad = bad & mask
    if bad.shape[1] == 0:
        return torch.full((bad.shape[0],), -1, dtype=torch.long)
    return torch.where(bad.any(1), bad.int().argmax(1), -1)  # argmax: the first of equal maxima


def step_stats(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
               wrong_cut: torch.Tensor | None = None) -> dict[str, float]:
    """Process reward models on N responses of up to S steps: logits (N, S) (a step is predicted correct
    when its logit > 0, i.e. P > 0.5), labels (N, S) 1 = correct, mask (N, S) bool, True for real steps;
    wrong_cut (N,) bool: the response's first wrong step was cut by max_length (no scored step is wrong).

    step_accuracy: right steps / steps; first_wrong_accuracy: responses whose first wrong step (or "none
    wrong") is predicted exactly (a cut first wrong step can never be: "none wrong" is not the answer);
    step_auc: ROC AUC of the logits for the correct-step label (NaN when one class is absent);
    wrong_step_rate: share of steps labelled wrong; n_steps: steps scored; n: responses."""
    m = mask.bool()
    y = labels.bool()
    pred_ok = logits > 0
    n_steps = int(m.sum())
    right = (pred_ok == y) & m
    truth = first_wrong(~y, m)
    if wrong_cut is not None:
        truth = torch.where(wrong_cut.bool(), m.shape[1], truth)  # an index no prediction takes
    fw = first_wrong(~pred_ok, m) == truth
    return {"step_accuracy": float(right.sum()) / max(n_steps, 1),
            "first_wrong_accuracy": float(fw.double().mean()) if fw.numel() else float("nan"),
            "step_auc": auc(logits[m], y[m].float()),
            "wrong_step_rate": float((~y & m).sum()) / max(n_steps, 1), "n_steps": n_steps, "n": int(m.shape[0])}


@dataclass(frozen=True)
class LengthSplit:
    """Accuracy on the pairs of one length relation (ties count as wrong, as in `pairwise_stats`)."""

    n: int
    accuracy: float | None  # None when n == 0


@dataclass(frozen=True)
class LengthView:
    """Length bias of a set of pairs and of the responses in them."""

    responses: int
    pairs: int
    mean_length: float | None  # response length in tokens
    spearman_reward_length: float | None  # over the responses
    chosen_longer: LengthSplit
    chosen_shorter: LengthSplit
    equal_length: int
    chosen_longer_rate: float | None  # data: share of unequal-length pairs where chosen is the longer one
    prefers_longer_rate: float | None  # model: share of unequal-length, non-tied pairs where it ranks the longer higher


@dataclass(frozen=True)
class LengthBias:
    """Reward-hacking diagnostics: does the reward follow length rather than quality?

    `all` covers every pair; `top` the pairs whose higher-rewarded response is among the top `top_fraction`
    of all responses by reward (the ones a best-of-N or RL policy would be pushed towards).
    """

    top_fraction: float
    all: LengthView
    top: LengthView

    def to_dict(self) -> dict:
        return asdict(self)


def _view(rewards: torch.Tensor, lengths: torch.Tensor, resp: torch.Tensor, ci: torch.Tensor,
          ri: torch.Tensor) -> LengthView:
    rc, rr, lc, lr = rewards[ci], rewards[ri], lengths[ci], lengths[ri]
    correct = rc > rr
    longer, shorter = lc > lr, lc < lr

    def split(sel: torch.Tensor) -> LengthSplit:
        k = int(sel.sum())
        return LengthSplit(k, float(correct[sel].double().mean()) if k else None)

    unequal = longer | shorter
    n_unequal = int(unequal.sum())
    decided = unequal & (rc != rr)
    model_longer = ((rc > rr) & longer) | ((rr > rc) & shorter)
    r, ln = rewards[resp], lengths[resp]
    return LengthView(
        responses=int(resp.numel()), pairs=int(ci.numel()),
        mean_length=float(ln.double().mean()) if ln.numel() else None,
        spearman_reward_length=spearman(r, ln),
        chosen_longer=split(longer), chosen_shorter=split(shorter), equal_length=int((~unequal).sum()),
        chosen_longer_rate=int(longer.sum()) / n_unequal if n_unequal else None,
        prefers_longer_rate=float(model_longer[decided].double().mean()) if int(decided.sum()) else None)


def length_bias(rewards: torch.Tensor, lengths: torch.Tensor, chosen_idx: torch.Tensor, rejected_idx: torch.Tensor,
                top_fraction: float = 0.1) -> LengthBias:
    """Length diagnostics. rewards, lengths: (M,) per response (length in tokens); chosen_idx, rejected_idx:
    (N,) indices of each pair's responses (a response may belong to several pairs, as in best-of-N rows).
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    rewards, lengths = rewards.double(), lengths.double()
    ci, ri = chosen_idx.long(), rejected_idx.long()
    used = torch.unique(torch.cat([ci, ri]))
    k = max(1, math.ceil(top_fraction * used.numel()))
    top = used[torch.topk(rewards[used].nan_to_num(nan=float("-inf")), k).indices]  # topk puts NaN first
    in_top = torch.zeros(rewards.numel(), dtype=torch.bool)
    in_top[top] = True
    # A pair is "top" when the response the model ranks higher (either one on a tie) is a top response.
    winner_top = torch.where(rewards[ci] > rewards[ri], in_top[ci],
                             torch.where(rewards[ri] > rewards[ci], in_top[ri], in_top[ci] | in_top[ri]))
    return LengthBias(top_fraction, _view(rewards, lengths, used, ci, ri),
                      _view(rewards, lengths, top, ci[winner_top], ri[winner_top]))
