"""PNG plots for eval reports. matplotlib is optional: `pip install 'rewardkit[report]'`.

Figures are drawn with matplotlib's object API on an Agg canvas, never through pyplot, so plotting touches
no global backend or figure state of the caller. Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewardkit.io import atomic_write

log = logging.getLogger(__name__)

DPI = 100
CHOSEN, REJECTED, ACCENT = "#2b7bba", "#d95f02", "#555555"


class PlotsUnavailable(ImportError):
    """matplotlib is not installed."""


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install 'rewardkit[report]'") from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
    return Path(path)


def _bins(values: Sequence[float], n: int = 40) -> list[float] | int:
    finite = [v for v in values if math.isfinite(v)]
    if not finite or max(finite) == min(finite):
        return 10
    lo, hi = min(finite), max(finite)
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def reward_histograms(chosen: Sequence[float], rejected: Sequence[float], path: str | Path) -> Path:
    """Overlaid histograms of chosen and rejected rewards (N,) each."""
    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    bins = _bins(list(chosen) + list(rejected))
    ax.hist(rejected, bins=bins, alpha=0.6, color=REJECTED, label=f"rejected (mean {_mean(rejected):.3g})")
    ax.hist(chosen, bins=bins, alpha=0.6, color=CHOSEN, label=f"chosen (mean {_mean(chosen):.3g})")
    ax.set(xlabel="reward", ylabel="responses", title="Rewards of chosen and rejected responses")
    ax.legend()
    return _save(fig, path)


def margin_histogram(margins: Sequence[float], path: str | Path) -> Path:
    """Histogram of reward margins (chosen − rejected), (N,); mass right of 0 is accuracy."""
    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    ax.hist(margins, bins=_bins(margins), color=CHOSEN, alpha=0.8)
    ax.axvline(0.0, color=ACCENT, linestyle="--", linewidth=1)
    right = sum(m > 0 for m in margins) / max(1, len(margins))
    ax.set(xlabel="reward margin (chosen − rejected)", ylabel="pairs",
           title=f"Reward margins: {right:.1%} of pairs right of 0")
    return _save(fig, path)


def reliability_diagram(bins: Sequence[dict[str, Any]], path: str | Path, *, ece: float, temperature: float,
                        ece_t1: float | None = None) -> Path:
    """Accuracy vs confidence per bin (dicts with lo, hi, count, confidence, accuracy), with bin counts below."""
    fig = _figure(5, 5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    full = [b for b in bins if b["count"]]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 1 / 30
    centers = [(b["lo"] + b["hi"]) / 2 for b in full]
    top.bar(centers, [b["accuracy"] for b in full], width=width * 0.95, color=CHOSEN, alpha=0.85,
            edgecolor="white", label="accuracy")
    top.plot([0.5, 1.0], [0.5, 1.0], color=ACCENT, linestyle="--", linewidth=1, label="perfect calibration")
    top.scatter([b["confidence"] for b in full], [b["accuracy"] for b in full], color=REJECTED, s=14, zorder=3,
                label="mean confidence")
    label = f"ECE {ece:.3f} at T={temperature:.3g}" + (f" (T=1: {ece_t1:.3f})" if ece_t1 is not None
                                                         and temperature != 1.0 else "")
    top.set(ylabel="accuracy", ylim=(0, 1.02), title=f"Reliability: {label}")
    top.legend(loc="lower right", fontsize=8)
    bottom.bar(centers, [b["count"] for b in full], width=width * 0.95, color=ACCENT, alpha=0.7)
    bottom.set(xlabel="confidence in the preferred response", ylabel="pairs", xlim=(0.5, 1.0))
    return _save(fig, path)


def length_scatter(lengths: Sequence[float], rewards: Sequence[float], is_chosen: Sequence[bool],
                   path: str | Path, *, spearman: float | None = None) -> Path:
    """Reward vs response length in tokens, (M,) each; chosen and rejected responses coloured apart."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for flag, color, name in ((False, REJECTED, "rejected"), (True, CHOSEN, "chosen")):
        xs = [x for x, c in zip(lengths, is_chosen) if c == flag]
        ys = [y for y, c in zip(rewards, is_chosen) if c == flag]
        ax.scatter(xs, ys, s=10, alpha=0.5, color=color, label=name, edgecolors="none")
    rho = "n/a" if spearman is None else f"{spearman:+.3f}"
    ax.set(xlabel="response length (tokens)", ylabel="reward", title=f"Reward vs length (Spearman {rho})")
    ax.legend()
    return _save(fig, path)


def training_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy by optimiser step from metrics.jsonl rows (train lines, eval points)."""
    fig = _figure(8, 3.4)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", {"color": CHOSEN, "linewidth": 1.5}),
                             ("eval", {"color": REJECTED, "marker": "o", "linestyle": "--"})):
            pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and r.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=split, **style)
        ax.set(xlabel="step", ylabel=key, title=f"Training {key}")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if len(xs) else float("nan")


def eval_plots(pairs: Sequence[dict[str, Any]], stats: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """All eval plots from per-pair records (pairs.jsonl) and the eval stats; returns {name: path}."""
    out = Path(out_dir)
    chosen = [p["chosen_reward"] for p in pairs]
    rejected = [p["rejected_reward"] for p in pairs]
    made = {"rewards": reward_histograms(chosen, rejected, out / "rewards.png"),
            "margins": margin_histogram([p["margin"] for p in pairs], out / "margins.png")}
    cal = stats.get("calibration")
    if cal:
        made["reliability"] = reliability_diagram(cal["bins"], out / "reliability.png", ece=cal["ece"],
                                                  temperature=cal["temperature"], ece_t1=cal.get("ece_t1"))
    # Best-of-N rows put one response in several pairs: plot each (source, side, reward, length) once.
    seen: dict[tuple, None] = {}
    for p in pairs:
        seen.setdefault((p["source"], True, p["chosen_reward"], p["chosen_tokens"]))
        seen.setdefault((p["source"], False, p["rejected_reward"], p["rejected_tokens"]))
    rho = (stats.get("length_bias") or {}).get("all", {}).get("spearman_reward_length")
    made["length"] = length_scatter([k[3] for k in seen], [k[2] for k in seen], [k[1] for k in seen],
                                    out / "length_vs_reward.png", spearman=rho)
    return made
