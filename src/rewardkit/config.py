"""Typed configuration: one dataclass per command, filled from YAML plus dotted `key=value` overrides.

Every command's config is built from small groups that several commands share, so one setting has one
spelling everywhere: `model` (`model=DIR` sets model.path), `data` (`data=FILE` sets data.path; columns
are `data.columns.*`), `scoring` (batch size, token budget, device, bf16 of the scoring forwards) and
`loss` (`loss=NAME` sets loss.name). `train` keeps its own `train.batch_size` / `train.bf16`: training
micro-batches and mixed precision for forward and backward, not the scoring forwards of `scoring.*`.

Every field carries its help text in `metadata["help"]`; that text is the only source for `--help`.
Value checks that need no files live in `__post_init__` (they run on the default instance too, so they
accept it); `validate()` adds what a run needs on top (e.g. a model). Unknown keys are errors that name
the closest valid key, because a typo that silently trains with a default is the most expensive bug a
config system can have.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


class FieldError(ConfigError):
    """A value that fails a check; `key` is relative to the group that raised it and gains the group's
    prefix on the way up (`batch_size` -> `scoring.batch_size`)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# Padded tokens per scoring forward (eval, score, RewardScorer) on the CPU; raise it on a GPU. The README
# has the measurements behind it.
SCORE_MAX_TOKENS = 4096


def _loss_names() -> tuple[str, ...]:
    """The loss names of rewardkit/losses.py, read from its source: importing it would import torch, and
    `--help` must not. losses.py stays the one list: a literal `LOSS_NAMES` tuple if it has one, else the
    keys of its `LOSSES` dict (`{**PAIRWISE_LOSSES, "token": ...}` included)."""
    spec = importlib.util.find_spec("rewardkit.losses")
    source = spec.loader.get_source(spec.name) if spec and spec.loader else None  # type: ignore[union-attr]
    if source is None:
        raise ImportError("cannot read the source of rewardkit.losses")
    found: dict[str, list[str]] = {}
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if not isinstance(target, ast.Name):
            continue
        if isinstance(value, (ast.Tuple, ast.List)):
            found[target.id] = [e.value for e in value.elts if isinstance(e, ast.Constant)]
        elif isinstance(value, ast.Dict):
            names: list[str] = []
            for key, item in zip(value.keys, value.values):
                if key is None and isinstance(item, ast.Name):  # {**PAIRWISE_LOSSES, ...}
                    names += found.get(item.id, [])
                elif isinstance(key, ast.Constant) and isinstance(key.value, str):
                    names.append(key.value)
            found[target.id] = names
    names = found.get("LOSS_NAMES") or found.get("LOSSES")
    if not names:
        raise ImportError("rewardkit.losses has neither a literal LOSS_NAMES tuple nor a literal LOSSES dict")
    return tuple(names)


LOSS_NAMES = _loss_names()


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


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise FieldError(key, problem)


