"""Typed configuration: one dataclass per command, filled from YAML plus dotted `key=value` overrides.

Every field carries its help text in `metadata["help"]`; that text is the only source for `--help`.
Unknown keys are errors that name the closest valid key, because a typo that silently trains with a
default is the most expensive bug a config system can have.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


# Kept here (not imported from rewardkit.losses) so that `--help` does not import torch; a test checks
# that it matches `rewardkit.losses.LOSSES`.
# Padded tokens per scoring forward (eval, score, RewardScorer): ~4k-token forwards ran fastest per token on
# the 2-core CPU here (16k-token ones ~7% slower); raise it on a GPU.
SCORE_MAX_TOKENS = 4096

LOSS_NAMES = ("bt", "logexp", "internlm2", "token", "kwise", "binary", "regression", "attributes", "gating")


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _copy(x: Any) -> Any:
    import copy

    return copy.deepcopy(x)


@dataclass
class ModelConfig:
    # `model=PATH` on the command line sets this group's `path`.
    path: str = _f("", "Backbone or reward model: a causal-LM or sequence-classification checkpoint, "
                       "a local folder or a hub id.")
    gguf_file: str | None = _f(None, "GGUF file name inside `path` (loaded and dequantised to float).")
    tokenizer: str | None = _f(None, "Tokenizer folder or id when it differs from `path`.")
    readout: str | None = _f(None, "Where the reward is read: last non-pad token, mean over response "
                                   "tokens, or the encoder's [CLS] pooler. Default: last for decoders, "
                                   "cls for encoders.", choices=("last", "mean", "cls"))
    trust_remote_code: bool = _f(False, "Allow custom modelling code from the checkpoint.")
    attn_implementation: str = _f("auto", "Attention kernel: transformers' `attn_implementation` name (sdpa, "
                                          "eager, flash_attention_2, ...). auto: transformers' default (sdpa); "
                                          "on CPU, sdpa trained MiniLM on HH 1.4x faster than eager.")


@dataclass
class Columns:
    """Column names of every row format (the one column map: train, eval, score and the apps read it)."""

    prompt: str = _f("prompt", "Column with the prompt (string or chat messages).")
    chosen: str = _f("chosen", "Column with the preferred response or transcript.")
    rejected: str = _f("rejected", "Column with the dispreferred response or transcript.")
    margin: str = _f("margin", "Optional per-pair margin column (used when present).")
    conversations: str = _f("conversations", "ShareGPT-style history column (`from`/`value`).")
    rating: str = _f("rating", "Pairs: preference-strength column, mapped to a margin by `data.margin_table` "
                               "or `data.margin_map`.")
    response: str = _f("response", "Pointwise and multi-attribute data: the response column.")
    label: str = _f("label", "loss=binary: accept (1/true) or reject (0/false) column.")
    score: str = _f("score", "loss=regression: numeric target column.")
    responses: str = _f("responses", "loss=kwise: column with the list of K completions.")
    ranks: str = _f("ranks", "loss=kwise: per-completion ranks (1 = best); used when present.")
    scores: str = _f("scores", "loss=kwise: per-completion scores (higher = better), when there are no ranks.")
    attributes: list[str] = _f([], "loss=attributes: the attribute columns (numbers; null/NaN = missing).")
    messages: str = _f("messages", "score: a whole chat column (the last message is the response).")


@dataclass
class DataConfig:
    train: str = _f("", "Training data: .jsonl/.json/.parquet/.csv file, a `save_to_disk` folder or a "
                        "hub dataset id.")
    eval: str | None = _f(None, "Held-out data, same forms as `train`.")
    eval_size: float = _f(0.0, "When `eval` is unset: hold out this many examples (>=1) or this fraction "
                               "(<1) from the END of the training data.")
    split: str = _f("train", "Split to read from a hub dataset or a DatasetDict folder.")
    max_length: int = _f(512, "Max tokens per sequence; longer ones lose prompt tokens from the left "
                              "first, then response tokens from the left.")
    max_samples: int | None = _f(None, "Use only the first N rows of the training data.")
    format: str = _f("auto", "Row format (auto-detected by default).",
                     choices=("auto", "explicit", "implicit", "conversational", "sharegpt"))
    columns: Columns = _f(Columns(), "Column names.")
    on_error: str = _f("raise", "A malformed row stops with an error, or is skipped and counted.",
                       choices=("raise", "skip"))
    margin_table: str | None = _f(None, "Pairs: margin from the rating column via the Llama 2 table "
                                        "(small: significantly better 1, better 2/3, slightly better 1/3, "
                                        "negligibly better/unsure 0; large: 3, 2, 1, 0).",
                                  choices=("small", "large"))
    margin_map: dict[str, float] = _f({}, "Pairs: your own rating -> margin mapping, e.g. {A: 2, B: 1}; "
                                          "used instead of `margin_table`.")


@dataclass
class TrainConfig:
    epochs: float = _f(1.0, "Passes over the training data (fractions allowed).")
    max_steps: int | None = _f(None, "Stop after this many optimiser steps (overrides epochs).")
    batch_size: int = _f(8, "Examples per micro-batch: pairs (2 sequences each, one forward), prompts "
                            "(kwise: K sequences each) or rows (pointwise, attributes).")
    grad_accum: int = _f(1, "Micro-batches per optimiser step.")
    lr: float = _f(5e-5, "Peak learning rate (AdamW).")
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norms).")
    scheduler: str = _f("cosine", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    warmup_ratio: float = _f(0.03, "Fraction of steps with linear warmup.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    bf16: bool | None = _f(None, "bf16 autocast for forward and backward. Default (null): on where the hardware "
                                 "computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), where it is "
                                 "about 4x faster than fp32 here; weights stay fp32.")
    loss: str = _f("bt", "Objective: bt, logexp, internlm2 (pairs); token (pairs, causal backbones); kwise "
                         "(K ranked completions); binary, regression (pointwise); attributes, gating "
                         "(multi-objective stages 1 and 2). Options in `loss.*`.", choices=LOSS_NAMES)
    center_rewards_coef: float = _f(0.0, "Pairs: weight of the reward-centering term mean((rc+rr)^2).")
    disable_dropout: bool = _f(True, "Set every dropout probability to 0 (reward models train better).")
    eval_every: int = _f(0, "Evaluate every N optimiser steps (0: only at the end).")
    eval_batch_size: int = _f(32, "Pairs per eval batch.")
    log_every: int = _f(10, "Log training metrics every N optimiser steps.")
    save_every: int = _f(0, "Write a resumable checkpoint every N steps (0: never).")
    resume: str | None = _f(None, "Resume from a checkpoint folder, or `auto` for the latest one in "
                                  "output_dir/checkpoints.")
    progress: bool = _f(True, "Show a tqdm progress bar.")
    batching: str = _f("auto", "Pairs: `grouped` sorts lengths inside large shuffled windows then shuffles "
                               "the batches (little padding); `random` is plain shuffling; `auto` = random for "
                               "the flat layout (no padding to save; grouping only raised peak memory and "
                               "changed the data order), grouped otherwise.",
                       choices=("auto", "grouped", "random"))
    max_tokens: int | None = _f(None, "Pairs: token budget per micro-batch (padded tokens, or packed row "
                                      "tokens); batches then hold a varying number of pairs.")
    packing: str = _f("auto", "Pairs: `plain` packs sequences into rows (own positions and attention block "
                              "each); `shared_prompt` (decoders) lays out [prompt][chosen][rejected] so the "
                              "prompt is computed once; `auto` = shared_prompt for decoders, plain for encoders.",
                      choices=("auto", "none", "plain", "shared_prompt"))
    pack_layout: str = _f("flat", "Packing inside each micro-batch: `flat` lays all its sequences in one "
                                        "padding-free row and confines attention to each sequence with one "
                                        "attention call per unit (0% padding); `batch_rows` fills rows as wide as "
                                        "its longest sequence (block-diagonal masks; also used when "
                                        "model.attn_implementation=eager).",
                          choices=("flat", "batch_rows"))
    row_length: int | None = _f(None, "Packing: fixed row length filled across the data (~0.3% padding; for GPUs "
                                      "with varlen attention); overrides `pack_layout`.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward: less memory, slower (SmolLM2 "
                                             "on HH here: 54% of the peak RSS, 13% slower).")
    checkpoint_every: int = _f(1, "With gradient_checkpointing: checkpoint only every N-th layer. SmolLM2 on HH "
                                  "here: off 2.31 pairs/s at 6.22 GB, every layer 2.01 at 3.36 GB, every 2nd "
                                  "2.09 at 4.78 GB.")
    compile: bool = _f(False, "torch.compile the backbone (slow first steps; pays off on long runs).")


@dataclass
class LossConfig:
    gamma: float = _f(2.0, "internlm2: exponent of the difficulty-decay factor.")
    penalty: str = _f("log_barrier", "internlm2: penalty on every score.", choices=("log_barrier", "l2", "none"))
    penalty_weight: float = _f(0.01, "internlm2: weight of the penalty.")
    huber_delta: float | None = _f(None, "regression: Huber loss with this delta instead of squared error.")
    normalize_labels: bool = _f(False, "regression: fit (score - mean) / std of the training scores; the "
                                       "saved config records mean and std.")
    freeze_backbone: bool = _f(False, "attributes: train only the attribute head (ArmoRM fits it on a frozen "
                                      "backbone).")
    gate_hidden: int = _f(256, "gating: width of the gating MLP (ArmoRM: 1024).")
    gate_layers: int = _f(2, "gating: hidden layers of the gating MLP (ArmoRM: 3).")
    gate_temperature: float = _f(10.0, "gating: softmax temperature of the gate (ArmoRM: 10).")
    verbosity_attribute: str | None = _f(None, "gating: debias every other attribute against this one (e.g. "
                                               "verbosity) before gating; unset: no debiasing.")
    verbosity_threshold: float = _f(0.03, "gating: per attribute, the smallest lambda in [0, 1] with "
                                          "|Spearman(r_i - lambda r_v, r_v)| <= this, on the training pairs.")


@dataclass
class TrainRunConfig:
    """`rewardkit train`: everything a training run needs."""

    model: ModelConfig = _f(ModelConfig(), "Backbone options (`model=PATH` sets model.path).")
    data: DataConfig = _f(DataConfig(), "Data options.")
    train: TrainConfig = _f(TrainConfig(), "Optimisation options.")
    loss: LossConfig = _f(LossConfig(), "Options of the objective chosen by `train.loss`.")
    output_dir: str = _f("runs/rm", "Folder for the saved model, metrics.jsonl and checkpoints.")
    seed: int = _f(42, "Seed for weights of the new head, shuffling and dropout.")


# Scalars given for a nested group fill this field of the group (`model=gpt2` -> model.path).
_SHORTHAND = {ModelConfig: "path"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config class, e.g. `data.columns.prompt`."""
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(all_keys(tp, f"{prefix}{f.name}."))
            if tp in _SHORTHAND:
                keys.append(f"{prefix}{f.name}")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(value: Any, tp: Any, key: str, choices: tuple[str, ...] | None, root: type) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, choices, root)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            if tp in _SHORTHAND:
                value = {_SHORTHAND[tp]: value}
            else:
                raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, root, key + ".")
    bad = ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        try:  # PyYAML reads `1e-5` (no dot) as a string
            value = float(value)
        except ValueError:
            raise bad from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        value = str(value)
        if choices and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, args[1], f"{key}.{k}", None, root) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]", None, root) for i, v in enumerate(value)]
    return value


