"""`loss=judge`: fine-tune a language model as a generative judge on preference pairs.

Each pair is shown in both orders (chosen as A, then chosen as B) with the judge prompt of
`scoring.judge_prompt` (default template), and the loss is the cross-entropy of the right label over the label
tokens only (`losses.judge_ce`), at the answer position. With `model.lora.r > 0` only a LoRA adapter trains
(peft). The output folder is a judge: `load_judge(out)` gives a `GenerativeJudge` back, with the template saved.
Metrics: accuracy and margin of the averaged-order verdict, (d(c, r) − d(r, c)) / 2 > 0, as at inference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rewardkit.batches import JudgeBatch, StepOutput
from rewardkit.config import ConfigError, TrainRunConfig
from rewardkit.data.collators import pad_sequences
from rewardkit.data.mixing import SourceSpec
from rewardkit.data.pairs import PreferenceExample, load_preferences
from rewardkit.data.readers import LoadReport
from rewardkit.data.tokenize import SequenceEncoder, TokenizedSequence
from rewardkit.losses import judge_ce
from rewardkit.metrics import reward_stats
from rewardkit.models.causal_lm import pad_id
from rewardkit.models.judge_lm import JudgeLM
from rewardkit.models.lora import LoraSpec
from rewardkit.objectives.base import BaseObjective, ObjectiveData, load_sources, no_margins
from rewardkit.scoring.judge_prompt import LABELS, JudgePrompt


@dataclass(frozen=True)
class JudgeItem:
    """One pair as two judge prompts: (chosen as A, rejected as B) and (rejected as A, chosen as B)."""

    sequences: tuple[TokenizedSequence, TokenizedSequence]

    @property
    def truncated(self) -> bool:
        return any(s.truncated for s in self.sequences)


@dataclass
class JudgeCollator:
    """`list[JudgeItem]` (B) -> `JudgeBatch` of 2B left-padded prompts: every first order, then every second."""

    pad_id: int

    def __call__(self, items: list[JudgeItem]) -> JudgeBatch:
        seqs = [it.sequences[0] for it in items] + [it.sequences[1] for it in items]
        answers = torch.tensor([0] * len(items) + [1] * len(items), dtype=torch.long)
        return JudgeBatch(pad_sequences(seqs, self.pad_id, "left"), answers)


def pair_margins(scores: torch.Tensor) -> torch.Tensor:
    """(B,) verdicts for chosen ≻ rejected from the (2B, 2) label scores of a `JudgeBatch`."""
    d = scores[:, 0] - scores[:, 1]
    first, second = d.chunk(2)
    return (first - second) / 2


class JudgeObjective(BaseObjective):
    """The label token's cross-entropy on both orders of each pair (see the module docstring)."""

    unit, metric = "pairs", "accuracy"
    model_kind = "generative"

    def __init__(self, name: str, cfg: TrainRunConfig):
        self.name = name
        self.prompt: JudgePrompt | None = None
        self.pad_id = 0  # a filler where the tokenizer has no pad token (padding is masked)

    def build_model(self, cfg: TrainRunConfig) -> tuple[JudgeLM, Any]:
        m = cfg.model
        if m.quantization != "none":
            raise ConfigError("loss=judge trains in full precision: model.quantization is not supported")
        if m.readout is not None:
            raise ConfigError("loss=judge reads the next-token logits: model.readout does not apply")
        lora = LoraSpec(m.lora.r, m.lora.alpha, m.lora.dropout, list(m.lora.target_modules)) if m.lora.r else None
        torch.manual_seed(cfg.seed)  # LoRA's initialisation
        model, tok = JudgeLM.from_pretrained(m.path, gguf_file=m.gguf_file, tokenizer=m.tokenizer,
                                             trust_remote_code=m.trust_remote_code, lora=lora)
        self.prompt = JudgePrompt(tok, model.judge_info.get("template"), cfg.data.max_length)
        model.judge_info = {"template": self.prompt.template, "labels": list(LABELS)}
        self.pad_id = pad_id(tok)
        return model, tok

    def _items(self, examples: list[PreferenceExample]) -> list[JudgeItem]:
        p = self.prompt
        return [JudgeItem((p.encode(e.prompt, e.chosen, e.rejected), p.encode(e.prompt, e.rejected, e.chosen)))
                for e in examples]

    def load_data(self, cfg: TrainRunConfig, encoder: SequenceEncoder) -> ObjectiveData:
        """Preference pairs of every source of `data.train` (and `data.eval` / `data.eval_size`), as judge prompts."""
        d = cfg.data
        if self.prompt is None:
            self.prompt = JudgePrompt(encoder.tok, None, d.max_length)

        def load(spec: SourceSpec) -> tuple[list, LoadReport]:
            return no_margins(load_preferences(spec.path, fmt=spec.format, columns=spec.columns, on_error=d.on_error,
                                               split=spec.split, max_samples=spec.max_samples), spec, "judge")

        return load_sources(cfg, load, lambda examples, name: self._items(examples), "pairs")

    def collator(self, pad_id: int) -> Callable[[list], Any]:
        return JudgeCollator(self.pad_id if pad_id is None else pad_id)

    def compute(self, model: JudgeLM, batch: JudgeBatch) -> StepOutput:
        scores = model.label_scores(batch.sequences, self.prompt.labels)  # (2B, 2)
        loss = judge_ce(scores, batch.answers).mean()
        margin = pair_margins(scores.detach())
        return StepOutput(loss, margin, margin.numel(),
                          {"accuracy": float((margin > 0).sum()), "margin_mean": float(margin.sum())})

    @torch.no_grad()
    def evaluate(self, model: JudgeLM, items: list, *, pad_id: int, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        """accuracy (a tie counts as wrong), loss, margin_mean, n, and the margins' mean/std (what the loop
        reads as reward statistics; a judge saves none)."""
        was_training = model.training
        model.eval()
        collate = self.collator(pad_id)
        margins, loss = [], 0.0
        order = sorted(range(len(items)), key=lambda i: len(items[i].sequences[0].input_ids))
        for s in range(0, len(order), batch_size):
            chunk = [items[i] for i in order[s:s + batch_size]]
            batch = collate(chunk).to(device)
            scores = model.label_scores(batch.sequences, self.prompt.labels)
            loss += float(judge_ce(scores, batch.answers).sum())
            margins.append(pair_margins(scores).cpu())
        model.train(was_training)
        m = torch.cat(margins).double() if margins else torch.zeros(0, dtype=torch.float64)
        n = len(items)
        return {"accuracy": float((m > 0).double().mean()) if n else float("nan"), "n": n,
                "loss": loss / (2 * n) if n else float("nan"), "margin_mean": float(m.mean()) if n else float("nan"),
                **reward_stats(m)}
