"""The scoring side of the server, without HTTP: models, their batching workers and the combination rule.

Per request: tokenise on the model's tokenizer thread (off the event loop), queue the sequences on the
model's batcher, await the raw rewards, then normalise, combine and clip on the event loop (cheap).
Judges that do not expose token-level batching (`encode`/`encode_queries`/`run`: pairwise rankers, generative
judges, DPO and process rewards) run whole calls on that model's one worker thread instead; compare and rank
go to the judge itself when one such model is served, and kinds without per-text scores refuse the
score routes with `NoScores`.

Every text is cut to the served models' character limit before anything tokenises it (`scoring/limits.py`), and
`begin_drain` (SIGTERM) refuses new work and bounds how long queued work may still take.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2 import TemplateError

from rewardkit.data.tokenize import TokenizedSequence, split_queries
from rewardkit.scoring import Comparison, Judge, NoScores, Ranking, comparisons, load_judge, rank_scores
from rewardkit.serve.batcher import BatchSettings, DynamicBatcher, ShuttingDown
from rewardkit.serve.combine import ModelsConfig, Rule
from rewardkit.scoring.limits import cap_text, char_limit, model_max_length
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
    body_timeout: float = 30.0  # seconds to receive a whole request body; slower -> 408, connection closed
    header_timeout: float = 30.0  # seconds to receive a request's headers (guard.guarded_protocol)
    max_connections: int | None = None  # open connections; more -> 503 and closed (None: open-file limit - 64)
    drain_timeout: float = 30.0  # after SIGTERM: queued work may run this long, then 503; then exit
    batch: BatchSettings = field(default_factory=BatchSettings)

    def __post_init__(self):
        if self.max_texts < 1 or self.max_body_bytes < 1:
            raise ValueError("max_texts and max_body_bytes must be positive")
        if not (self.body_timeout > 0 and self.header_timeout > 0 and self.drain_timeout >= 0):
            raise ValueError(f"body_timeout and header_timeout must be > 0 and drain_timeout >= 0, got "
                             f"{self.body_timeout}, {self.header_timeout}, {self.drain_timeout}")
        if self.max_texts > self.batch.max_queue:
            raise ValueError(f"max_texts ({self.max_texts}) must not exceed the queue size ({self.batch.max_queue}): "
                             "a request that big could never be queued")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be positive, got {self.max_connections}")
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


class NotServable(ValueError):
    """A request the served model cannot answer (e.g. a full text for a kind that needs prompt and response)."""


class Unrenderable(ValueError):
    """Chat messages the model's chat template refuses (e.g. roles out of the order it insists on): a 422."""


def _rendered(fn: Callable[[], Any]) -> Any:
    """Run `fn` (it renders chat templates); a template's own refusal is the request's fault, not a 500."""
    try:
        return fn()
    except TemplateError as e:
        raise Unrenderable(f"the model's chat template cannot render these messages: {e}") from None


def batchable(judge: Judge) -> bool:
    """Whether `judge` exposes token-level batching (value-head models): requests then share forwards."""
    return all(callable(getattr(judge, a, None)) for a in ("encode", "encode_queries", "run"))


@dataclass
class ServedModel:
    name: str
    scorer: Judge
    normalize: bool
    batcher: DynamicBatcher | None  # None: whole calls on `tokenizer_thread`
    tokenizer_thread: ThreadPoolExecutor  # one thread: tokenizers (and unbatched judges) are not thread-safe