def _build(cls: type, data: dict[str, Any], root: type, prefix: str = "") -> Any:
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(_unknown_key_message(f"{prefix}{k}", root))
        f = names[k]
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}", f.metadata.get("choices"), root)
    return cls(**kwargs)


def _unknown_key_message(key: str, root: type) -> str:
    valid = all_keys(root)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    # Also match on the last component: `train.learning_rate` -> `train.lr` is too far for difflib.
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in valid if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f"; did you mean `{close[0]}`?" if close else ""
    return f"unknown config key `{key}`{hint} (see `rewardkit train --help` for all keys)"


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override `{item}` is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):  # `model=x model.readout=last`
                nxt = node[p] = {"path": nxt}
            node = nxt
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and k in out and not isinstance(out[k], dict):
            out[k] = _merge({"path": out[k]}, v)
        else:
            out[k] = v
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build `cls` from an optional YAML file, then dotted overrides (later wins)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides or []))
    return _build(cls, data, cls)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def describe(cls: type, prefix: str = "") -> list[str]:
    """One help line per leaf key: `key (default): help [choices]`."""
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        extra = f" [{'|'.join(choices)}]" if choices else ""
        lines.append(f"  {prefix}{f.name} (default: {default!r}){extra}\n      {f.metadata['help']}")
    return lines
