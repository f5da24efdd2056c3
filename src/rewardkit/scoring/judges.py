"""Which `Judge` reads a folder: the registry of kinds, keyed by the saved `rewardkit.kind`.

A kind maps to "module:Class" of a class with `from_folder(path, options, **settings)`; `settings` are
the run settings every kind takes (device, batch_size, max_length, max_tokens, bf16), `options` the
kind-specific ones (`model.*` keys: reference, beta, rank_strategy, ...), each kind reading what it needs.
Folders without a `rewardkit` block (a plain LM, a DPO policy) are read as the kind the user names.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rewardkit.precision import resolve_bf16
from rewardkit.scoring.base import Judge

JUDGES: dict[str, str] = {
    "scalar": "rewardkit.scoring.reward:RewardScorer",
    "multi_objective": "rewardkit.scoring.reward:RewardScorer",
    "prm": "rewardkit.scoring.prm:StepScorer",
    "generative": "rewardkit.scoring.generative:GenerativeJudge",
    "dpo": "rewardkit.scoring.dpo:DpoReward",
    "pairrm": "rewardkit.scoring.pairrm:PairRanker",
}


def _saved_block(path: str | Path) -> dict | None:
    """The `rewardkit` block of a folder's config.json; None where there is none (or no readable config.json)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    try:
        block = json.loads(cfg.read_text(encoding="utf-8")).get("rewardkit")
    except (OSError, ValueError, AttributeError):
        return None
    return block if isinstance(block, dict) else None


def saved_precision(path: str | Path) -> str | None:
    """"bf16"/"fp32": what the saved model was trained in; None where the folder does not say."""
    return (_saved_block(path) or {}).get("precision")


def saved_kind(path: str | Path) -> str | None:
    """The `rewardkit.kind` of a saved folder (value-head folders of older versions: their head's kind);
    None where the folder has no rewardkit block (or no config.json)."""
    block = _saved_block(path)
    if block is None:
        return None
    from rewardkit.models.kinds import kind_of

    return block["kind"] if block.get("kind") in JUDGES else kind_of(block)


def judge_class(kind: str) -> type:
    """The Judge class of `kind`; every value-head kind of `models.kinds` is read by `RewardScorer`."""
    from rewardkit.models.kinds import KINDS

    spec = JUDGES.get(kind) or (JUDGES["scalar"] if kind in KINDS else None)
    if spec is None:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(sorted({*JUDGES, *KINDS}))}")
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def load_judge(path: str | Path, *, kind: str = "auto", options: Mapping[str, Any] | None = None,
               **settings: Any) -> Judge:
    """The `Judge` for a folder: `kind="auto"` reads the saved kind (a folder without one is a value-head
    model); another kind reads the folder as that kind (e.g. "generative" for any LM). `bf16=None`: the
    saved training precision where the device has it natively, else fp32 (`rewardkit.precision`)."""
    if kind in (None, "", "auto"):
        kind = saved_kind(path) or "scalar"
    if "bf16" in settings:  # null: the training precision, where the device has it natively
        settings["bf16"] = resolve_bf16(settings["bf16"], settings.get("device"), saved_precision(path))
    return judge_class(kind).from_folder(str(path), dict(options or {}), **settings)


def judge_from_config(cfg: Any, **overrides: Any) -> Judge:
    """The judge a command's config names: `cfg.model` (path, kind, options), `cfg.scoring` and, where the
    command has one, `cfg.data.max_length`."""
    from dataclasses import asdict

    options = asdict(cfg.model)
    path, kind = options.pop("path"), options.pop("kind", "auto")
    settings = asdict(cfg.scoring)
    data = getattr(cfg, "data", None)
    settings["max_length"] = getattr(data, "max_length", None)
    return load_judge(path, kind=kind, options=options, **{**settings, **overrides})