def _at_least(obj: Any, minimum: float, *names: str, optional: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        if not (optional and v is None):
            _check(v >= minimum, name, f"must be at least {minimum}, got {v}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        _check(v > 0, name, f"must be > 0, got {v}")


# --------------------------------------------------------------------------- shared groups

@dataclass
class ModelConfig:
    """`train`: the backbone to start from."""

    SHORTHAND: ClassVar[str] = "path"  # `model=PATH` sets model.path
    path: str = _f("", "Backbone or reward model: a causal-LM or sequence-classification checkpoint, "
                       "a local folder or a hub id.")
    gguf_file: str | None = _f(None, "GGUF file name inside `path` (loaded and dequantised to float).")
    tokenizer: str | None = _f(None, "Tokenizer folder or id when it differs from `path`.")
    readout: str | None = _f(None, "Where the reward is read: last non-pad token, mean over response "
                                   "tokens, or the encoder's [CLS] pooler. Default: last for decoders, "
                                   "cls for encoders.", choices=("last", "mean", "cls"))
    trust_remote_code: bool = _f(False, "Allow custom modelling code from the checkpoint.")
    attn_implementation: str = _f("auto", "Attention kernel: transformers' `attn_implementation` name (sdpa, "
                                          "eager, flash_attention_2, ...). auto: transformers' default (sdpa).")


@dataclass
class SavedModel:
    """A trained reward model folder (eval, calibrate, score, rank, filter, make-pairs, serve)."""

    SHORTHAND: ClassVar[str] = "path"  # `model=DIR` sets model.path
    path: str = _f("", "Saved reward model folder (the output_dir of `rewardkit train`).")


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
    response: str = _f("response", "Pointwise and multi-attribute data, score, filter: the response column.")
    label: str = _f("label", "loss=binary: accept (1/true) or reject (0/false) column.")
    score: str = _f("score", "loss=regression: numeric target column; score, filter: the score written "
                             "(or read, without a model) per row.")
    responses: str = _f("responses", "loss=kwise, rank, filter, make-pairs: column with the list of completions.")
    ranks: str = _f("ranks", "loss=kwise: per-completion ranks (1 = best); used when present.")
    scores: str = _f("scores", "loss=kwise: per-completion scores (higher = better), when there are no ranks; "
                               "rank, filter, make-pairs: the scores written (or read, without a model).")
    attributes: list[str] = _f([], "loss=attributes: the attribute columns (numbers; null/NaN = missing).")
    messages: str = _f("messages", "score: a whole chat column (the last message is the response).")


FORMATS = ("auto", "explicit", "implicit", "conversational", "sharegpt")


def _format() -> Any:
    return _f("auto", "Row format (auto-detected by default).", choices=FORMATS)


def _on_error() -> Any:
    return _f("raise", "A malformed row stops with an error, or is skipped and counted.", choices=("raise", "skip"))


def _max_samples() -> Any:
    return _f(None, "Use only the first N rows.")


def _scored_max_length() -> Any:
    return _f(None, "Max tokens per sequence (default: the value the model was trained with); longer ones lose "
                    "prompt tokens from the left first, then response tokens.")


@dataclass
class DataConfig:
    """`train`: training and held-out data."""

    train: str = _f("", "Training data: .jsonl/.json/.parquet/.csv file, a `save_to_disk` folder or a "
                        "hub dataset id.")
    eval: str | None = _f(None, "Held-out data, same forms as `train`.")
    eval_size: float = _f(0.0, "When `eval` is unset: hold out this many examples (>=1) or this fraction "
                               "(<1) from the END of the training data.")
    split: str = _f("train", "Split to read from a hub dataset or a DatasetDict folder.")
    max_length: int = _f(512, "Max tokens per sequence; longer ones lose prompt tokens from the left "
                              "first, then response tokens from the left.")
    max_samples: int | None = _max_samples()
    format: str = _format()
    columns: Columns = _f(Columns(), "Column names.")
    on_error: str = _on_error()
    margin_table: str | None = _f(None, "Pairs: margin from the rating column via the Llama 2 table "
                                        "(small: significantly better 1, better 2/3, slightly better 1/3, "
                                        "negligibly better/unsure 0; large: 3, 2, 1, 0).",
                                  choices=("small", "large"))
    margin_map: dict[str, float] = _f({}, "Pairs: your own rating -> margin mapping, e.g. {A: 2, B: 1}; "
                                          "used instead of `margin_table`.")

    def __post_init__(self):
        _at_least(self, 1, "max_length")
        _at_least(self, 1, "max_samples", optional=True)
        _check(self.eval_size >= 0, "eval_size", f"must be >= 0, got {self.eval_size}")


@dataclass
class RowsInput:
    """A file of rows to score (score, rank, filter, make-pairs)."""

    SHORTHAND: ClassVar[str] = "path"  # `data=FILE` sets data.path
    path: str = _f("", "Input rows: .jsonl (streamed), .json, .parquet or .csv.")
    max_length: int | None = _scored_max_length()
    columns: Columns = _f(Columns(), "Column names.")

    def __post_init__(self):
        _at_least(self, 1, "max_length", optional=True)


@dataclass
class PairsInput:
    """Preference data to evaluate (eval, calibrate)."""

    SHORTHAND: ClassVar[str] = "path"  # `data=FILE` sets data.path
    path: str = _f("", "Preference data: .jsonl/.json/.parquet/.csv file, a datasets folder or a hub id "
                       "(e.g. allenai/reward-bench).")
    benchmark: str = _f("auto", "How to read the rows: plain pairs, RewardBench v1 (`subset` column) or "
                                "RewardBench 2 (lists of completions); auto: detected from the rows.",
                        choices=("auto", "pairs", "rewardbench", "rewardbench2"))
    as_chat: bool = _f(False, "Render string prompts/responses as a user/assistant chat through the "
                              "tokenizer's chat template, as RewardBench's scripts do (default: as the model "
                              "was trained on strings).")
    split: str | None = _f(None, "Split for hub ids / DatasetDict folders (default: train; filtered for "
                                 "allenai/reward-bench, test for allenai/reward-bench-2).")
    max_length: int | None = _scored_max_length()
    max_samples: int | None = _max_samples()
    format: str = _format()
    columns: Columns = _f(Columns(), "Column names.")
    on_error: str = _on_error()

    def __post_init__(self):
        _at_least(self, 1, "max_length", "max_samples", optional=True)


@dataclass
class ScoringConfig:
    """How a saved model runs: the keyword arguments of `RewardScorer.load` besides `max_length`."""

    batch_size: int = _f(32, "Sequences per forward.")
    max_tokens: int | None = _f(SCORE_MAX_TOKENS, "Cap on padded tokens per forward; sequences are sorted by "
                                                  "length first (null: batch_size alone). Raise it on a GPU.")
    device: str = _f("cpu", "torch device.")
    bf16: bool = _f(False, "bf16 autocast in the forwards: faster where bf16 is native; scores then agree with "
                           "fp32 less closely.")

    def __post_init__(self):
        _at_least(self, 1, "batch_size")
        _at_least(self, 1, "max_tokens", optional=True)


@dataclass
class MaxLength:
    """`serve`: how request texts are cut (the key the other commands spell `data.max_length` too)."""

    max_length: int | None = _f(None, "Max tokens per text (default: the value the model was trained with).")

    def __post_init__(self):
        _at_least(self, 1, "max_length", optional=True)


# --------------------------------------------------------------------------- train

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
                                 "computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), off where "
                                 "it would be emulated; weights stay fp32.")
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
                               "the flat layout (it has no padding to save), grouped otherwise.",
                       choices=("auto", "grouped", "random"))
    max_tokens: int | None = _f(None, "Pairs: token budget per micro-batch (padded tokens, or packed row "
                                      "tokens); batches then hold a varying number of pairs.")
    packing: str = _f("auto", "Pairs: `plain` packs sequences into rows (own positions and attention block "
                              "each); `shared_prompt` (decoders) lays out [prompt][chosen][rejected] so the "
                              "prompt is computed once; `auto` = shared_prompt for decoders, plain for encoders.",
                      choices=("auto", "none", "plain", "shared_prompt"))
    pack_layout: str = _f("flat", "Packing inside each micro-batch: `flat` lays all its sequences in one "
                                  "padding-free row and confines attention to each sequence with one "
                                  "attention call per unit (no padding); `batch_rows` fills rows as wide as "
                                  "its longest sequence (block-diagonal masks; also used when "
                                  "model.attn_implementation=eager).",
                          choices=("flat", "batch_rows"))
    row_length: int | None = _f(None, "Packing: fixed row length filled across the data (little padding; for "
                                      "GPUs with varlen attention); overrides `pack_layout`.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward: less memory, slower.")
    checkpoint_every: int = _f(1, "With gradient_checkpointing: checkpoint only every N-th layer (a larger N "
                                  "uses more memory and runs faster).")
    compile: bool = _f(False, "torch.compile the backbone (slow first steps; pays off on long runs).")

    def __post_init__(self):
        _positive(self, "epochs", "lr")
        _at_least(self, 1, "batch_size", "grad_accum", "eval_batch_size", "log_every", "checkpoint_every")
        _at_least(self, 1, "max_steps", "max_tokens", "row_length", optional=True)
        _at_least(self, 0, "weight_decay", "max_grad_norm", "eval_every", "save_every", "center_rewards_coef")
        _check(0 <= self.warmup_ratio <= 1, "warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio}")


