"""Eval folders and reports.

`write_eval_dir` (behind `rewardkit eval --report-dir DIR`) writes eval.json, pairs.jsonl (rows.jsonl for
RewardBench 2) and plots/*.png. `write_report` (behind `rewardkit report DIR`) turns an eval folder or a
training run folder (metrics.jsonl) into report.html, self-contained with its images inlined as base64,
and report.md, which links the PNGs under plots/. Without matplotlib, reports have tables only.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardkit.data.readers import DataError, load_json, read_rows
from rewardkit.io import atomic_write, staged_dir, write_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class Image:
    caption: str
    path: Path


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    plots: list[Path]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    # The readers' rules: a bad line is a DataError naming FILE:line N (an empty file is just no rows).
    return [row for _, row in read_rows(str(path), empty_ok=True)]


def _read_eval(path: Path) -> dict[str, Any] | None:
    """eval.json as `write_eval_dir` writes it ({"meta": {...}, "stats": {...}}), or None when absent."""
    if not path.is_file():
        return None
    data = load_json(path, str(path))
    if not isinstance(data, dict):
        raise DataError(str(path), None, f"not an eval report (a JSON object with `meta` and `stats`, "
                                         f"got {type(data).__name__})")
    for key in ("meta", "stats"):
        if key not in data:
            raise DataError(str(path), None, f"not an eval report (no `{key}`)")
        if not isinstance(data[key], dict):
            raise DataError(str(path), key, f"expected an object, got {type(data[key]).__name__}")
    for key in ("model_dir", "data"):
        if not isinstance(data["meta"].get(key, ""), str):
            raise DataError(str(path), f"meta.{key}", f"expected a string, got {type(data['meta'][key]).__name__}")
    return data


def write_eval_dir(out_dir: str | Path, outcome, *, model_dir: str, data: str) -> Path:
    """eval.json ({"meta", "stats"}), pairs.jsonl, rows.jsonl (best-of-N rows) and plots/ under `out_dir`.

    Staged: everything is written to a temp folder inside `out_dir` and moved in at the end (eval.json
    last), so a failure (a full disk) leaves no partial report, and no `out_dir` that did not exist before.
    A write error names the file under `out_dir` it was writing."""
    from rewardkit import __version__

    out = Path(out_dir)
    meta = {"model_dir": str(Path(model_dir).resolve()), "data": str(data), "rewardkit": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with staged_dir(out, last="eval.json") as tmp:
        try:
            write_jsonl(tmp / "pairs.jsonl", outcome.pairs)
            if outcome.rows is not None:
                write_jsonl(tmp / "rows.jsonl", outcome.rows)
            with atomic_write(tmp / "eval.json") as fh:
                json.dump({"meta": meta, "stats": outcome.stats}, fh, indent=2)
            try:
                from rewardkit.eval.plots import eval_plots

                eval_plots(outcome.pairs, outcome.stats, tmp / "plots")
            except ImportError as e:  # PlotsUnavailable is one
                log.warning("%s; wrote %s without plots", e, out)
        except OSError as e:
            if e.filename is None or not str(e.filename).startswith(str(tmp)):
                raise
            raise OSError(e.errno, e.strerror, str(out / Path(e.filename).relative_to(tmp))) from e
    return out


# --------------------------------------------------------------------------- building sections

def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _summary(stats: dict[str, Any], meta: dict[str, Any]) -> Section:
    keys = ["benchmark", "n", "accuracy", "ties", "margin_mean", "chosen_mean", "rejected_mean", "reward_mean",
            "reward_std", "skipped_rows", "truncated_pairs"]
    rows = [[k, _fmt(stats.get(k))] for k in keys if k in stats]
    text = f"Model `{meta.get('model_dir', '?')}` on `{meta.get('data', '?')}` ({meta.get('created', '')})."
    return Section("Summary", text, [Table(["metric", "value"], rows)])


def _rewardbench(rb: dict[str, Any]) -> Section:
    sec = Section("RewardBench", f"Tie policy `{rb['tie_policy']}`. Section scores weight subsets by the official "
                                 "prompt counts; only subsets present in the data take part.")
    rows = [[name, _pct(s["score"]), ", ".join(s["subsets"]), ", ".join(s["missing"]) or "–"]
            for name, s in rb["sections"].items()]
    rows.append(["Prior Sets", _pct(rb["prior_sets"]), "", ""])
    rows.append(["**Overall** (mean of 4 sections)", _pct(rb["overall"]), "", ""])
    rows.append(["**Overall** (2,2,2,2,1 with Prior Sets)", _pct(rb["overall_with_prior"]), "", ""])
    sec.tables.append(Table(["section", "score", "subsets", "missing"], rows))
    from rewardkit.eval.rewardbench import EXAMPLE_COUNTS

    sec.tables.append(Table(["subset", "pairs", "accuracy", "official weight"],
                            [[k, v["n"], _pct(v["score"]), EXAMPLE_COUNTS.get(k, "–")]
                             for k, v in rb["subsets"].items()]))
    return sec


def _rewardbench2(rb: dict[str, Any]) -> Section:
    sec = Section("RewardBench 2", f"{rb['rows']} rows, best-of-N per row. Missing subsets: "
                                   f"{', '.join(rb['missing']) or 'none'}. Ties rule: {rb['ties_rule'] or '–'}.")
    rows = [[k, v["n"], _pct(v["score"])] for k, v in rb["subsets"].items()]
    rows.append(["**Mean**", "", _pct(rb["score"])])
    sec.tables.append(Table(["subset", "rows", "score"], rows))
    return sec


def _calibration(cal: dict[str, Any], plots: Path) -> Section:
    sec = Section("Calibration", "P(chosen ≻ rejected) = sigmoid(Δ/T). ECE: 15 equal-width bins of the confidence "
                                 "in the preferred response (0.5–1).")
    sec.tables.append(Table(["temperature", "ECE", "ECE at T=1", "NLL", "NLL at T=1", "Brier"],
                            [[_fmt(cal["temperature"]), _fmt(cal["ece"]), _fmt(cal.get("ece_t1")),
                              _fmt(cal["nll"]), _fmt(cal.get("nll_t1")), _fmt(cal["brier"])]]))
    _maybe_image(sec, "Reliability diagram", plots / "reliability.png")
    return sec


def _length(lb: dict[str, Any], plots: Path) -> Section:
    sec = Section("Length bias", "Lengths are response tokens. A reward that tracks length rather than quality "
                                 "shows as a high Spearman and a gap between the two accuracy columns. `top`: pairs "
                                 f"won by the top {lb['top_fraction']:.0%} responses by reward.")
    rows = []
    for name in ("all", "top"):
        v = lb[name]
        rows.append([name, v["pairs"], _fmt(v["spearman_reward_length"]),
                     f"{_pct(v['chosen_longer']['accuracy'])} (n={v['chosen_longer']['n']})",
                     f"{_pct(v['chosen_shorter']['accuracy'])} (n={v['chosen_shorter']['n']})",
                     _pct(v["chosen_longer_rate"]), _pct(v["prefers_longer_rate"]), _fmt(v["mean_length"])])
    sec.tables.append(Table(["pairs", "n", "Spearman(reward, length)", "acc. chosen longer", "acc. chosen shorter",
                             "% chosen longer (data)", "% longer preferred (model)", "mean length"], rows))
    _maybe_image(sec, "Reward vs response length", plots / "length_vs_reward.png")
    return sec


def _maybe_image(sec: Section, caption: str, path: Path) -> None:
    if path.is_file():
        sec.images.append(Image(caption, path))


def _training(rows: list[dict[str, Any]], plots: Path, source: Path) -> Section:
    sec = Section("Training", f"From `{source}`.")
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    table = []
    if train:
        table += [["steps", train[-1]["step"]], ["last train loss", _fmt(train[-1].get("loss"))],
                  ["last train accuracy", _fmt(train[-1].get("accuracy"))]]
    if evals:
        table += [["final eval accuracy", _fmt(evals[-1].get("accuracy"))],
                  ["final eval loss", _fmt(evals[-1].get("loss"))], ["eval pairs", evals[-1].get("n")]]
    if table:
        sec.tables.append(Table(["metric", "value"], table))
    _maybe_image(sec, "Training curves", plots / "training_curves.png")
    return sec


def _guarded(path: Path, field: str | None, build, *args):
    """`build(*args)`; content unlike what rewardkit writes (hand-edited, another tool's) is a `DataError`
    naming the file and field, not a KeyError/TypeError traceback."""
    try:
        return build(*args)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise DataError(str(path), field, f"not as rewardkit writes it ({what})") from None


# --------------------------------------------------------------------------- rendering

def _html(title: str, sections: list[Section]) -> str:
    def cell(v: Any) -> str:
        s = html.escape(str(v))
        return f"<b>{s[2:-2]}</b>" if s.startswith("**") and s.endswith("**") else s

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:left}th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}"
             "figcaption{color:#666;font-size:.9em}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.text:  # `code` spans are the only markup the texts use
            parts.append("<p>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(sec.text)) + "</p>")
        for t in sec.tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.headers) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in t.rows]
            parts.append("</table>")
        for im in sec.images:
            data = base64.b64encode(im.path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(im.caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(im.caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _markdown(title: str, sections: list[Section], base: Path) -> str:
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = [f"# {title}", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        if sec.text:
            lines += [sec.text, ""]
        for t in sec.tables:
            lines.append("| " + " | ".join(map(esc, t.headers)) + " |")
            lines.append("|" + "---|" * len(t.headers))
            lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in t.rows]
            lines.append("")
        for im in sec.images:
            rel = im.path.resolve().relative_to(base.resolve()) if im.path.resolve().is_relative_to(base.resolve()) \
                else im.path.resolve()
            lines += [f"![{im.caption}]({rel.as_posix()})", ""]
    return "\n".join(lines)


def write_report(path: str | Path, out_dir: str | Path | None = None) -> ReportFiles:
    """Write report.html and report.md for an eval folder (eval.json) or a training run (metrics.jsonl).

    Every input is read and checked before anything is drawn or written: a bad one is a `DataError` naming
    the file (and line or field), and leaves the folder as it was."""
    src = Path(path)
    out = Path(out_dir) if out_dir else src
    plots = out / "plots"
    eval_json = src / "eval.json"
    evaluation = _read_eval(eval_json)
    metrics = src / "metrics.jsonl"
    if not metrics.is_file() and evaluation and evaluation["meta"].get("model_dir"):
        metrics = Path(evaluation["meta"]["model_dir"]) / "metrics.jsonl"
    if evaluation is None and not metrics.is_file():
        raise FileNotFoundError(f"{src}: neither eval.json (from `rewardkit eval --report-dir`) nor metrics.jsonl "
                                "(a training run folder)")
    pairs = _read_jsonl(src / "pairs.jsonl") if evaluation and (src / "pairs.jsonl").is_file() else None
    history = _read_jsonl(metrics) if metrics.is_file() else None
    if evaluation:
        _eval_sections(eval_json, evaluation, plots)  # checks the stats blocks before any plot is redrawn
    if history is not None:
        _guarded(metrics, None, _training, history, plots, metrics)
    made = _draw(evaluation, pairs, history, plots, src / "pairs.jsonl", metrics)
    sections = _eval_sections(eval_json, evaluation, plots) if evaluation else []
    if history is not None:
        sections.append(_training(history, plots, metrics))
    meta = evaluation["meta"] if evaluation else {}
    name = Path(meta.get("model_dir") or src.resolve()).name
    title = f"rewardkit report: {name}" + (f" on {Path(meta.get('data') or '?').name}" if evaluation else "")
    with atomic_write(out / "report.html") as fh:
        fh.write(_html(title, sections))
    with atomic_write(out / "report.md") as fh:
        fh.write(_markdown(title, sections, out))
    return ReportFiles(out / "report.html", out / "report.md", made)


def _eval_sections(path: Path, evaluation: dict[str, Any], plots: Path) -> list[Section]:
    stats = evaluation["stats"]
    sections = [_summary(stats, evaluation["meta"])]
    for key, build in (("rewardbench", _rewardbench), ("rewardbench2", _rewardbench2),
                       ("calibration", _calibration), ("length_bias", _length)):
        if key in stats:
            args = (plots,) if build in (_calibration, _length) else ()
            sections.append(_guarded(path, f"stats.{key}", build, stats[key], *args))
    dist = Section("Reward distributions")
    _maybe_image(dist, "Chosen vs rejected rewards", plots / "rewards.png")
    _maybe_image(dist, "Reward margins", plots / "margins.png")
    return sections + ([dist] if dist.images else [])


def _draw(evaluation, pairs, history, plots: Path, pairs_file: Path, metrics: Path) -> list[Path]:
    """Redraw the plots from the data, so the report matches it; none without matplotlib."""
    made: list[Path] = []
    try:
        from rewardkit.eval import plots as P

        if pairs is not None:
            made += _guarded(pairs_file, None, P.eval_plots, pairs, evaluation["stats"], plots).values()
        if history is not None:
            made.append(_guarded(metrics, None, P.training_curves, history, plots / "training_curves.png"))
    except ImportError as e:  # PlotsUnavailable is one
        log.warning("%s; the report has tables only%s", e,
                    " (plus plots already in the folder)" if plots.is_dir() else "")
    return made
