"""One config dataclass per command, built from the shared groups; `COMMANDS` maps command names to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rewardkit.config.groups import (LOSS_NAMES, DataConfig, MaxLength, ModelConfig, PairsInput, RowsInput,
                                     SavedModel, ScoringConfig)
from rewardkit.config.devices import check_device
from rewardkit.config.outputs import check_output_dir, check_output_file
from rewardkit.config.schema import ConfigError, _at_least, _check, _f, _positive, _require, check_values


# --------------------------------------------------------------------------- train

@dataclass
class TrainConfig:
    epochs: float = _f(1.0, "Passes over the training data (fractions allowed).")
    max_steps: int | None = _f(None, "Stop after this many optimiser steps (overrides epochs).")
    batch_size: int = _f(8, "Examples per micro-batch and process: pairs (2 sequences each, one forward), "
                            "prompts (kwise: K sequences each) or rows (pointwise, attributes). An optimiser step "
                            "sees batch_size x processes x grad_accum examples.")
    grad_accum: int = _f(1, "Micro-batches per optimiser step (per process).")
    lr: float = _f(5e-5, "Peak learning rate (AdamW).")
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norms).")
    scheduler: str = _f("cosine", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    warmup_ratio: float = _f(0.03, "Fraction of steps with linear warmup (rounded up, as HF/TRL/OpenRLHF do).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    max_bad_steps: int = _f(10, "Optimiser steps whose loss or gradient is not finite are skipped (no weight "
                                "change) and counted; this many in a row stop the run (exit 3).")
    bf16: bool | None = _f(None, "bf16 autocast for forward and backward. Default (null): on where the hardware "
                                 "computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), off where "
                                 "it would be emulated; weights stay fp32.")
    center_rewards_coef: float = _f(0.0, "Pairs: weight of the reward-centering term mean((rc+rr)^2).")
    disable_dropout: bool = _f(True, "Set every dropout probability to 0 (reward models train better).")
    reward_stats: str = _f("loop", "Without an eval set, where the reward mean/std saved for normalisation come "
                                   "from: `loop` = the rewards the training forwards computed over the last epoch "
                                   "(no extra pass); `pass` = one more forward over up to 1000 training examples "
                                   "with the final weights. With an eval set they come from the final eval.",
                           choices=("loop", "pass"))
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
    pack_layout: str = _f("auto", "Packing inside each micro-batch: `flat` lays all its sequences in one "
                                  "padding-free row and confines attention to each sequence with one "
                                  "attention call per unit (no padding); `batch_rows` fills rows as wide as "
                                  "its longest sequence (block-diagonal masks; also used when "
                                  "model.attn_implementation=eager); `auto` = batch_rows on CUDA under SDPA, "
                                  "flat elsewhere (the faster one measured on each).",
                          choices=("auto", "flat", "batch_rows"))
    row_length: int | None = _f(None, "Packing: fixed row length filled across the data (little padding; for "
                                      "GPUs with varlen attention); overrides `pack_layout`.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward: less memory, slower.")
    checkpoint_every: int = _f(1, "With gradient_checkpointing: checkpoint only every N-th layer (a larger N "
                                  "uses more memory and runs faster).")
    compile: bool = _f(False, "torch.compile the backbone (compiles during the first steps; on CPU measured "
                              "slower than eager, README).")
    shared_casts: bool = _f(True, "Under bf16: cast an input that several projections share (q/k/v, gate/up) to "
                                  "bf16 once instead of once per projection; their gradients then add in bf16.")
    lean_activations: bool = _f(True, "RMSNorm and gated (SwiGLU) MLPs keep only their inputs, 1/rms, gate and up "
                                      "for backward and recompute the rest (same forward; SmolLM2's peak RSS "
                                      "-6%, loop 5% faster, README). Not under FSDP or DeepSpeed ZeRO-3.")
    trim_memory: bool = _f(False, "CPU: hand the heap pages a step freed back to the OS after every optimiser step "
                                  "(glibc malloc_trim): ~10% lower peak RSS, but the next step faults them in "
                                  "again (SmolLM2 here: loop ~14% slower). For memory-bound runs.")
    report_to: str | list[str] = _f("none", "Experiment trackers that get the rows of metrics.jsonl: none, "
                                            "tensorboard (OUTPUT_DIR/<train.project>/), wandb (offline unless "
                                            "WANDB_MODE or WANDB_API_KEY is set), or a list of them.")
    project: str = _f("rewardkit", "Tracker project name (wandb project; TensorBoard's folder in output_dir).")

    def __post_init__(self):
        _positive(self, "epochs", "lr")
        _at_least(self, 1, "batch_size", "grad_accum", "eval_batch_size", "log_every", "checkpoint_every",
                  "max_bad_steps")
        _at_least(self, 1, "max_steps", "max_tokens", "row_length", optional=True)
        _at_least(self, 0, "weight_decay", "max_grad_norm", "eval_every", "save_every", "center_rewards_coef")
        _check(0 <= self.warmup_ratio <= 1, "warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio}")
        names = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        bad = [n for x in names for n in str(x).split(",") if n.strip() not in ("none", "tensorboard", "wandb")]
        _check(not bad, "report_to", f"{', '.join(map(repr, bad))}: choose from none, tensorboard, wandb")
        _check(bool(self.project.strip()), "project", "must not be empty")


@dataclass
class LossConfig:
    """`train`: the objective and its options."""

    SHORTHAND: ClassVar[str] = "name"  # `loss=kwise` sets loss.name
    name: str = _f("bt", "Objective: bt, logexp, internlm2 (pairs); token (pairs, causal backbones); kwise "
                         "(K ranked completions); binary, regression (pointwise); attributes, gating "
                         "(multi-objective stages 1 and 2); prm (stepwise rows: a process reward model). The "
                         "other loss.* keys are its options.",
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
    step_separator: str = _f("\n", "prm: string appended to every step; the step's value is read at its last "
                                   "token. Saved with the model, which splits string responses on it.")

    def __post_init__(self):
        _check(self.huber_delta is None or self.huber_delta > 0, "huber_delta", f"must be > 0, got {self.huber_delta}")
        _positive(self, "gate_temperature")
        _at_least(self, 1, "gate_hidden", "gate_layers")
        _at_least(self, 0, "gamma", "penalty_weight")
        _check(0 <= self.verbosity_threshold <= 1, "verbosity_threshold",
               f"must be in [0, 1], got {self.verbosity_threshold}")
        # a bare newline given as key=value arrives stripped to "": string responses would never split
        _check(self.step_separator != "", "step_separator",
               'is empty; quote whitespace as YAML: loss.step_separator="\\n\\n" (or " ки")')


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
        check_output_dir(self.output_dir, "output_dir")


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
        check_device(self.scoring.device, "scoring.device")


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

    def validate(self) -> None:
        super().validate()
        check_output_file(self.output, "output")
        check_output_dir(self.report_dir, "report_dir")


@dataclass
class CalibrateRunConfig(_PairsRun):
    """`rewardkit calibrate`: fit the temperature of P(a > b) = sigmoid(delta / T) on dev pairs."""

    COMMAND: ClassVar[str] = "calibrate"

    save: bool = _f(True, "Write the fitted T into the model's config.json (false: only print the fit).")
    force: bool = _f(False, "Save the fitted T even where it makes the expected calibration error on these pairs "
                            "worse than the T in use (by default the old T is kept then, and the fit printed).")


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
        check_output_file(self.output, "output")
        if self.model.path:
            check_device(self.scoring.device, "scoring.device")


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
    body_timeout: float = _f(30.0, "Seconds to receive a request body once its headers arrived; slower: 408 and "
                                   "the connection is closed.")
    header_timeout: float = _f(30.0, "Seconds for a connection to send a request's headers, from its opening or "
                                     "its previous answer; slower: closed (408 if a request had begun).")
    max_connections: int | None = _f(None, "Open connections at most; one more is answered 503 + Retry-After and "
                                           "closed. null: the process's open-file limit less 64.")
    drain_timeout: float = _f(30.0, "On SIGTERM: stop accepting, let queued work run this many seconds more, "
                                    "answer 503 to what is left, exit 0.")
    access_log: bool = _f(False, "One log line per request (never the body).")

    def __post_init__(self):
        _check(not (self.model.path and self.models), "models", "give `model` or `models`, not both")
        _check(0 <= self.port <= 65535, "port", f"must be in [0, 65535], got {self.port}")
        _check(self.clip is None or self.clip > 0, "clip", f"must be > 0, got {self.clip}")
        _check(self.scoring.max_tokens is not None, "scoring.max_tokens", "the server needs a number")
        _at_least(self, 0, "max_wait_ms")
        _at_least(self, 1, "max_queue", "max_texts", "max_body_bytes")
        _at_least(self, 1, "max_connections", optional=True)
        _positive(self, "body_timeout", "header_timeout")
        _at_least(self, 0, "drain_timeout")
        _check(self.max_texts <= self.max_queue, "max_texts",
               f"must not exceed max_queue ({self.max_queue}), or a full request could never be queued")

    def validate(self) -> None:
        check_values(self)
        if not self.model.path and not self.models:
            raise ConfigError("give `model` (a saved model folder) or `models` (a models file)")
        check_device(self.scoring.device, "scoring.device")


@dataclass
class MergeRunConfig:
    """`rewardkit merge`: fold a LoRA run's adapter into the backbone, writing a plain HF reward model."""

    COMMAND: ClassVar[str] = "merge"

    model: SavedModel = _f(SavedModel(), "The LoRA run folder (`model=DIR` sets model.path).")
    output: str = _f("", "Folder for the merged model (loads in AutoModelForSequenceClassification).")

    def validate(self) -> None:
        _require(self, "model", "output")
        check_output_dir(self.output, "output")


@dataclass
class ReportRunConfig:
    """`rewardkit report`: HTML + markdown report of an eval folder or a training run."""

    COMMAND: ClassVar[str] = "report"

    path: str = _f("", "Eval folder (from `rewardkit eval report_dir=DIR`) or training output folder.")
    output_dir: str | None = _f(None, "Write the report here (default: `path`).")

    def validate(self) -> None:
        _require(self, "path")
        check_output_dir(self.output_dir or self.path, "output_dir" if self.output_dir else "path")


COMMANDS: dict[str, type] = {c.COMMAND: c for c in (  # type: ignore[attr-defined]
    TrainRunConfig, EvalRunConfig, CalibrateRunConfig, ScoreRunConfig, RankRunConfig, FilterRunConfig,
    MakePairsRunConfig, ServeRunConfig, ReportRunConfig, MergeRunConfig)}