@dataclass
class LossConfig:
    """`train`: the objective and its options."""

    SHORTHAND: ClassVar[str] = "name"  # `loss=kwise` sets loss.name
    name: str = _f("bt", "Objective: bt, logexp, internlm2 (pairs); token (pairs, causal backbones); kwise "
                         "(K ranked completions); binary, regression (pointwise); attributes, gating "
                         "(multi-objective stages 1 and 2). The other loss.* keys are its options.",
                   choices=LOSS_NAMES)
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

    def __post_init__(self):
        _check(self.huber_delta is None or self.huber_delta > 0, "huber_delta", f"must be > 0, got {self.huber_delta}")
        _positive(self, "gate_temperature")
        _at_least(self, 1, "gate_hidden", "gate_layers")


@dataclass
class TrainRunConfig:
    """`rewardkit train`: everything a training run needs."""

    COMMAND: ClassVar[str] = "train"
    # Older spellings still read (saved train_config.yaml files, scripts): alias -> key.
    ALIASES: ClassVar[dict[str, str]] = {"train.loss": "loss.name"}

    model: ModelConfig = _f(ModelConfig(), "Backbone options (`model=PATH` sets model.path).")
    data: DataConfig = _f(DataConfig(), "Data options.")
    train: TrainConfig = _f(TrainConfig(), "Optimisation options.")
    loss: LossConfig = _f(LossConfig(), "The objective (`loss=NAME` sets loss.name) and its options.")
    output_dir: str = _f("runs/rm", "Folder for the saved model, metrics.jsonl and checkpoints.")
    seed: int = _f(42, "Seed for weights of the new head, shuffling and dropout.")

    def validate(self) -> None:
        check_values(self)
        if not self.model.path or not self.data.train:
            raise ConfigError("`model` and `data.train` are required")


