"""Evaluation of a reward model: pair accuracy, RewardBench v1/v2 scores, calibration, length diagnostics.

Pipeline: `load_eval_data` (rows -> responses to score + which of them form pairs) -> `judge_eval_data`
(one pass of the judge: per-response scores, or one compare per pair for kinds that only compare) ->
`analyze` (pure: margins and rewards -> stats and per-pair records).
Every eval reports calibration (ECE at the model's temperature) and length-bias diagnostics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardkit.config import CalibrateRunConfig, EvalRunConfig, PairsInput, flat_config
from rewardkit.data.fields import Text
from rewardkit.data.pairs import PreferenceExample, load_preferences
from rewardkit.data.readers import LoadReport, read_rows
from rewardkit.io import write_jsonl
from rewardkit.metrics import length_bias, pairwise_stats
from rewardkit.precision import precision_name
from rewardkit.scoring import Judge, ScoreDetails, judge_from_config, saved_kind
from rewardkit.scoring.base import response_lengths

log = logging.getLogger(__name__)

BENCHMARKS = ("auto", "pairs", "rewardbench", "rewardbench2")


def EvalConfig(model_dir: str, data: str, **settings: Any) -> EvalRunConfig:
    """The flat constructor of earlier versions, e.g. `EvalConfig("runs/rm", "dev.jsonl", on_error="skip",
    batch_size=8)`: each keyword is the last part of an `EvalRunConfig` key (on_error -> data.on_error)."""
    return flat_config(EvalRunConfig, model=model_dir, data=data, **settings)


@dataclass
class EvalData:
    """What to score and how the scores combine. Indices point into `responses`."""

    kind: str  # "pairs", "rewardbench" or "rewardbench2"
    responses: list[tuple[Text, Text]]  # (prompt, response) pairs to score, (M,)
    chosen_idx: list[int]  # per pair, (N,)
    rejected_idx: list[int]
    pair_source: list[str]  # "file:line 3"
    pair_subset: list[str | None]
    groups: list[BestOfNGroup] | None = None  # RewardBench 2 rows
    report: LoadReport = field(default_factory=LoadReport)


@dataclass(frozen=True)
class BestOfNGroup:
    """One RewardBench 2 row: indices of its chosen and rejected completions in `EvalData.responses`."""

    subset: str
    id: str | None
    source: str
    chosen: list[int]
    rejected: list[int]


@dataclass
class EvalOutcome:
    stats: dict[str, Any]  # what `rewardkit eval --json` prints
    pairs: list[dict[str, Any]]  # one record per pair (pairs.jsonl)
    rows: list[dict[str, Any]] | None = None  # one record per RewardBench 2 row (rows.jsonl)


# --------------------------------------------------------------------------- loading

def _chat(prompt: Text, response: Text) -> tuple[Text, Text]:
    p = ([{"role": "user", "content": prompt}] if prompt else []) if isinstance(prompt, str) else prompt
    r = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
    return p, r


def _detect(data: PairsInput, split: str) -> str:
    from rewardkit.eval.rewardbench import detect_kind

    rows = []
    try:
        for _, row in read_rows(data.path, split):
            rows.append(row)
            if len(rows) == 32:
                break
    except (ValueError, OSError):  # DataError, bad JSON or bytes, a missing file: the loader that follows reports it
        pass
    return detect_kind(rows, data.columns)


def load_eval_data(cfg: EvalRunConfig | CalibrateRunConfig) -> EvalData:
    """Read `cfg.data.path` as plain pairs, RewardBench v1 or v2 (`cfg.data.benchmark`, detected by default)."""
    from rewardkit.eval.rewardbench import BenchPair, load_benchmark, resolve_split

    d = cfg.data
    if d.benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {d.benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    split = resolve_split(d.path, d.split)
    kind = _detect(d, split) if d.benchmark == "auto" else d.benchmark
    log.info("%s: evaluating as %s", d.path, kind)
    wrap = _chat if d.as_chat else (lambda p, r: (p, r))
    data = EvalData(kind, [], [], [], [], [])
    if kind == "rewardbench2":
        rows, data.report = load_benchmark(d.path, kind, split=split, on_error=d.on_error,
                                           max_samples=d.max_samples, columns=d.columns)
        data.groups = []
        for row in rows:
            start = len(data.responses)
            data.responses += [wrap(row.prompt, c) for c in row.chosen + row.rejected]
            ch = list(range(start, start + len(row.chosen)))
            rj = list(range(start + len(row.chosen), len(data.responses)))
            data.groups.append(BestOfNGroup(row.subset, row.id, row.source, ch, rj))
            for c in ch:  # pair statistics use every (chosen, rejected) combination of the row
                for r in rj:
                    data.chosen_idx.append(c)
                    data.rejected_idx.append(r)
                    data.pair_source.append(row.source)
                    data.pair_subset.append(row.subset)
        return data
    if kind == "rewardbench":
        items, data.report = load_benchmark(d.path, kind, split=split, on_error=d.on_error,
                                            max_samples=d.max_samples, columns=d.columns)
    else:
        examples, data.report = load_preferences(d.path, fmt=d.format, columns=d.columns, on_error=d.on_error,
                                                 split=split, max_samples=d.max_samples)
        items = [BenchPair(ex, None) for ex in examples]  # type: ignore[arg-type]
    for it in items:
        ex: PreferenceExample = it.example
        data.chosen_idx.append(len(data.responses))
        data.responses.append(wrap(ex.prompt, ex.chosen))
        data.rejected_idx.append(len(data.responses))
        data.responses.append(wrap(ex.prompt, ex.rejected))
        data.pair_source.append(ex.source)
        data.pair_subset.append(it.subset)
    return data


def score_responses(judge: Judge, responses: Sequence[tuple[Text, Text]]) -> ScoreDetails:
    """Raw rewards and token lengths of (prompt, response) pairs, (M,) each (pointwise kinds)."""
    return judge.score_details([p for p, _ in responses], [r for _, r in responses])


@dataclass
class Judged:
    """What a judge said about `EvalData`: per pair the log-odds of chosen ≻ rejected at T=1 (N,) (reward
    difference for pointwise kinds), per response the tokens it has (M,) and, for pointwise kinds, the
    scoring details (None for kinds that only compare)."""

    margins: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    details: ScoreDetails | None = None

    @classmethod
    def from_details(cls, data: EvalData, details: ScoreDetails) -> "Judged":
        r = details.rewards.double()
        return cls(r[data.chosen_idx] - r[data.rejected_idx], details.lengths, details.truncated, details)


def judge_eval_data(judge: Judge, data: EvalData) -> Judged:
    """One pass of `judge` over `data`: per-response scores where the kind gives them (each response once),
    else one `compare` per pair."""
    if judge.pointwise:
        return Judged.from_details(data, score_responses(judge, data.responses))
    prompts = [data.responses[i][0] for i in data.chosen_idx]
    comps = judge.compare(prompts, [data.responses[i][1] for i in data.chosen_idx],
                          [data.responses[i][1] for i in data.rejected_idx], temperature=1.0)
    return Judged(torch.tensor([c.margin for c in comps], dtype=torch.float64),
                  response_lengths(judge, [r for _, r in data.responses]), torch.zeros(len(data.responses), dtype=torch.bool))


# --------------------------------------------------------------------------- analysis (pure)

def analyze(data: EvalData, judged: Judged | ScoreDetails, *, temperature: float = 1.0, tie_policy: str = "0",
            seed: int = 0, top_fraction: float = 0.1) -> EvalOutcome:
    """Stats and per-pair records from what the judge said; no model involved. Without per-response rewards
    (pairwise kinds) reward statistics are absent, length bias reads ±margin/2 per pair's responses, and
    RewardBench 2 rows count as won when every chosen beats every rejected."""
    from rewardkit.eval.calibration import calibration, prob_chosen
    from rewardkit.eval.rewardbench import BestOfNScores, best_of_n, score_rewardbench, score_rewardbench2

    if isinstance(judged, ScoreDetails):
        judged = Judged.from_details(data, judged)
    ci, ri = torch.tensor(data.chosen_idx, dtype=torch.long), torch.tensor(data.rejected_idx, dtype=torch.long)
    margins = judged.margins.double()
    if judged.details is not None:
        rewards = judged.details.rewards.double()
        chosen, rejected = rewards[ci], rewards[ri]
        stats: dict[str, Any] = pairwise_stats(chosen, rejected)
        lb = length_bias(rewards, judged.lengths, ci, ri, top_fraction).to_dict()
    else:
        zero = torch.zeros_like(margins)
        stats = {k: v for k, v in pairwise_stats(margins, zero).items() if k in ("accuracy", "n", "ties", "margin_mean")}
        chosen, rejected = margins, zero
        n = len(margins)  # each pair's two responses on their own, at ±margin/2
        lb = length_bias(torch.cat([margins / 2, -margins / 2]), torch.cat([judged.lengths[ci], judged.lengths[ri]]),
                         torch.arange(n), torch.arange(n, 2 * n), top_fraction).to_dict()
        lb["basis"] = "pair margins"
    stats.update(data.report.summary())  # skipped_rows (+ by reason), empty_responses, identical_pairs
    stats["truncated_pairs"] = int((judged.truncated[ci] | judged.truncated[ri]).sum())
    stats["benchmark"] = data.kind
    finite = torch.isfinite(margins)
    stats["non_finite_pairs"] = int((~finite).sum())  # counted wrong in accuracy, left out of calibration
    if stats["non_finite_pairs"]:
        log.warning("%d of %d pairs have a NaN or infinite reward: counted wrong, left out of calibration",
                    stats["non_finite_pairs"], len(margins))
    cal = calibration(margins[finite], temperature)
    raw = cal if temperature == 1.0 else calibration(margins[finite])  # T=1: what the raw rewards say
    stats["calibration"] = {**cal.to_dict(), "ece_t1": raw.ece, "nll_t1": raw.nll}
    stats["length_bias"] = lb
    rows = None
    if data.kind == "rewardbench":
        stats["rewardbench"] = score_rewardbench([s or "" for s in data.pair_subset], chosen.tolist(),
                                                 rejected.tolist(), tie_policy, seed).to_dict()
    elif data.kind == "rewardbench2":
        groups = data.groups or []
        by_pair = dict(zip(zip(data.chosen_idx, data.rejected_idx), margins.tolist()))
        scores = [BestOfNScores(g.subset, *_row_values(g, judged, by_pair)) for g in groups]
        stats["rewardbench2"] = {"rows": len(groups), **score_rewardbench2(scores).to_dict()}
        if judged.details is None:
            stats["rewardbench2"]["rule"] = "best_of_n (chosen beats every rejected; no Ties weighting without rewards)"
        rows = [{"source": g.source, "id": g.id, "subset": g.subset, "chosen_rewards": s.chosen,
                 "rejected_rewards": s.rejected, "best_of_n": best_of_n(s.chosen, s.rejected)}
                for g, s in zip(groups, scores)]
    probs = prob_chosen(margins, temperature).tolist()
    lengths = judged.lengths.tolist()
    has_rewards = judged.details is not None
    pairs = [{"source": src, "chosen_reward": c if has_rewards else None,
              "rejected_reward": r if has_rewards else None, "margin": m, "correct": m > 0,
              "subset": sub, "prob_chosen": p, "chosen_tokens": lengths[a], "rejected_tokens": lengths[b]}
             for src, sub, c, r, m, p, a, b in zip(data.pair_source, data.pair_subset, chosen.tolist(),
                                                    rejected.tolist(), margins.tolist(), probs, data.chosen_idx,
                                                    data.rejected_idx)]
    return EvalOutcome(stats, pairs, rows)


def _row_values(g: BestOfNGroup, judged: Judged,
                by_pair: dict[tuple[int, int], float]) -> tuple[list[float], list[float], str | None]:
    """(chosen, rejected) values of a RewardBench 2 row: the rewards, or for pairwise kinds each chosen's
    smallest margin over the rejected against 0 for every rejected (a win iff it beats them all)."""
    if judged.details is not None:
        r = judged.details.rewards.double()
        return r[g.chosen].tolist(), r[g.rejected].tolist(), g.id
    worst = [min(by_pair[(c, r)] for r in g.rejected) for c in g.chosen]
    return worst, [0.0] * len(g.rejected), None  # no id: the Ties weighting needs rewards, not margins


# --------------------------------------------------------------------------- entry points

def load_scorer(cfg: EvalRunConfig | CalibrateRunConfig) -> Judge:
    """The judge `cfg.model` names (its kind from the folder or `model.kind`), run as `cfg.scoring` says."""
    return judge_from_config(cfg)


def run_eval(cfg: EvalRunConfig, scorer: Judge | None = None) -> EvalOutcome:
    """Load the data and the model (unless given), judge every pair, analyse. The data first: a malformed row
    is reported before minutes of model loading."""
    data = load_eval_data(cfg)
    judge = scorer or load_scorer(cfg)
    judged = judge_eval_data(judge, data)
    outcome = analyze(data, judged, temperature=judge.temperature, tie_policy=cfg.tie_policy, seed=cfg.seed,
                      top_fraction=cfg.top_fraction)
    outcome.stats["precision"] = precision_name(getattr(judge, "bf16", False))  # what scoring.bf16 resolved to
    return outcome


def evaluate(cfg: EvalRunConfig) -> dict[str, Any]:
    """Score every pair in `cfg.data.path`; return accuracy and reward statistics (see `pairwise_stats`) plus
    `calibration`, `length_bias` and, for RewardBench data, `rewardbench` / `rewardbench2`. Stepwise rows
    (prompt, completions, labels) get a process reward model's step metrics instead (`eval.prm`)."""
    from rewardkit.eval.prm import evaluate_prm, is_stepwise_data

    if cfg.data.benchmark == "auto" and is_stepwise_data(cfg.data):
        return evaluate_prm(cfg)
    outcome = run_eval(cfg)
    if cfg.output:
        write_jsonl(cfg.output, outcome.pairs)
    if cfg.report_dir:
        from rewardkit.eval.report import write_eval_dir

        write_eval_dir(cfg.report_dir, outcome, model_dir=cfg.model.path, data=cfg.data.path)
    return outcome.stats


