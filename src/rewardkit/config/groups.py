"""Config groups that several commands share, so one setting has one spelling everywhere (`model`, `data`,
`data.columns`, `scoring`)."""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rewardkit.config.schema import _at_least, _check, _f, _positive


# Padded tokens per scoring forward (eval, score, RewardScorer) on the CPU; raise it on a GPU. The README
# has the measurements behind it.
SCORE_MAX_TOKENS = 4096
# The shortest max_length any command takes: room for the special tokens around a few tokens of text (the
# sequence encoder refuses less); a chat template longer than max_length is refused where text is rendered.
MIN_MAX_LENGTH = 8


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


def _model_kinds() -> tuple[str, ...]:
    """The kinds of rewardkit/scoring/judges.py's `JUDGES`, read from its source by path (importing the
    scoring package would import torch, and `--help` must not)."""
    path = Path(__file__).resolve().parents[1] / "scoring" / "judges.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "JUDGES" and isinstance(node.value, ast.Dict):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    raise ImportError(f"{path} has no literal JUDGES dict")


MODEL_KINDS = _model_kinds()


# --------------------------------------------------------------------------- shared groups

@dataclass
class LoraConfig:
    """`train`: LoRA adapters on the backbone (peft); the value head always trains in full."""

    SHORTHAND: ClassVar[str] = "r"  # `model.lora=16` sets model.lora.r
    r: int = _f(0, "LoRA rank (0: off, the whole backbone trains). With r > 0 only the adapters and the head(s) "
                   "train, and the saved folder holds the adapter and the head instead of the base weights "
                   "(`rewardkit merge` writes a plain HF model). Needs peft: pip install 'rewardkit[lora]'.")
    alpha: float | None = _f(None, "LoRA scaling numerator (the update is scaled by alpha / r). Default: 2 * r.")
    dropout: float = _f(0.0, "Dropout on the adapters' input (kept even with train.disable_dropout).")
    target_modules: list[str] = _f(["all-linear"], "Backbone modules that get adapters: module names as peft "
                                                   "matches them (q_proj, v_proj, ...) or `all-linear` (every "
                                                   "linear layer of the backbone). Never the value head.")

    def __post_init__(self):
        _at_least(self, 0, "r")
        _check(self.alpha is None or self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        _check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(bool(self.target_modules) and all(isinstance(m, str) and m for m in self.target_modules),
               "target_modules", f"must be a non-empty list of module names, got {self.target_modules!r}")


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
    token_types: bool = _f(False, "Encoders with segment embeddings (BERT, MiniLM): true marks the response as "
                                  "segment B (token_type_ids 1), as the tokenizer does for a text pair; false (the "
                                  "default) keeps every token in segment A, as full texts arrive at the server "
                                  "(OpenRLHF sends prompt+response as one string) and as TRL trains. Saved with "
                                  "the model, whose scoring then lays text out the same way.")
    trust_remote_code: bool = _f(False, "Allow custom modelling code from the checkpoint.")
    attn_implementation: str = _f("auto", "Attention kernel: transformers' `attn_implementation` name (sdpa, "
                                          "eager, flash_attention_2, ...). auto: transformers' default (sdpa).")
    lora: LoraConfig = _f(LoraConfig(), "LoRA adapters (`model.lora=R` sets model.lora.r).")
    quantization: str = _f("none", "QLoRA: load the backbone's linear layers quantised through bitsandbytes (4bit: "
                                   "NF4 with double quantisation and bf16 compute; 8bit: LLM.int8), LoRA on top, "
                                   "head(s) in full precision. Needs model.lora.r > 0, a CUDA GPU and "
                                   "bitsandbytes (pip install 'rewardkit[qlora]').", choices=("none", "4bit", "8bit"))

    def __post_init__(self):
        _check(self.quantization == "none" or self.lora.r > 0, "quantization",
               f"{self.quantization} needs LoRA (model.lora.r > 0): quantised weights cannot train")


@dataclass
class SavedModel:
    """A trained reward model folder (eval, calibrate, score, rank, filter, make-pairs, serve)."""

    SHORTHAND: ClassVar[str] = "path"  # `model=DIR` sets model.path
    path: str = _f("", "Saved reward model folder (the output_dir of `rewardkit train`), or for model.kind="
                       "generative / dpo any causal-LM folder.")
    kind: str = _f("auto", "How the folder is read: auto (the kind saved in its config.json; value-head models "
                           "of older versions too), or a kind to force, e.g. generative (an LM asked 'A or B?') or "
                           "dpo (a DPO policy's implicit reward). `rewardkit --help` lists the kinds.",
                   choices=("auto", *MODEL_KINDS))
    reference: str | None = _f(None, "kind=dpo: the reference model pi_ref (null with model.reference_free).")
    beta: float = _f(0.1, "kind=dpo: beta of r = beta * sum_t [log pi(y_t|..) - log pi_ref(y_t|..)].")
    reference_free: bool = _f(False, "kind=dpo: drop pi_ref (r = beta * log pi(y|x)).")
    length_normalize: bool = _f(False, "kind=dpo: average the log-ratio over response tokens (SimPO-style) "
                                       "instead of summing it.")
    rank_strategy: str = _f("matrix", "Pairwise kinds (pairrm, generative): rank N candidates by the full N x N "
                                      "comparison matrix (N(N-1)/2 judgements) or a knockout (N-1).",
                            choices=("matrix", "knockout"))
    aggregate: str = _f("min", "kind=prm: one score per response from its step scores: min, product or last.",
                        choices=("min", "product", "last"))
    template: str | None = _f(None, "kind=generative: the judge prompt, with {prompt}, {a} and {b}; default: "
                                    "'Which response is better? Answer A or B.' after both responses.")
    allow_random_head: bool = _f(False, "Value-head kinds: score with a checkpoint that has no value head (a plain "
                                        "backbone) through a randomly initialised one. Off: such a folder is "
                                        "refused, as its scores would be noise.")

    def __post_init__(self):
        _positive(self, "beta")


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
    steps: str = _f("completions", "loss=prm and stepwise eval: the list of reasoning steps (TRL's stepwise format).")
    step_labels: str = _f("labels", "loss=prm and stepwise eval: one label per step (true = correct).")


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
class Source:
    """One source of a training mixture or one named eval set; unset fields take the `data.*` values."""

    SHORTHAND: ClassVar[str] = "path"
    path: str = _f("", "File, `save_to_disk` folder or hub dataset id.")
    weight: float = _f(1.0, "Training mixtures: share of each epoch's examples drawn from this source, "
                            "relative to the other sources' weights.")
    format: str | None = _f(None, "Row format of this source (default: data.format).", choices=FORMATS)
    columns: Columns | None = _f(None, "Column names of this source (default: data.columns).")
    split: str | None = _f(None, "Split of a hub dataset / DatasetDict folder (default: data.split).")
    max_samples: int | None = _f(None, "Use only the first N rows of this source.")

    def __post_init__(self):
        _check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        _at_least(self, 1, "max_samples", optional=True)


@dataclass
class DataConfig:
    """`train`: training and held-out data."""

    train: str | list[Source] = _f("", "Training data: .jsonl/.json/.parquet/.csv file, a `save_to_disk` folder "
                                       "or a hub dataset id; or a mixture, a list of sources "
                                       "[{path, weight, format, columns, split, max_samples}, ...] drawn per "
                                       "epoch by weight (seeded).")
    eval: str | dict[str, str | Source] | None = _f(None, "Held-out data, same forms as `train`; or named sets "
                                                          "{name: path or source, ...}, each reported apart "
                                                          "(eval rows carry <name>/accuracy, ...).")
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
        _at_least(self, MIN_MAX_LENGTH, "max_length")
        _at_least(self, 1, "max_samples", optional=True)
        _check(self.eval_size >= 0, "eval_size", f"must be >= 0, got {self.eval_size}")
        _check(not isinstance(self.train, list) or any(s.weight > 0 for s in self.train), "train",
               "a mixture needs at least one source with weight > 0")


@dataclass
class RowsInput:
    """A file of rows to score (score, rank, filter, make-pairs)."""

    SHORTHAND: ClassVar[str] = "path"  # `data=FILE` sets data.path
    path: str = _f("", "Input rows: .jsonl (streamed), .json, .parquet or .csv.")
    max_length: int | None = _scored_max_length()
    columns: Columns = _f(Columns(), "Column names.")

    def __post_init__(self):
        _at_least(self, MIN_MAX_LENGTH, "max_length", optional=True)


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
        _at_least(self, MIN_MAX_LENGTH, "max_length", optional=True)
        _at_least(self, 1, "max_samples", optional=True)


@dataclass
class ScoringConfig:
    """How a saved model runs: the keyword arguments of `RewardScorer.load` besides `max_length`."""

    batch_size: int = _f(32, "Sequences per forward.")
    max_tokens: int | None = _f(SCORE_MAX_TOKENS, "Cap on padded tokens per forward; sequences are sorted by "
                                                  "length first (null: batch_size alone). Raise it on a GPU.")
    device: str = _f("cpu", "torch device.")
    bf16: bool | None = _f(None, "bf16 autocast in the forwards. Default (null): bf16 for a model trained in bf16 "
                                 "where the device computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/"
                                 "AMX), fp32 otherwise (scoring an fp32-trained model in bf16 flipped 3% of "
                                 "held-out pairs, README). The command says which it used.")

    def __post_init__(self):
        _at_least(self, 1, "batch_size")
        _at_least(self, 1, "max_tokens", optional=True)


@dataclass
class MaxLength:
    """`serve`: how request texts are cut (the key the other commands spell `data.max_length` too)."""

    max_length: int | None = _f(None, "Max tokens per text (default: the value the model was trained with).")

    def __post_init__(self):
        _at_least(self, MIN_MAX_LENGTH, "max_length", optional=True)