# --------------------------------------------------------------------------- eval, calibrate

@dataclass
class _PairsRun:
    """A saved model on preference data (eval, calibrate)."""

    model: SavedModel = _f(SavedModel(), "The reward model (`model=DIR` sets model.path).")
    data: PairsInput = _f(PairsInput(), "The preference data (`data=FILE` sets data.path).")
    scoring: ScoringConfig = _f(ScoringConfig(), "How the model runs.")
    json: bool = _f(False, "Print one JSON object instead of `key: value` lines.")

    def validate(self) -> None:
        _require(self, "model", "data")


@dataclass
class EvalRunConfig(_PairsRun):
    """`rewardkit eval`: accuracy, RewardBench scores, calibration and length bias of one model on one file."""

    COMMAND: ClassVar[str] = "eval"

    output: str | None = _f(None, "Write per-pair rewards to this .jsonl.")
    report_dir: str | None = _f(None, "Write eval.json, pairs.jsonl and plots/*.png here (then: rewardkit "
                                      "report DIR).")
    tie_policy: str = _f("0", "RewardBench v1 score of a tied pair: 0 (as RewardBench), 0.5 or random.",
                         choices=("0", "0.5", "random"))
    seed: int = _f(0, "Seed for tie_policy=random.")
    top_fraction: float = _f(0.1, "Share of responses, by reward, that the `top` length diagnostics look at.")

    def __post_init__(self):
        _check(0 < self.top_fraction <= 1, "top_fraction", f"must be in (0, 1], got {self.top_fraction}")


@dataclass
class CalibrateRunConfig(_PairsRun):
    """`rewardkit calibrate`: fit the temperature of P(a > b) = sigmoid(delta / T) on dev pairs."""

    COMMAND: ClassVar[str] = "calibrate"

    save: bool = _f(True, "Write the fitted T into the model's config.json (false: only print the fit).")


# --------------------------------------------------------------------------- score and the row apps

@dataclass
class _RowsRun:
    """A row file in, a row file out, scored by a saved model (score, rank, filter, make-pairs)."""

    MODEL_REQUIRED: ClassVar[bool] = True

    model: SavedModel = _f(SavedModel(), "The reward model (`model=DIR` sets model.path).")
    data: RowsInput = _f(RowsInput(), "The input rows (`data=FILE` sets data.path).")
    output: str = _f("", "Output .jsonl (written to a temp file and renamed at the end).")
    normalize: bool = _f(False, "Scores are (raw - mean) / std with the statistics in the model's config.json; "
                                "the raw values are kept beside them (raw_score / raw_scores).")
    scoring: ScoringConfig = _f(ScoringConfig(), "How the model runs.")

    def __post_init__(self):
        _check(not (self.normalize and not self.model.path), "normalize",
               "needs a model (without one, scores are read from the rows as they are)")

    def validate(self) -> None:
        _require(self, *(("model",) if self.MODEL_REQUIRED else ()), "data", "output")


@dataclass
class ScoreRunConfig(_RowsRun):
    """`rewardkit score`: rows with prompt+response or messages get a score."""

    COMMAND: ClassVar[str] = "score"


@dataclass
class _ChunkedRowsRun(_RowsRun):
    chunk_rows: int = _f(64, "Rows scored together (the input is streamed in chunks of this many rows).")

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, 1, "chunk_rows")


