"""What every objective family provides to the training loop, and the pieces they share.

train.py runs ONE loop for every loss; what differs per family sits behind `Objective`:
  build_model -> load_data (tokenised items) -> collator (items -> named batch) -> prepare (once, before
  the loop) -> compute (batch -> loss and metric sums) -> evaluate (items -> metrics, incl. reward stats).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from rewardkit.batches import StepOutput
from rewardkit.config import DataConfig, TrainRunConfig
from rewardkit.data.readers import load_examples
from rewardkit.data.tokenize import SequenceEncoder
from rewardkit.metrics import reward_stats
from rewardkit.models.reward_model import RewardModel

log = logging.getLogger(__name__)


@dataclass
class ObjectiveData:
    """Tokenised training and held-out items (pairs, rankings, points...)."""

    train: list
    eval: list


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
        m = cfg.model
        return RewardModel.from_pretrained(m.path, kind=self.model_kind, gguf_file=m.gguf_file, tokenizer=m.tokenizer,
                                           readout=m.readout, trust_remote_code=m.trust_remote_code, seed=cfg.seed)

    def prepare(self, model: RewardModel, train: list, *, pad_id: int, batch_size: int,
                device: torch.device | str) -> None:
        model.objective_info = {"loss": self.name}  # saved in config.json (rewardkit.objective)


def hold_out(train: list, d: DataConfig, what: str) -> tuple[list, list]:
    """Split `data.eval_size` examples (a count >= 1 or a fraction < 1) off the END of `train`."""
    if d.eval_size <= 0:
        return train, []
    n = int(d.eval_size) if d.eval_size >= 1 else max(1, int(len(train) * d.eval_size))
    if n >= len(train):
        raise ValueError(f"data.eval_size={d.eval_size} leaves no training {what} (have {len(train)})")
    return train[:-n], train[-n:]


def load_split(cfg: TrainRunConfig, convert: Callable[[dict, str], Any], what: str) -> tuple[list, list]:
    """`data.train` rows converted with `convert(row, where)`, and the held-out rows: `data.eval`, or
    `data.eval_size` split off the end of the training rows."""
    d = cfg.data
    load = functools.partial(load_examples, convert=convert, on_error=d.on_error, split=d.split)
    train, _ = load(d.train, max_samples=d.max_samples)
    if d.eval:
        return train, load(d.eval)[0]
    return hold_out(train, d, what)


class StepWindow:
    """Sums of training metrics between two log rows."""

    def __init__(self) -> None:
        self.loss, self.n, self.tokens, self.processed = 0.0, 0, 0, 0
        self.sums: dict[str, float] = {}
        self.rewards: list[torch.Tensor] = []
        self.start = time.perf_counter()

    def add(self, out: StepOutput, tokens: int, processed: int | None = None) -> None:
        """tokens: real tokens of the batch; processed: tokens the forward computed (with padding)."""
        self.loss += float(out.loss.detach()) * out.n
        self.n += out.n
        self.tokens += tokens
        self.processed += processed if processed is not None else tokens
        for k, v in out.sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.rewards.append(out.rewards.detach().float().cpu())

    def row(self, unit: str) -> dict[str, float]:
        """loss and every metric as means over the window's examples, reward stats and throughput."""
        dt = time.perf_counter() - self.start
        n = max(self.n, 1)
        return {"loss": self.loss / n, **{k: v / n for k, v in self.sums.items()},
                **reward_stats(torch.cat(self.rewards)), f"{unit}_per_s": self.n / dt, "tokens_per_s": self.tokens / dt,
                "padding_fraction": 1 - self.tokens / max(self.processed, 1)}


def load_tokenized(cfg: TrainRunConfig, encoder: SequenceEncoder, convert: Callable[[dict, Any, str], Any],
                   tokenize: Callable[[SequenceEncoder, list], list], what: str) -> ObjectiveData:
    """`load_split` rows converted by `convert(row, data.columns, where)`, then tokenised by
    `tokenize(encoder, examples)`."""
    cols = cfg.data.columns
    train, held = load_split(cfg, lambda row, where: convert(row, cols, where), what)
    return ObjectiveData(tokenize(encoder, train), tokenize(encoder, held))