class RewardService:
    """Score texts with every model a rule needs; `start()` before use, `stop()` after."""

    def __init__(self, scorers: Mapping[str, Judge], rule: Rule, settings: ServeSettings,
                 metrics: Metrics | None = None, normalize: Mapping[str, bool | None] | None = None):
        missing = [n for n in rule.model_names() if n not in scorers]
        if missing:
            raise ValueError(f"rule needs model(s) {', '.join(missing)}; loaded: {', '.join(scorers)}")
        unscored = [n for n in rule.model_names() if not scorers[n].pointwise]
        if unscored and len(rule.model_names()) > 1:
            raise NoScores(scorers[unscored[0]].kind, f"a per-text reward to combine ({unscored[0]})")
        self.rule, self.settings = rule, settings
        self.metrics = metrics or Metrics()
        self.models: dict[str, ServedModel] = {}
        for name, scorer in scorers.items():
            norm = (normalize or {}).get(name)
            if (settings.normalize if norm is None else norm) and scorer.pointwise:
                scorer.normalize(torch.zeros(1))  # a saved std that cannot normalise fails here, not per request
            self.models[name] = ServedModel(
                name, scorer, settings.normalize if norm is None else norm,
                DynamicBatcher(name, _runner(scorer, settings.batch.max_batch_size), settings.batch, self.metrics)
                if batchable(scorer) else None,
                ThreadPoolExecutor(1, thread_name_prefix=f"rewardkit-tok-{name}"))
        # One limit for all: every text goes to every model of the rule.
        self.char_limit = max(char_limit(model_max_length(self.models[n].scorer)) for n in rule.model_names())
        self.draining = False

    @classmethod
    def load(cls, cfg: ModelsConfig, settings: ServeSettings, *, device: str = "cpu", max_length: int | None = None,
             metrics: Metrics | None = None, bf16: bool | None = False) -> "RewardService":
        """`bf16` None: each model in its training precision where the device has it natively (`rewardkit.precision`)."""
        scorers = {}
        for name, spec in cfg.models.items():
            log.info("loading model %s from %s", name, spec.path)
            scorers[name] = load_judge(spec.path, kind=spec.kind, options=spec.options, device=device,
                                       batch_size=settings.batch.max_batch_size,
                                       max_length=spec.max_length or max_length,
                                       bf16=bf16)
            log.info("model %s: %s forwards", name, "bf16 autocast" if scorers[name].bf16 else "fp32")
        return cls(scorers, cfg.rule, settings, metrics, {n: s.normalize for n, s in cfg.models.items()})

    @property
    def temperature(self) -> float:
        """T of P(a ≻ b) for /v1/compare: the served model's calibrated temperature; 1.0 for a combination of
        models, whose combined reward no single calibration describes."""
        names = self.rule.model_names()
        return self.models[names[0]].scorer.temperature if len(names) == 1 else 1.0

    def start(self) -> None:
        for m in self.models.values():
            if m.batcher is not None:
                m.batcher.start()

    def begin_drain(self, seconds: float) -> None:
        """SIGTERM: refuse new requests (503); work already queued may run `seconds` more, then gets 503."""
        self.draining = True
        for m in self.models.values():
            if m.batcher is not None:
                m.batcher.begin_drain(seconds)

    def _check_open(self) -> None:
        if self.draining:
            raise ShuttingDown("server shutting down: not taking new requests; retry (on another server)")

    def _capped(self, texts: Sequence[Any]) -> list[Any]:
        out, cut = [], 0
        for t in texts:
            t, c = cap_text(t, self.char_limit)
            out.append(t)
            cut += c
        if cut:
            self.metrics.count("texts_cut_total", f"Texts cut to {self.char_limit} characters before tokenising.", cut)
        return out

    def stop(self) -> None:
        for m in self.models.values():
            if m.batcher is not None:
                m.batcher.stop()
            m.tokenizer_thread.shutdown(wait=False)

    def _sole_unbatched(self) -> ServedModel | None:
        """The served model when the rule is one model that runs whole calls (its own compare / rank)."""
        names = self.rule.model_names()
        m = self.models[names[0]]
        return m if len(names) == 1 and m.batcher is None else None

    async def _call(self, m: ServedModel, fn: Callable[[], Any]) -> Any:
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(m.tokenizer_thread, _rendered, fn)

    async def compare(self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any],
                      fields: Mapping[str, Sequence[Any]] | None = None) -> list[Comparison]:
        """P(a ≻ b) per prompt at the served temperature: the judge's own compare for a sole unbatched model,
        else from the rule's raw rewards (one batched pass over a and b)."""
        prompts, a, b = self._capped(prompts), self._capped(a), self._capped(b)
        m = self._sole_unbatched()
        if m is not None:
            return await self._call(m, lambda: m.scorer.compare(prompts, a, b))
        n = len(prompts)
        raw = (await self.score_pairs(list(prompts) * 2, list(a) + list(b),
                                      {k: list(v) * 2 for k, v in (fields or {}).items()}, normalize=False)).raw
        return comparisons(raw[:n].double() - raw[n:].double(), self.temperature, raw[:n], raw[n:])

    async def rank(self, prompt: Any, candidates: Sequence[Any], fields: Mapping[str, Sequence[Any]] | None = None,
                   normalize: bool | None = None) -> tuple[Ranking, list[float] | None]:
        """Candidates best first, and their raw rewards (None for kinds that only compare)."""
        prompt, candidates = self._capped([prompt])[0], self._capped(candidates)
        m = self._sole_unbatched()
        if m is not None:
            norm = m.normalize if normalize is None else normalize
            ranking = await self._call(m, lambda: m.scorer.rank_many([prompt], [candidates], normalize=norm)[0])
            raw = (await self._call(m, lambda: m.scorer.score([prompt] * len(candidates), list(candidates)))
                   if norm else ranking.scores) if m.scorer.pointwise else None
            return ranking, raw
        scored = await self.score_pairs([prompt] * len(candidates), list(candidates), fields, normalize)
        return rank_scores(scored.reward.tolist(), scored.raw.tolist()), scored.raw.tolist()

    async def score_full_texts(self, texts: Sequence[str], fields: Mapping[str, Sequence[Any]] | None = None,
                               normalize: bool | None = None, prompts: Sequence[Any] | None = None) -> Scored:
        """Full prompt+response texts (OpenRLHF's queries). With `prompts` (OpenRLHF sends each query's),
        a text that starts with its prompt is read as that (prompt, response) pair, as training read it."""
        texts = self._capped(texts)

        def whole(j: Judge) -> torch.Tensor:  # batchable kinds split in `encode_queries` instead
            if not j.pointwise:
                raise NoScores(j.kind, "a reward per text")
            splits = split_queries(texts, prompts)
            if all(splits):  # the kinds that need the prompt apart can read the split pairs
                return torch.tensor(j.score([s[0] for s in splits], [s[1].rstrip() for s in splits]),
                                    dtype=torch.float32)
            raise NotServable(f"a {j.kind!r} model needs the prompt and the response apart; send each query's "
                              "prompt in `prompts` (the query must start with it), or send the pairs to "
                              "/v1/score (items) or /classify (messages) instead of full texts")

        return await self._score(lambda s: s.encode_queries(texts, prompts), len(texts), fields, normalize, whole)

    async def score_pairs(self, prompts: Sequence[Any], responses: Sequence[Any],
                          fields: Mapping[str, Sequence[Any]] | None = None, normalize: bool | None = None) -> Scored:
        """(prompt, response) pairs; strings or chat messages (each model's chat template is applied)."""
        prompts, responses = self._capped(prompts), self._capped(responses)

        def whole(j: Judge) -> torch.Tensor:
            return torch.tensor(j.score(prompts, responses), dtype=torch.float32)  # NoScores where it has none

        return await self._score(lambda s: [s.encode(p, r) for p, r in zip(prompts, responses)],
                                 len(prompts), fields, normalize, whole)

    async def _score(self, encode: Callable[[Any], list[TokenizedSequence]], n: int,
                     fields: Mapping[str, Sequence[Any]] | None, normalize: bool | None,
                     whole: Callable[[Judge], torch.Tensor]) -> Scored:
        if n == 0:
            empty = torch.empty(0)
            return Scored(empty, empty, {})
        self._check_open()
        loop = asyncio.get_running_loop()
        names = self.rule.model_names()
        tokens = 0

        async def raw_of(m: ServedModel) -> torch.Tensor:
            nonlocal tokens
            if m.batcher is None:
                return await loop.run_in_executor(m.tokenizer_thread, _rendered, lambda: whole(m.scorer))
            seqs = await loop.run_in_executor(m.tokenizer_thread, _rendered, lambda: encode(m.scorer))
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


def _runner(scorer: Any, batch_size: int) -> Callable[[list[TokenizedSequence]], torch.Tensor]:
    # The batcher already bounds a batch by its own token budget: no second cap inside the forward.
    return lambda seqs: scorer.run(seqs, batch_size=batch_size, max_tokens=None).score