@dataclass
class RankRunConfig(_ChunkedRowsRun):
    """`rewardkit rank`: Best-of-N, score N responses per prompt and mark the best."""

    COMMAND: ClassVar[str] = "rank"


@dataclass
class FilterRunConfig(_ChunkedRowsRun):
    """`rewardkit filter`: keep responses above a threshold and/or in the top k% of their prompt."""

    COMMAND: ClassVar[str] = "filter"
    MODEL_REQUIRED: ClassVar[bool] = False

    threshold: float | None = _f(None, "Keep scores >= this.")
    top_percent: float | None = _f(None, "Keep the best K% of each prompt's responses across the whole file "
                                         "(at least one; ties by file order).")

    def __post_init__(self):
        super().__post_init__()
        _check(self.top_percent is None or 0 < self.top_percent <= 100, "top_percent",
               f"must be in (0, 100], got {self.top_percent}")

    def validate(self) -> None:
        super().validate()
        if self.threshold is None and self.top_percent is None:
            raise ConfigError("give `threshold`, `top_percent` or both")


@dataclass
class MakePairsRunConfig(_ChunkedRowsRun):
    """`rewardkit make-pairs`: DPO pairs from N scored responses per prompt."""

    COMMAND: ClassVar[str] = "make-pairs"
    MODEL_REQUIRED: ClassVar[bool] = False

    strategy: str = _f("max_min", "Best vs worst, best vs a random lower one, or every pair.",
                       choices=("max_min", "max_random", "all"))
    min_margin: float = _f(0.0, "Drop pairs whose score difference is below this (ties are always dropped).")
    seed: int = _f(0, "Seed for strategy=max_random.")


# --------------------------------------------------------------------------- serve, report

@dataclass
class ServeRunConfig:
    """`rewardkit serve`: reward models over HTTP, concurrent requests batched into one forward."""

    COMMAND: ClassVar[str] = "serve"

    model: SavedModel = _f(SavedModel(), "The reward model (`model=DIR` sets model.path); or `models`.")
    models: str | None = _f(None, "YAML file with several models and the rule that combines them (instead of "
                                  "`model`).")
    host: str = _f("127.0.0.1", "Interface to bind (127.0.0.1: this machine only).")
    port: int = _f(5000, "Port.")
    api_key: str | None = _f(None, "Require `Authorization: Bearer KEY` on every route but /health (default: "
                                   "$REWARDKIT_API_KEY, which keeps it out of ps).")
    normalize: bool = _f(False, "Reward = (raw - mean) / std from each model's config (raw scores are "
                                "returned too).")
    clip: float | None = _f(None, "Clamp final rewards to [-C, C] (null: no clipping).")
    scoring: ScoringConfig = _f(ScoringConfig(batch_size=64, max_tokens=32768),
                                "How the models run; requests are batched together up to scoring.batch_size "
                                "texts (1 turns batching off) and scoring.max_tokens padded tokens per forward.")
    data: MaxLength = _f(MaxLength(), "How request texts are cut.")
    max_wait_ms: float = _f(5.0, "Longest a request waits for a fuller batch.")
    max_queue: int = _f(2048, "Texts waiting; beyond it: 503 + Retry-After.")
    max_texts: int = _f(512, "Texts per request; beyond it: 413.")
    max_body_bytes: int = _f(16 * 1024 * 1024, "Request body limit in bytes; beyond it: 413.")
    access_log: bool = _f(False, "One log line per request (never the body).")

    def __post_init__(self):
        _check(not (self.model.path and self.models), "models", "give `model` or `models`, not both")
        _check(0 <= self.port <= 65535, "port", f"must be in [0, 65535], got {self.port}")
        _check(self.clip is None or self.clip > 0, "clip", f"must be > 0, got {self.clip}")
        _check(self.scoring.max_tokens is not None, "scoring.max_tokens", "the server needs a number")
        _at_least(self, 0, "max_wait_ms")
        _at_least(self, 1, "max_queue", "max_texts", "max_body_bytes")
        _check(self.max_texts <= self.max_queue, "max_texts",
               f"must not exceed max_queue ({self.max_queue}), or a full request could never be queued")

    def validate(self) -> None:
        check_values(self)
        if not self.model.path and not self.models:
            raise ConfigError("give `model` (a saved model folder) or `models` (a models file)")


