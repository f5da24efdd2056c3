"""Objective families behind `loss.name` (`loss=NAME`; `train.loss` is its older spelling): pick one by name;
its options live in the other `loss.*` keys.

  bt, logexp, internlm2  pairs, scalar rewards                 (objectives.pairwise.PairwiseObjective)
  token                  pairs, per-token values (decoders)    (objectives.pairwise.TokenObjective)
  kwise                  prompt + K ranked completions         (objectives.pairwise.KwiseObjective)
  binary, regression     prompt + response + label / score     (objectives.pointwise.PointwiseObjective)
  attributes, gating     multi-objective stages 1 and 2        (objectives.multi_objective)
  prm                    prompt + steps + step labels          (objectives.prm.PRMObjective)
  pairrm                 pairs, prompt + A + B in one encoder  (objectives.pairrm.PairRMObjective)
  judge                  pairs, an LM answering "A or B?"      (objectives.judge.JudgeObjective)
An option set for a loss that does not read it is an error, so a typo'd combination never trains silently.
"""

from __future__ import annotations

import dataclasses
import importlib

from rewardkit.config import ConfigError, DataConfig, LossConfig, TrainConfig, TrainRunConfig
from rewardkit.losses import get_loss
from rewardkit.batches import StepOutput
from rewardkit.objectives.base import Objective, ObjectiveData, ObjectiveModule, StepWindow

__all__ = ["FAMILIES", "Objective", "ObjectiveData", "ObjectiveModule", "StepOutput", "StepWindow", "make_objective"]

# loss name -> (module, class) in rewardkit.objectives; imported when used
FAMILIES = {
    "bt": ("pairwise", "PairwiseObjective"), "logexp": ("pairwise", "PairwiseObjective"),
    "internlm2": ("pairwise", "PairwiseObjective"), "token": ("pairwise", "TokenObjective"),
    "kwise": ("pairwise", "KwiseObjective"),
    "binary": ("pointwise", "PointwiseObjective"), "regression": ("pointwise", "PointwiseObjective"),
    "attributes": ("multi_objective", "AttributeObjective"), "gating": ("multi_objective", "GatingObjective"),
    "prm": ("prm", "PRMObjective"),
    "pairrm": ("pairrm", "PairRMObjective"),
    "judge": ("judge", "JudgeObjective"),
}
# `loss.*` options each loss reads; the pair-data options (margins, centering) per family.
_LOSS_OPTIONS = {
    "internlm2": {"gamma", "penalty", "penalty_weight"},
    "regression": {"huber_delta", "normalize_labels"},
    "attributes": {"freeze_backbone"},
    "prm": {"step_separator"},
    "gating": {"gate_hidden", "gate_layers", "gate_temperature", "verbosity_attribute", "verbosity_threshold"},
}
_PAIR_DATA = {"bt", "logexp", "internlm2", "token", "gating"}


def make_objective(cfg: TrainRunConfig) -> Objective:
    """The objective for `cfg.loss.name`; unknown names and options that the loss ignores are errors."""
    name = cfg.loss.name
    get_loss(name)  # raises, listing the choices
    _check_options(cfg, name)
    module, cls = FAMILIES[name]
    return getattr(importlib.import_module(f"rewardkit.objectives.{module}"), cls)(name, cfg)


def _check_options(cfg: TrainRunConfig, name: str) -> None:
    changed = [f"loss.{f.name}" for f in dataclasses.fields(LossConfig)
               if f.name != "name" and f.name not in _LOSS_OPTIONS.get(name, set())
               and getattr(cfg.loss, f.name) != getattr(LossConfig(), f.name)]
    if name not in _PAIR_DATA:
        if cfg.train.center_rewards_coef != TrainConfig().center_rewards_coef:
            changed.append("train.center_rewards_coef")
        changed += [f"data.{k}" for k in ("margin_table", "margin_map")
                    if getattr(cfg.data, k) != getattr(DataConfig(), k)]
    if changed:
        users = {k: sorted(n for n, opts in _LOSS_OPTIONS.items() if k.split(".")[-1] in opts) for k in changed}
        detail = "; ".join(f"{k} is for {', '.join(users[k]) or 'pairwise losses'}" for k in changed)
        raise ConfigError(f"loss={name} does not use {', '.join(changed)} ({detail})")
