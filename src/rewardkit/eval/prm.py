"""Evaluating a process reward model on stepwise rows (TRL's format: prompt, completions, labels).

`rewardkit eval` routes here when the data is stepwise (`is_stepwise_data`: most of the first rows have a
list of steps and a list of labels, `data.columns.steps` / `step_labels`). Metrics (`metrics.step_stats`):
step accuracy (P(correct) > 0.5 against each label), first-wrong-step accuracy (the index of the first
step labelled false, or "none wrong", predicted exactly per response), step ROC-AUC, over the steps that fit
in max_length (cut steps are counted in `steps_cut`, not scored).
"""

from __future__ import annotations

from typing import Any

import torch

from rewardkit.config import Columns, EvalRunConfig, PairsInput
from rewardkit.data.readers import DETECT_ROWS, LoadReport, load_examples, read_rows
from rewardkit.data.steps import StepExample, is_stepwise, step_example
from rewardkit.io import write_jsonl
from rewardkit.metrics import first_wrong, step_stats
from rewardkit.scoring import Judge, judge_from_config


def is_stepwise_data(data: PairsInput) -> bool:
    """True when most of the first readable rows of `data.path` are stepwise rows."""
    rows = []
    try:
        for _, row in read_rows(data.path, data.split or "train"):
            rows.append(row)
            if len(rows) == DETECT_ROWS:
                break
    except Exception:  # unreadable rows are reported by the loader that follows, with their location
        pass
    return bool(rows) and 2 * sum(is_stepwise(r, data.columns) for r in rows) > len(rows)


def load_steps(data: PairsInput) -> tuple[list[StepExample], LoadReport]:
    """The stepwise examples of `data.path` (`data.on_error`: raise, or skip and count malformed rows)."""
    cols: Columns = data.columns
    return load_examples(data.path, lambda row, where: step_example(row, cols, where), on_error=data.on_error,
                         split=data.split or "train", max_samples=data.max_samples)


def evaluate_steps(judge: Judge, examples: list[StepExample]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, one row per example with its step probabilities and first wrong steps) for a judge with
    `score_steps` (kind prm); any other kind is a clear error."""
    if not hasattr(judge, "score_steps"):
        raise ValueError(f"stepwise data (prompt, completions, labels) needs a process reward model (kind prm); "
                         f"this model is kind {judge.kind!r}")
    probs = judge.score_steps([ex.prompt for ex in examples], [list(ex.steps) for ex in examples])
    s = max(len(ex.steps) for ex in examples)
    p = torch.full((len(examples), s), 0.5, dtype=torch.float64)
    labels = torch.zeros(len(examples), s)
    mask = torch.zeros(len(examples), s, dtype=torch.bool)
    for i, (ex, ps) in enumerate(zip(examples, probs)):
        labels[i, :len(ex.labels)] = torch.tensor(ex.labels)
        for k, q in enumerate(ps):
            if q is not None:
                p[i, k], mask[i, k] = q, True
    labelled = torch.zeros_like(mask)  # every step given, scored or cut by max_length
    for i, ex in enumerate(examples):
        labelled[i, :len(ex.labels)] = True
    true_fw = first_wrong(~labels.bool(), labelled)  # the truth, wherever the first wrong step is
    wrong_cut = (true_fw >= 0) & ~mask.gather(1, true_fw.clamp(min=0)[:, None])[:, 0]
    stats: dict[str, Any] = step_stats(p - 0.5, labels, mask, wrong_cut)  # logit > 0 <=> p > 0.5 (AUC: shift-free)
    stats["steps_cut"] = sum(q is None for ps in probs for q in ps)
    stats["first_wrong_cut"] = int(wrong_cut.sum())
    true_fw = true_fw.tolist()
    pred_fw = first_wrong(p <= 0.5, mask).tolist()
    rows = [{"source": ex.source, "steps": ps, "labels": [bool(y) for y in ex.labels], "first_wrong": t,
             "predicted_first_wrong": q} for ex, ps, t, q in zip(examples, probs, true_fw, pred_fw)]
    return stats, rows


def evaluate_prm(cfg: EvalRunConfig, judge: Judge | None = None) -> dict[str, Any]:
    """`rewardkit eval` on stepwise data: step metrics of the model `cfg.model` names; with `cfg.output`, one
    row per example (step probabilities, labels, true and predicted first wrong step, -1 = none)."""
    if cfg.report_dir:
        raise ValueError("eval.report_dir (plots of pair evaluations) does not apply to stepwise data; "
                         "use output=FILE.jsonl for per-step scores")
    judge = judge or judge_from_config(cfg)
    examples, report = load_steps(cfg.data)
    stats, rows = evaluate_steps(judge, examples)
    if cfg.output:
        write_jsonl(cfg.output, rows)
    return {"format": "stepwise", **stats, "skipped_rows": report.skipped}