@dataclass
class ReportRunConfig:
    """`rewardkit report`: HTML + markdown report of an eval folder or a training run."""

    COMMAND: ClassVar[str] = "report"

    path: str = _f("", "Eval folder (from `rewardkit eval report_dir=DIR`) or training output folder.")
    output_dir: str | None = _f(None, "Write the report here (default: `path`).")

    def validate(self) -> None:
        _require(self, "path")


COMMANDS: dict[str, type] = {c.COMMAND: c for c in (  # type: ignore[attr-defined]
    TrainRunConfig, EvalRunConfig, CalibrateRunConfig, ScoreRunConfig, RankRunConfig, FilterRunConfig,
    MakePairsRunConfig, ServeRunConfig, ReportRunConfig)}


def check_values(cfg: Any, prefix: str = "") -> None:
    """Run the value checks (`__post_init__`) of `cfg` and its groups again, e.g. after fields were set by
    hand; errors name the full key."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_values(value, f"{prefix}{f.name}.")
    try:
        getattr(cfg, "__post_init__", lambda: None)()
    except FieldError as e:
        raise FieldError(prefix + e.key, e.problem) from None


def _require(cfg: Any, *keys: str) -> None:
    """The value checks, then: each key (a plain field or a group with a shorthand) must be set."""
    check_values(cfg)
    missing = []
    for key in keys:
        v = getattr(cfg, key)
        if dataclasses.is_dataclass(v):
            v = getattr(v, v.SHORTHAND)  # type: ignore[attr-defined]
        if not v:
            missing.append(f"`{key}`")
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")


# --------------------------------------------------------------------------- building

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _shorthand(tp: Any) -> str | None:
    return getattr(tp, "SHORTHAND", None) if dataclasses.is_dataclass(tp) else None


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config class, e.g. `data.columns.prompt`, and the groups that take a
    scalar (`model`)."""
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if _shorthand(tp):
                keys.append(f"{prefix}{f.name}")
            keys.extend(all_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(value: Any, tp: Any, key: str, choices: tuple[str, ...] | None, root: type, base: Any = None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, choices, root, base)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            if _shorthand(tp):
                value = {_shorthand(tp): value}
            else:
                raise ConfigError(f"{key}: expected a mapping (keys {key}.*), got {value!r}")
        return _build(tp, value, root, key + ".", base)
    bad = ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        try:  # PyYAML reads `1e-5` (no dot) as a string; option values arrive as strings
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


def _build(cls: type, data: dict[str, Any], root: type, prefix: str = "", base: Any = None) -> Any:
    """`cls` from `data`; keys not in `data` keep the values of `base`, the default of this group in its
    parent (serve's `scoring` defaults differ from eval's), else of `cls()`."""
    base = cls() if base is None else base
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            key = f"{prefix}{k}"
            while isinstance(v, dict) and v:  # name the whole key: `trian.epochs`, not `trian`
                k, v = next(iter(v.items()))
                key += f".{k}"
            raise ConfigError(_unknown_key_message(key, root))
        f = names[k]
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}", f.metadata.get("choices"), root, getattr(base, k))
    try:
        return dataclasses.replace(base, **kwargs)
    except FieldError as e:
        raise FieldError(prefix + e.key, e.problem) from None


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def closest_key(key: str, valid: list[str], cutoff: float = 0.6) -> list[str]:
    """The valid keys closest to a misspelt one, compared component by component: `trian.epochs` ->
    `train.epochs`, `data.max_len` -> `data.max_length`. Falls back to keys with the same last component
    (`batch_size` -> `scoring.batch_size`)."""
    parts = key.split(".")
    best, best_score = [], 0.0
    for cand in valid:
        cparts = cand.split(".")
        if len(cparts) != len(parts):
            continue
        ratios = [_similarity(a, b) for a, b in zip(parts, cparts)]
        if min(ratios) >= cutoff and sum(ratios) > best_score:
            best, best_score = [cand], sum(ratios)
    if best:
        return best
    return [k for k in valid if k.split(".")[-1] == parts[-1]][:2]


def _unknown_key_message(key: str, root: type) -> str:
    close = closest_key(key, all_keys(root) + list(getattr(root, "ALIASES", {})))
    hint = f"; did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else ""
    command = getattr(root, "COMMAND", None)
    where = f" (see `rewardkit {command} --help` for all keys)" if command else ""
    return f"unknown config key `{key}`{hint}{where}"