def calibrate(cfg: CalibrateRunConfig | EvalRunConfig, *, save: bool = True, force: bool | None = None):
    """Fit the temperature T on the pairs of `cfg.data.path` (a dev split) and, if `save`, write it into the
    model's config.json, where `RewardScorer.compare` and `rewardkit eval` pick it up. The old T is kept
    (`fit.kept` says why) when the fit is stuck at its bound, or when the new T makes the expected
    calibration error on these pairs worse than the T in use, unless `force` (default: `cfg.force`).
    Returns `TemperatureFit` with `saved` set."""
    from dataclasses import replace

    from rewardkit.eval.calibration import fit_temperature
    from rewardkit.models.reward_model import write_temperature

    force = bool(getattr(cfg, "force", False)) if force is None else force
    config_json = Path(cfg.model.path) / "config.json"
    if save and not config_json.is_file():  # before any work
        raise ValueError(f"{cfg.model.path}: no config.json to save the temperature in (a GGUF file or hub "
                         f"id?); rerun with save=false and pass the fitted T yourself")
    if save and not os.access(config_json, os.W_OK):
        raise PermissionError(f"{config_json}: not writable, so the temperature cannot be saved; rerun with "
                              "save=false")
    data = load_eval_data(cfg)  # before the model: bad rows are reported at once
    judge = load_scorer(cfg)
    fit = fit_temperature(judge_eval_data(judge, data).margins, temperature_before=judge.temperature)
    kept = None
    if fit.non_finite:
        log.warning("%d of %d dev pairs have a NaN or infinite reward: left out of the fit", fit.non_finite,
                    fit.n + fit.non_finite)
    if not fit.informative:  # every margin 0 (all ties): the data says nothing about T
        kept = "no_information"
        log.warning("every dev pair is a tie (margin 0): any T fits as well; keeping T=%.4g", fit.temperature_before)
    elif fit.at_bound:  # T -> 0 or T -> inf is no calibration; keep whatever the config holds
        kept = "at_bound"
        log.warning("temperature fit hit its bound (T=%.3g): the dev pairs are all right, or the model is no better "
                    "than chance; not saving it. Use more, or harder, dev data", fit.temperature)
    elif fit.ece_after > fit.ece_before and not force:
        kept = "ece_worse"
        log.warning("T=%.4g lowers the NLL on these pairs (%.4f -> %.4f) but raises the ECE (%.4f -> %.4f) over "
                    "T=%.4g; keeping T=%.4g (force=true saves it anyway)", fit.temperature, fit.nll_before,
                    fit.nll_after, fit.ece_before, fit.ece_after, fit.temperature_before, fit.temperature_before)
    elif not save:
        kept = "save=false"
    if kept is not None:
        return replace(fit, kept=kept)
    kind = None if saved_kind(cfg.model.path) else judge.kind  # a plain LM read as a judge keeps its kind
    path = write_temperature(Path(cfg.model.path), fit.temperature, kind=kind)
    log.info("wrote rewardkit.temperature=%.4g to %s", fit.temperature, path)
    return replace(fit, saved=True)
