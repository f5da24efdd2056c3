"""Several reward models behind one endpoint: which models, and the rule that turns their scores into one.

A models file (YAML):

    models:
      helpful: runs/helpful                          # a folder, or {path, normalize, max_length}
      safe: {path: runs/safe, normalize: true}
    combine:
      rule: weighted_sum                             # reward = sum_i w_i * score_i
      weights: {helpful: 1.0, safe: 0.5}

or Llama 2's rule (Touvron et al. 2023): on probabilities p = sigmoid(score),
`p_safe if is_safety(prompt) or p_safe < threshold else p_helpful`, returned as logit(p) so the reward is
back on the score scale (the paper then whitens across the batch; PPO trainers do that on their side):

    combine: {rule: llama2, safety: safe, helpfulness: helpful, threshold: 0.15,
              is_safety_field: labels, is_safety_value: safety}   # a request field, one value per text
    # or: is_safety_classifier: prompt_cls, classifier_threshold: 0.5   (sigmoid of a model's raw score)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from rewardkit.config import ConfigError, MaxLength, SavedModel, load_config
from rewardkit.rlhf import llama2_select, logit


class FieldMissing(ValueError):
    """A rule needs a per-text request field that the request does not carry (answered with 422)."""


def finite(value: Any, key: str, lo: float | None = None, hi: float | None = None) -> float:
    """`value` as a float, or a ValueError naming `key`. A bad number here started fine and then failed every
    request (500) or answered null, so rules check theirs when built. Numeric strings pass (PyYAML reads `1e-5`
    as a string, as the config does)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError(f"{key}: expected a finite number, got {value!r}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ValueError(f"{key}: must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(number)


def _name(value: Any, key: str) -> str:
    """A model or request-field name (YAML may read one as a number; models' names are strings)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"{key}: expected a name, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class ModelSpec:
    """One served model. normalize=None takes the server's --normalize."""

    name: str
    path: str
    normalize: bool | None = None
    max_length: int | None = None
    kind: str = "auto"  # how the folder is read (`model.kind`)
    options: dict = field(default_factory=dict, hash=False, compare=False)  # the kind's `model.*` options


@dataclass
class Combined:
    """reward: (N,) float; extra: per-text values for `extra_logs` (component scores, rule decisions)."""

    reward: torch.Tensor
    extra: dict[str, list[float]] = field(default_factory=dict)


class Rule(Protocol):
    def model_names(self) -> tuple[str, ...]: ...

    def combine(self, scores: Mapping[str, torch.Tensor], raw: Mapping[str, torch.Tensor],
                fields: Mapping[str, Sequence[Any]]) -> Combined: ...


@dataclass(frozen=True)
class Single:
    """One model: its score is the reward."""

    name: str

    def model_names(self) -> tuple[str, ...]:
        return (self.name,)

    def combine(self, scores, raw, fields) -> Combined:
        return Combined(scores[self.name])


@dataclass(frozen=True)
class WeightedSum:
    weights: dict[str, float]

    def __post_init__(self):
        if not isinstance(self.weights, Mapping) or not self.weights:
            raise ValueError("weights: expected a mapping model -> weight (at least one)")
        object.__setattr__(self, "weights", {str(k): finite(w, f"weights.{k}") for k, w in self.weights.items()})

    def model_names(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def combine(self, scores, raw, fields) -> Combined:
        return Combined(sum(w * scores[name] for name, w in self.weights.items()))


@dataclass(frozen=True)
class Llama2:
    safety: str
    helpfulness: str
    threshold: float = 0.15
    is_safety_field: str | None = None  # request field with one value per text
    is_safety_value: Any = None  # the field's value that marks a safety prompt; None = truthiness
    is_safety_classifier: str | None = None  # or a model whose sigmoid(raw score) decides
    classifier_threshold: float = 0.5

    def __post_init__(self):
        for key in ("safety", "helpfulness", "is_safety_field", "is_safety_classifier"):
            if getattr(self, key) is not None or key in ("safety", "helpfulness"):
                object.__setattr__(self, key, _name(getattr(self, key), key))
        for key in ("threshold", "classifier_threshold"):  # compared with probabilities
            object.__setattr__(self, key, finite(getattr(self, key), key, 0.0, 1.0))

    def model_names(self) -> tuple[str, ...]:
        extra = (self.is_safety_classifier,) if self.is_safety_classifier else ()
        return tuple(dict.fromkeys((self.safety, self.helpfulness) + extra))

    def is_safety(self, raw: Mapping[str, torch.Tensor], fields: Mapping[str, Sequence[Any]], n: int) -> torch.Tensor:
        if self.is_safety_classifier:
            return torch.sigmoid(raw[self.is_safety_classifier]) >= self.classifier_threshold
        if self.is_safety_field is None:
            return torch.zeros(n, dtype=torch.bool)
        values = fields.get(self.is_safety_field)
        if values is None or len(values) != n:
            got = "missing" if values is None else f"{len(values)} values for {n} texts"
            raise FieldMissing(f"the llama2 rule reads is_safety from request field `{self.is_safety_field}` "
                               f"(one value per text): {got}")
        want = self.is_safety_value
        return torch.tensor([bool(v) if want is None else v == want for v in values], dtype=torch.bool)

    def combine(self, scores, raw, fields) -> Combined:
        p_safe, p_help = torch.sigmoid(scores[self.safety]), torch.sigmoid(scores[self.helpfulness])
        safety_prompt = self.is_safety(raw, fields, len(p_safe))
        chosen = llama2_select(p_safe, p_help, safety_prompt, self.threshold)
        used_safety = safety_prompt | (p_safe < self.threshold)
        return Combined(logit(chosen), {"is_safety": safety_prompt.float().tolist(),
                                        "used_safety": used_safety.float().tolist()})


@dataclass(frozen=True)
class ModelsConfig:
    models: dict[str, ModelSpec]
    rule: Rule


_MODEL_KEYS = {"path", "normalize", "max_length", "kind", "reference", "beta", "reference_free", "length_normalize",
               "rank_strategy", "aggregate", "template", "allow_random_head"}
_RULE_KEYS = {"weighted_sum": {"rule", "weights"},
              "llama2": {"rule", "safety", "helpfulness", "threshold", "is_safety_field", "is_safety_value",
                         "is_safety_classifier", "classifier_threshold"}}


def single_model(path: str, name: str = "reward", *, kind: str = "auto", options: dict | None = None) -> ModelsConfig:
    return ModelsConfig({name: ModelSpec(name, path, kind=kind, options=dict(options or {}))}, Single(name))


def load_models_config(path: str | Path) -> ModelsConfig:
    """Read and check a models file; every error names the file and the key."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read models file: {e}") from None
    if not isinstance(doc, dict) or set(doc) - {"models", "combine"} or not isinstance(doc.get("models"), dict):
        raise ConfigError(f"{path}: expected a mapping with `models` (name -> path or settings) and `combine`")
    models = {}
    for name, entry in doc["models"].items():
        entry = {"path": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "path" not in entry or set(entry) - _MODEL_KEYS:
            raise ConfigError(f"{path}: models.{name}: expected a path or a mapping with keys "
                              f"{', '.join(sorted(_MODEL_KEYS))} (path required)")
        models[str(name)] = _model_spec(str(name), entry, path)
    rule = _parse_rule(doc.get("combine"), models, path)
    missing = [m for m in rule.model_names() if m not in models]
    if missing:
        raise ConfigError(f"{path}: combine refers to unknown model(s) {', '.join(missing)}; "
                          f"models are {', '.join(models)}")
    return ModelsConfig(models, rule)


def _model_spec(name: str, entry: dict[str, Any], path: Path) -> ModelSpec:
    """One `models` entry, its values checked as the same `model.*` keys are on the command line."""
    try:
        saved = load_config(SavedModel, values=[(k, v) for k, v in entry.items()
                                                if k not in ("normalize", "max_length")])
        max_length = load_config(MaxLength, values=[("max_length", entry.get("max_length"))]).max_length
    except ConfigError as e:
        raise ConfigError(f"{path}: models.{name}.{e}") from None
    normalize = entry.get("normalize")
    if normalize is not None and not isinstance(normalize, bool):
        raise ConfigError(f"{path}: models.{name}.normalize: expected true or false, got {normalize!r}")
    p = saved.path
    if not p.startswith("pypi:") and not Path(p).is_absolute() and (path.parent / p).exists():
        p = str(path.parent / p)  # relative to the models file
    options = {k: getattr(saved, k) for k in entry if k not in {"path", "normalize", "max_length", "kind"}}
    return ModelSpec(name, p, normalize, max_length, saved.kind, options)


def _parse_rule(spec: Any, models: dict[str, ModelSpec], path: Path) -> Rule:
    if spec is None:
        if len(models) != 1:
            raise ConfigError(f"{path}: combine: required with {len(models)} models (weighted_sum or llama2)")
        return Single(next(iter(models)))
    name = spec.get("rule") if isinstance(spec, dict) else None
    if name not in _RULE_KEYS:
        raise ConfigError(f"{path}: combine.rule: expected one of {', '.join(_RULE_KEYS)}, got {name!r}")
    unknown = set(spec) - _RULE_KEYS[name]
    if unknown:
        raise ConfigError(f"{path}: combine: unknown key(s) {', '.join(sorted(unknown))} for rule {name}; "
                          f"allowed: {', '.join(sorted(_RULE_KEYS[name]))}")
    if name == "llama2":
        for key in ("safety", "helpfulness"):
            if key not in spec:
                raise ConfigError(f"{path}: combine.{key}: the llama2 rule needs the name of the {key} model")
        if spec.get("is_safety_field") and spec.get("is_safety_classifier"):
            raise ConfigError(f"{path}: combine: give is_safety_field or is_safety_classifier, not both")
    try:  # the rule checks its own values (names, finite numbers in range)
        return (WeightedSum(spec.get("weights")) if name == "weighted_sum"
                else Llama2(**{k: v for k, v in spec.items() if k != "rule"}))
    except ValueError as e:
        raise ConfigError(f"{path}: combine.{e}") from None
