"""What every objective family provides to the training loop, and the pieces they share.

train.py runs ONE loop for every loss; what differs per family sits behind `Objective`:
  build_model -> load_data (tokenised items) -> collator (items -> named batch) -> prepare (once, before
  the loop) -> compute (batch -> loss and metric sums) -> evaluate (items -> metrics, incl. reward stats).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from rewardkit.batches import StepOutput
from rewardkit.config import DataConfig, TrainRunConfig
from rewardkit.data.mixing import SourceSpec, check_held_out, eval_sources, mixture_counts, training_sources
from rewardkit.data.readers import DataError, LoadReport, load_examples
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.metrics import reward_stats
from rewardkit.models.lora import LoraSpec
from rewardkit.models.reward_model import RewardModel

log = logging.getLogger(__name__)


@dataclass
class SourceSlice:
    """A training source inside `ObjectiveData.train`: items [start, start + size), drawn by `weight`."""

    name: str
    start: int
    size: int
    weight: float = 1.0


@dataclass
class ObjectiveData:
    """Tokenised training and held-out items (pairs, rankings, points...).

    eval: every held-out item; eval_sets: the same items by named set (one set for a single eval source);
    sources: where each training source sits in `train` (one slice unless `data.train` is a mixture);
    counts: what loading counted over every source (`LoadReport.summary`: skipped_rows, empty_responses...)."""

    train: list
    eval: list
    eval_sets: dict[str, list] = field(default_factory=dict)
    sources: list[SourceSlice] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def mixed(self) -> bool:
        """True when the training data is a weighted mixture of several sources."""
        return len(self.sources) > 1


class Objective(Protocol):
    name: str  # the loss name (`loss.name`)
    unit: str  # what one training example is: "pairs", "prompts" or "sequences"
    metric: str  # the task metric shown in logs (higher is better unless it is an error)
    # Capabilities the loop asks for instead of checking classes:
    packable: bool  # items are TokenizedPairs whose batches may be packed, length-grouped and token-budgeted

    def build_model(self, cfg: TrainRunConfig) -> tuple[RewardModel, Any]: ...

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData: ...

    def collator(self, pad_id: int) -> Callable[[list], Any]: ...

    def prepare(self, model: RewardModel, train: list, *, pad_id: int, batch_size: int,
                device: torch.device | str) -> None: ...

    def compute(self, model: RewardModel, batch: Any) -> StepOutput: ...

    def loss_units(self, item: Any) -> int:
        """How many terms `compute`'s loss averages over for this training item (1 when the loss is a mean over
        items). The loop weighs each process's and micro-batch's loss by these, so that a step's gradient is
        the mean over all its terms whatever the number of processes or of accumulation steps."""
        ...

    def evaluate(self, model: RewardModel, items: list, *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]: ...


class ObjectiveModule(nn.Module):
    """The module accelerate wraps: forward(batch) -> StepOutput, so that distributed wrappers see every
    forward even when an objective needs more than the scalar reward (token values, attributes)."""

    def __init__(self, model: RewardModel, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Any) -> StepOutput:
        return self.objective.compute(self.model, batch)


class BaseObjective:
    """Defaults shared by the families: plain model loading; `prepare` records the loss in the model."""

    name = ""
    unit = "sequences"
    metric = "loss"
    packable = False
    model_kind: str | None = None  # the head this family trains (None: whatever the checkpoint has)

    def build_model(self, cfg: TrainRunConfig) -> tuple[RewardModel, Any]:
        """The model of `cfg.model`; with `model.lora.r > 0` a LoRA adapter on the backbone (only the adapter
        and the head(s) train), with `model.quantization` the backbone loaded through bitsandbytes."""
        m = cfg.model
        lora = LoraSpec(m.lora.r, m.lora.alpha, m.lora.dropout, list(m.lora.target_modules)) if m.lora.r else None
        return RewardModel.from_pretrained(m.path, kind=self.model_kind, gguf_file=m.gguf_file, tokenizer=m.tokenizer,
                                           readout=m.readout, trust_remote_code=m.trust_remote_code, seed=cfg.seed,
                                           lora=lora, quantization=m.quantization, token_types=m.token_types)

    def prepare(self, model: RewardModel, train: list, *, pad_id: int, batch_size: int,
                device: torch.device | str) -> None:
        model.objective_info = {"loss": self.name}  # saved in config.json (rewardkit.objective)

    def loss_units(self, item: Any) -> int:
        return 1  # the losses are means over items unless a family says otherwise


def no_margins(loaded: tuple[list, LoadReport], spec: SourceSpec, loss: str) -> tuple[list, LoadReport]:
    """`loaded` as it is, or a DataError at the first pair with a margin: `loss` has no margin to apply, and
    training on as if the column were not there would hide it."""
    ex = next((e for e in loaded[0] if getattr(e, "margin", None) is not None), None)
    if ex is not None:
        raise DataError(ex.source, spec.columns.margin, f"loss={loss} takes no margins (each order of a pair is "
                                                       "labelled 1 or 0); drop the column, or train with loss=bt")
    return loaded


def hold_out(train: list, d: DataConfig, what: str) -> tuple[list, list]:
    """Split `data.eval_size` examples (a count >= 1 or a fraction < 1) off the END of `train`."""
    if d.eval_size <= 0:
        return train, []
    n = int(d.eval_size) if d.eval_size >= 1 else max(1, int(len(train) * d.eval_size))
    if n >= len(train):
        raise ValueError(f"data.eval_size={d.eval_size} leaves no training {what} (have {len(train)})")
    return train[:-n], train[-n:]


def load_sources(cfg: TrainRunConfig, load: Callable[[SourceSpec], tuple[list, LoadReport]],
                 tokenize: Callable[[list, str], list], what: str) -> ObjectiveData:
    """Every training source and eval set of `data.*`: `load(spec)` reads a source's examples (and its
    `LoadReport`), `tokenize(examples, name)` turns them into items. Without `data.eval`, `data.eval_size` is
    held out from the END of each training source (one set per source)."""
    d = cfg.data
    reports: list[LoadReport] = []

    def read(spec: SourceSpec) -> list:
        examples, report = load(spec)
        reports.append(report)
        return examples

    train_specs, eval_specs = training_sources(d), eval_sources(d)
    check_held_out(train_specs, eval_specs)
    parts = [(spec, read(spec)) for spec in train_specs]
    held = {name: read(spec) for name, spec in eval_specs.items()}
    if not held and d.eval_size > 0:
        for i, (spec, examples) in enumerate(parts):
            kept, out = hold_out(examples, d, what)
            parts[i] = (spec, kept)
            held["eval" if len(parts) == 1 else spec.name] = out
    data = ObjectiveData([], [], counts=LoadReport.combined(reports).summary())
    for spec, examples in parts:
        items = tokenize(examples, f"train {spec.name}" if len(parts) > 1 else "train")
        data.sources.append(SourceSlice(spec.name, len(data.train), len(items), spec.weight))
        data.train.extend(items)
    data.eval_sets = {name: tokenize(examples, "eval" if name == "eval" else f"eval {name}")
                      for name, examples in held.items()}
    data.eval = [it for items in data.eval_sets.values() for it in items]
    if data.mixed:
        counts = mixture_counts([s.size for s in data.sources], [s.weight for s in data.sources])
        for s, c in zip(data.sources, counts):
            log.info("training source %s: %d %s, weight %g -> %d per epoch", s.name, s.size, what, s.weight, c)
    return data


class StepWindow:
    """Sums of training metrics between two log rows."""

    def __init__(self) -> None:
        self.loss, self.n, self.units, self.tokens, self.processed = 0.0, 0, 0.0, 0, 0
        self.sums: dict[str, float] = {}
        self.rewards: list[torch.Tensor] = []
        self.start = time.perf_counter()

    def add(self, out: StepOutput, tokens: int, processed: int | None = None) -> None:
        """tokens: real tokens of the batch; processed: tokens the forward computed (with padding)."""
        units = out.n if out.units is None else out.units
        self.loss += float(out.loss.detach()) * units
        self.n += out.n
        self.units += units
        self.tokens += tokens
        self.processed += processed if processed is not None else tokens
        for k, v in out.sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.rewards.append(out.rewards.detach().float().cpu())

    def row(self, unit: str) -> dict[str, float]:
        """loss and every metric as means over the window's examples, reward stats and throughput."""
        dt = time.perf_counter() - self.start
        n = max(self.n, 1)
        return {"loss": self.loss / (self.units or 1), **{k: v / n for k, v in self.sums.items()},
                **reward_stats(torch.cat(self.rewards)), f"{unit}_per_s": self.n / dt, "tokens_per_s": self.tokens / dt,
                "padding_fraction": 1 - self.tokens / max(self.processed, 1)}


def load_tokenized(cfg: TrainRunConfig, encoder: SequenceEncoder, convert: Callable[[dict, Any, str], Any],
                   tokenize: Callable[[SequenceEncoder, list], list], what: str) -> ObjectiveData:
    """Every source's rows converted by `convert(row, columns, where)`, then tokenised by
    `tokenize(encoder, examples)`."""
    def load(spec: SourceSpec) -> tuple[list, LoadReport]:
        return load_examples(spec.path, lambda row, where: convert(row, spec.columns, where), split=spec.split,
                             on_error=cfg.data.on_error, max_samples=spec.max_samples)

    return load_sources(cfg, load, lambda examples, name: tokenize(encoder, examples), what)