def parse_override(item: str) -> tuple[str, Any]:
    """`"a.b=1"` -> `("a.b", 1)`: the dotted key and its value parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or "" in key.split("."):
        raise ConfigError(f"override `{item}` is not of the form key=value")
    return key, (yaml.safe_load(raw) if raw.strip() else "")


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`["a.b=1", "c=x"]` -> `[("a.b", 1), ("c", "x")]`; values are parsed as YAML scalars."""
    return [parse_override(item) for item in overrides]


def _nest(key: str, value: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return tree


def _expand(cls: type, tree: dict[str, Any]) -> dict[str, Any]:
    """A scalar given for a group with a shorthand becomes that field (`model: x` -> `model: {path: x}`),
    so that layers merge key by key whichever spelling each one used."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for k, v in tree.items():
        tp = hints[k] if k in names else None
        if dataclasses.is_dataclass(tp):
            if isinstance(v, dict):
                v = _expand(tp, v)
            elif _shorthand(tp) and not isinstance(v, (list, tp)):
                v = {_shorthand(tp): v}
        out[k] = v
    return out


def _take(tree: dict[str, Any], parts: list[str]) -> Any:
    node = tree
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return dataclasses.MISSING
    return node.pop(parts[-1], dataclasses.MISSING)


def _layer(cls: type, tree: dict[str, Any]) -> dict[str, Any]:
    """One source of settings (a file, an option, an override) in canonical spelling: shorthands expanded,
    aliases (`train.loss`) moved to their key (`loss.name`)."""
    tree = _expand(cls, tree)
    for alias, target in getattr(cls, "ALIASES", {}).items():
        value = _take(tree, alias.split("."))
        if value is dataclasses.MISSING:
            continue
        present = _take(_copy(tree), target.split("."))
        if present is not dataclasses.MISSING and present != value:
            raise ConfigError(f"`{alias}` ({value!r}) and `{target}` ({present!r}) disagree; `{alias}` is the "
                              f"older spelling of `{target}`")
        tree = _merge(tree, _expand(cls, _nest(target, value)))
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, *,
                values: list[tuple[str, Any]] | None = None) -> Any:
    """Build `cls` from an optional YAML file, then `values` ((key, value) pairs taken as they are, e.g.
    from command-line options), then dotted `key=value` overrides parsed as YAML; later ones win."""
    layers = []
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        layers.append(loaded or {})
    layers += [_nest(k, v) for k, v in [*(values or []), *parse_overrides(overrides or [])]]
    data: dict[str, Any] = {}
    for layer in layers:
        data = _merge(data, _layer(cls, layer))
    return _build(cls, data, cls)


def flat_config(cls: type, **values: Any) -> Any:
    """`cls` from keywords named by the last part of a key (`on_error="skip"` sets data.on_error, `columns=`
    data.columns); for flat constructors kept from earlier versions. Each name must be unique in `cls`."""
    where: dict[str, list[str]] = {}

    def walk(c: type, prefix: str) -> None:
        hints = _hints(c)
        for f in dataclasses.fields(c):
            where.setdefault(f.name, []).append(prefix + f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")

    walk(cls, "")
    pairs = []
    for name, value in values.items():
        keys = where.get(name, [])
        if len(keys) != 1:
            raise ConfigError(f"`{name}` names {'no key' if not keys else ', '.join(keys)} of {cls.__name__}")
        pairs.append((keys[0], value))
    return load_config(cls, values=pairs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _wrap(text: str, indent: str, first: str = "") -> str:
    return textwrap.fill(text, width=100, initial_indent=first, subsequent_indent=indent, break_on_hyphens=False)


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One help line per key: `key (default: value) [choices]` and its help; groups get a `group.*` line.
    Defaults come from the default instance, so a group's defaults can differ per command."""
    defaults = cls() if defaults is None else defaults
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            lines.append(_wrap(f"  {prefix}{f.name}.*  {f.metadata['help']}", "      "))
            lines.extend(describe(tp, f"{prefix}{f.name}.", value))
            continue
        choices = f.metadata.get("choices")
        extra = f" [{'|'.join(choices)}]" if choices else ""
        help_ = _wrap(f.metadata["help"], "      ", "      ")
        lines.append(f"  {prefix}{f.name} (default: {value!r}){extra}\n{help_}")
    if not prefix:
        lines += [f"  {alias}: older spelling of {target}" for alias, target in getattr(cls, "ALIASES", {}).items()]
    return lines
