"""The scoring side of the server, without HTTP: models, their batching workers and the combination rule.

Per request: tokenise on the model's tokenizer thread (off the event loop), queue the sequences on the
model's batcher, await the raw rewards, then normalise, combine and clip on the event loop (cheap).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from rewardkit.data.tokenize import TokenizedSequence
from rewardkit.scoring import RewardScorer
from rewardkit.serve.batcher import BatchSettings, DynamicBatcher
from rewardkit.serve.combine import ModelsConfig, Rule
from rewardkit.serve.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and score post-processing of one server (the CLI flags of `rewardkit serve`)."""

    normalize: bool = False  # (raw - mean) / std from each model's config.json
    clip: float | None = None  # clamp the final reward to [-clip, clip]
    max_texts: int = 512  # texts per request; more -> 413
    max_body_bytes: int = 16 * 1024 * 1024  # request body; more -> 413
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer <key>`
    batch: BatchSettings = field(default_factory=BatchSettings)

    def __post_init__(self):
        if self.max_texts < 1 or self.max_body_bytes < 1:
            raise ValueError("max_texts and max_body_bytes must be positive")
        if self.max_texts > self.batch.max_queue:
            raise ValueError(f"max_texts ({self.max_texts}) must not exceed the queue size ({self.batch.max_queue}): "
                             "a request that big could never be queued")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be positive, got {self.clip}")


@dataclass
class Scored:
    """reward: (N,) final values; raw: (N,) the rule applied to raw model outputs; extra: per-text logs;
    tokens: how many tokens the models read (summed over models; vLLM-style `usage` reports it)."""

    reward: torch.Tensor
    raw: torch.Tensor
    extra: dict[str, list[float]]
    tokens: int = 0


@dataclass
class ServedModel:
    name: str
    scorer: RewardScorer
    normalize: bool
    batcher: DynamicBatcher
    tokenizer_thread: ThreadPoolExecutor  # one thread: tokenizers are not safe to share across threads


class RewardService:
    """Score texts with every model a rule needs; `start()` before use, `stop()` after."""

    def __init__(self, scorers: Mapping[str, RewardScorer], rule: Rule, settings: ServeSettings,
                 metrics: Metrics | None = None, normalize: Mapping[str, bool | None] | None = None):
        missing = [n for n in rule.model_names() if n not in scorers]
        if missing:
            raise ValueError(f"rule needs model(s) {', '.join(missing)}; loaded: {', '.join(scorers)}")
        self.rule, self.settings = rule, settings
        self.metrics = metrics or Metrics()
        self.models: dict[str, ServedModel] = {}
        for name, scorer in scorers.items():
            norm = (normalize or {}).get(name)
            self.models[name] = ServedModel(
                name, scorer, settings.normalize if norm is None else norm,
                DynamicBatcher(name, _runner(scorer, settings.batch.max_batch_size), settings.batch, self.metrics),
                ThreadPoolExecutor(1, thread_name_prefix=f"rewardkit-tok-{name}"))

    @classmethod
    def load(cls, cfg: ModelsConfig, settings: ServeSettings, *, device: str = "cpu", max_length: int | None = None,
             metrics: Metrics | None = None, bf16: bool = False) -> "RewardService":
        scorers = {}
        for name, spec in cfg.models.items():
            log.info("loading model %s from %s", name, spec.path)
            scorers[name] = RewardScorer.load(spec.path, device=device, batch_size=settings.batch.max_batch_size,
                                              max_length=spec.max_length or max_length, bf16=bf16)
        return cls(scorers, cfg.rule, settings, metrics, {n: s.normalize for n, s in cfg.models.items()})

    @property
    def temperature(self) -> float:
        """T of P(a ≻ b) for /v1/compare: the served model's calibrated temperature; 1.0 for a combination of
        models, whose combined reward no single calibration describes."""
        names = self.rule.model_names()
        return self.models[names[0]].scorer.temperature if len(names) == 1 else 1.0

    def start(self) -> None:
        for m in self.models.values():
            m.batcher.start()

    def stop(self) -> None:
        for m in self.models.values():
            m.batcher.stop()
            m.tokenizer_thread.shutdown(wait=False)

    async def score_full_texts(self, texts: Sequence[str], fields: Mapping[str, Sequence[Any]] | None = None,
                               normalize: bool | None = None) -> Scored:
        """Full prompt+response texts (OpenRLHF's queries)."""
        return await self._score(lambda s: [s.encode_text(t) for t in texts], len(texts), fields, normalize)

    async def score_pairs(self, prompts: Sequence[Any], responses: Sequence[Any],
                          fields: Mapping[str, Sequence[Any]] | None = None, normalize: bool | None = None) -> Scored:
        """(prompt, response) pairs; strings or chat messages (each model's chat template is applied)."""
        return await self._score(lambda s: [s.encode(p, r) for p, r in zip(prompts, responses)],
                                 len(prompts), fields, normalize)

    async def _score(self, encode: Callable[[RewardScorer], list[TokenizedSequence]], n: int,
                     fields: Mapping[str, Sequence[Any]] | None, normalize: bool | None) -> Scored:
        if n == 0:
            empty = torch.empty(0)
            return Scored(empty, empty, {})
        loop = asyncio.get_running_loop()
        names = self.rule.model_names()
        tokens = 0

        async def raw_of(m: ServedModel) -> torch.Tensor:
            nonlocal tokens
            seqs = await loop.run_in_executor(m.tokenizer_thread, encode, m.scorer)
            tokens += sum(len(s.input_ids) for s in seqs)
            return await m.batcher.submit(seqs)

        raws = dict(zip(names, await asyncio.gather(*(raw_of(self.models[name]) for name in names))))
        scores, extra = {}, {}
        for name, raw in raws.items():
            m = self.models[name]
            norm = m.normalize if normalize is None else normalize
            scores[name] = m.scorer.normalize(raw) if norm else raw
            extra[f"{name}_raw"] = raw.tolist()
            if norm:
                extra[f"{name}_normalized"] = scores[name].tolist()
        fields = fields or {}
        combined = self.rule.combine(scores, raws, fields)
        raw_combined = self.rule.combine(raws, raws, fields).reward
        reward = combined.reward
        if self.settings.clip is not None:
            reward = reward.clamp(-self.settings.clip, self.settings.clip)
        return Scored(reward, raw_combined, {**extra, **combined.extra}, tokens)


def _runner(scorer: RewardScorer, batch_size: int) -> Callable[[list[TokenizedSequence]], torch.Tensor]:
    # The batcher already bounds a batch by its own token budget: no second cap inside the forward.
    return lambda seqs: scorer.run(seqs, batch_size=batch_size, max_tokens=None).score
