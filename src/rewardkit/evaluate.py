"""Pairwise evaluation of a reward model on preference data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rewardkit.data.formats import Columns, PreferenceExample, load_preferences
from rewardkit.data.tokenize import TokenizedPair
from rewardkit.io import write_jsonl
from rewardkit.metrics import pairwise_stats
from rewardkit.scoring import RewardScorer, score_sequences


@dataclass
class EvalConfig:
    """`rewardkit eval`: one saved model on one preference file."""

    model_dir: str
    data: str
    output: str | None = None  # per-pair scores (.jsonl)
    format: str = "auto"
    columns: Columns = field(default_factory=Columns)
    split: str = "train"
    on_error: str = "raise"
    batch_size: int = 32
    max_length: int | None = None
    max_samples: int | None = None
    device: str = "cpu"


def pair_rewards(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, pad_id: int, batch_size: int = 32,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) raw rewards, each (B,), for tokenised pairs."""
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    r = score_sequences(model, seqs, pad_id=pad_id, batch_size=batch_size, device=device)
    return r[:len(pairs)], r[len(pairs):]


def evaluate(cfg: EvalConfig) -> dict[str, float]:
    """Score every pair in `cfg.data`; return accuracy and reward statistics (see `pairwise_stats`)."""
    scorer = RewardScorer.load(cfg.model_dir, device=cfg.device, batch_size=cfg.batch_size, max_length=cfg.max_length)
    examples, report = load_preferences(cfg.data, fmt=cfg.format, columns=cfg.columns, on_error=cfg.on_error,
                                        split=cfg.split, max_samples=cfg.max_samples)
    pairs = [scorer.encoder.encode_pair(ex) for ex in examples]
    chosen, rejected = pair_rewards(scorer.model, pairs, pad_id=scorer.tokenizer.pad_token_id,
                                    batch_size=cfg.batch_size, device=cfg.device)
    stats = pairwise_stats(chosen, rejected)
    stats["skipped_rows"] = report.skipped
    stats["truncated_pairs"] = sum(p.truncated for p in pairs)
    if cfg.output:
        write_jsonl(cfg.output, _score_rows(examples, chosen, rejected))
    return stats


def _score_rows(examples: list[PreferenceExample], chosen: torch.Tensor, rejected: torch.Tensor):
    for ex, c, r in zip(examples, chosen.tolist(), rejected.tolist()):
        yield {"source": ex.source, "chosen_reward": c, "rejected_reward": r, "margin": c - r, "correct": c > r}
