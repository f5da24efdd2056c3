"""What every consumer of a trained preference model talks to: the `Judge` protocol and its results.

Every kind (value-head reward models, pairwise rankers, generative judges, implicit DPO rewards, process
reward models) answers `compare` and `rank`; kinds that give each response a number (`pointwise`) also
answer `score` / `score_details`, the others raise `NoScores` saying what to call instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from rewardkit.data.fields import Text, api_text, list_arg
from rewardkit.metrics import check_temperature, preference_prob
from rewardkit.scoring.limits import cap_text, char_limit, model_max_length


class UnscorableResponse(ValueError):
    """A response this judge cannot read at all (a process reward model's response with no step): the
    request's fault, a 400 from the server, exit 2 from the CLI."""


class NoScores(ValueError):
    """Raised where a consumer needs a number per response from a kind that only compares responses."""

    def __init__(self, kind: str, need: str = "a score per response"):
        super().__init__(f"this {kind!r} model compares responses and gives no score of its own, but {need} was "
                         "asked for; use compare or rank (rewardkit eval / rank / make-pairs, /v1/compare, "
                         "/v1/rank), or a pointwise model")


@dataclass(frozen=True)
class Comparison:
    """Two responses to one prompt: P(a ≻ b) = sigmoid(margin / temperature), margin the log-odds at T=1.
    Pointwise kinds also give both rewards (then margin = reward_a − reward_b); pairwise kinds give None."""

    reward_a: float | None
    reward_b: float | None
    prob_a_better: float
    temperature: float
    margin: float


@dataclass(frozen=True)
class Ranking:
    """N candidates for one prompt: their scores, indices best first (ties keep input order), the best.
    Pairwise kinds' scores are mean log-odds wins (`rank.strategy=matrix`) or rounds won (`knockout`)."""

    scores: list[float]
    order: list[int]
    best: int


@dataclass
class ScoreDetails:
    """Everything a scoring pass knows per (prompt, response), (N,) each: raw rewards, response tokens the
    model saw (after truncation, incl. the end token), whether it was truncated, and the head's published
    extras (e.g. a multi-objective model's attributes and gate, (N, A)) with their column names."""

    rewards: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """Per item: {"score": raw reward, <extra>: {name: value}, ...}."""
        out = [{"score": r} for r in self.rewards.tolist()]
        for key, t in self.extras.items():
            for row, values in zip(out, t.tolist()):
                row[key] = dict(zip(self.names[key], values))
        return out


@runtime_checkable
class Judge(Protocol):
    """What every consumer of a trained preference model calls (eval, calibrate, apps, server)."""

    kind: str  # the saved `rewardkit.kind`, or how the folder was read ("generative", "dpo")
    pointwise: bool  # score / score_details / normalize give a number per response; False: they raise NoScores
    temperature: float  # T of P(a ≻ b), calibrated by `rewardkit calibrate` (1.0 when unfitted)
    bf16: bool  # forwards under bf16 autocast (`rewardkit.precision`); False: fp32

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> list[float]: ...

    def score_details(self, prompts: Sequence[Text], responses: Sequence[Text]) -> ScoreDetails: ...

    def normalize(self, raw: torch.Tensor) -> torch.Tensor: ...

    def compare(self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text], *,
                temperature: float | None = None) -> list[Comparison]: ...

    def rank(self, prompt: Text, candidates: Sequence[Text], *, normalize: bool = False) -> Ranking: ...

    def rank_many(self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]], *,
                  normalize: bool = False) -> list[Ranking]: ...


Scorer = Judge  # the name of earlier versions


def rank_scores(scores: Sequence[float], tiebreak: Sequence[float] | None = None) -> Ranking:
    """Indices best first: by score, then `tiebreak` (e.g. raw scores), then input order."""
    tb = tiebreak if tiebreak is not None else scores
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], -tb[i]))
    return Ranking(list(scores), order, order[0])


def response_lengths(judge: Any, responses: Sequence[Text]) -> torch.Tensor:
    """Response lengths (N,) in `judge.tokenizer`'s tokens, or in words where it has none."""
    tok = getattr(judge, "tokenizer", None)
    limit = char_limit(model_max_length(judge))  # a 50 MB response is counted from its capped text

    def text(r: Text) -> str:
        return cap_text(r if isinstance(r, str) else "\n".join(str(m.get("content", "")) for m in r), limit)[0]

    count = ((lambda s: len(tok(s, add_special_tokens=False)["input_ids"])) if tok is not None
             else (lambda s: len(s.split())))
    return torch.tensor([count(text(r)) for r in responses], dtype=torch.long)


def texts(value: Any, name: str) -> list[Text]:
    """The Python API's list arguments: one prompt or response per item, each a string or chat messages
    (`fields.api_text`) or a list of step strings. A lone string is refused: iterated, it would score one
    character per item."""
    value = list_arg(value, name, "a list with one text per item")
    # a list of strings is a process reward model's explicit steps: the judge that reads it checks it
    return [v if isinstance(v, list) and all(isinstance(x, str) for x in v) and v else api_text(v, f"{name}[{i}]")
            for i, v in enumerate(value)]


def plain_texts(value: Any, name: str) -> list[str]:
    """A list of full texts (strings only), refusing a lone string as `texts` does."""
    value = list_arg(value, name, "a list of strings")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}]: expected a string, got {type(v).__name__}")
    return value


def _check_triples(prompts: Sequence[Text], a: Sequence[Text], b: Sequence[Text],
                   ) -> tuple[list[Text], list[Text], list[Text]]:
    prompts, a, b = texts(prompts, "prompts"), texts(a, "responses_a"), texts(b, "responses_b")
    if not len(a) == len(b) == len(prompts):
        raise ValueError(f"got {len(prompts)} prompts, {len(a)} responses_a and {len(b)} responses_b")
    return prompts, a, b


def _check_lists(prompts: Sequence[Text], candidates: Sequence[Sequence[Text]],
                 ) -> tuple[list[Text], list[list[Text]]]:
    prompts = texts(prompts, "prompts")
    candidates = [texts(c, f"candidates[{k}]")
                  for k, c in enumerate(list_arg(candidates, "candidates", "one list of candidates per prompt"))]
    if len(prompts) != len(candidates):
        raise ValueError(f"got {len(prompts)} prompts but {len(candidates)} candidate lists")
    if any(len(c) == 0 for c in candidates):
        raise ValueError("rank needs at least one candidate per prompt")
    return prompts, candidates


def check_pairs(prompts: Sequence[Text], responses: Sequence[Text]) -> tuple[list[Text], list[Text]]:
    """`prompts` and `responses` checked (`texts`) and of one length."""
    prompts, responses = texts(prompts, "prompts"), texts(responses, "responses")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    return prompts, responses


def comparisons(margins: torch.Tensor, temperature: float, rewards_a: torch.Tensor | None = None,
                rewards_b: torch.Tensor | None = None) -> list[Comparison]:
    """Comparisons from log-odds margins (N,) at T=1 and, for pointwise kinds, both rewards (N,) each."""
    t = check_temperature(temperature)
    m = margins.double()
    p = preference_prob(m, t).tolist()
    ra = rewards_a.tolist() if rewards_a is not None else [None] * len(p)
    rb = rewards_b.tolist() if rewards_b is not None else [None] * len(p)
    return [Comparison(x, y, q, t, d) for x, y, q, d in zip(ra, rb, p, m.tolist())]


class PointwiseJudge:
    """Base of kinds that give each response a number: `compare` and `rank` follow from `score_texts`.
    Subclasses set `kind` and implement `score_texts(prompts, responses, *, normalize) -> (N,)`,
    `score_details` and `normalize`."""

    kind = "pointwise"
    pointwise = True
    temperature = 1.0
    bf16 = False  # subclasses that run a model set it from their `bf16` setting

    def score_texts(self, prompts: Sequence[Text], responses: Sequence[Text], *,
                    normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> list[float]:
        """Rewards as floats, one per (prompt, response)."""
        return self.score_texts(*check_pairs(prompts, responses), normalize=normalize).tolist()

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Identity: a kind without saved reward statistics has nothing to normalise with."""
        return raw

    def score_details(self, prompts: Sequence[Text], responses: Sequence[Text]) -> ScoreDetails:
        """Rewards (N,), response lengths in the judge's tokens (N,) and no truncation flags; kinds that know
        more (what they cut, extras) override this."""
        return ScoreDetails(self.score_texts(prompts, responses).double(), response_lengths(self, responses),
                            torch.zeros(len(responses), dtype=torch.bool))

    def compare(self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text], *,
                temperature: float | None = None) -> list[Comparison]:
        """For each prompt, P(a ≻ b) = sigmoid((r_a − r_b) / T); T defaults to the model's (one scoring pass)."""
        prompts, responses_a, responses_b = _check_triples(prompts, responses_a, responses_b)
        n = len(prompts)
        r = self.score_texts(prompts * 2, responses_a + responses_b).double()  # (2n,)
        t = self.temperature if temperature is None else temperature
        return comparisons(r[:n] - r[n:], t, r[:n], r[n:])

    def prob_better(self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text], *,
                    temperature: float | None = None) -> list[float]:
        """P(a ≻ b) per prompt, as `compare(...)[i].prob_a_better`."""
        return [c.prob_a_better for c in self.compare(prompts, responses_a, responses_b, temperature=temperature)]

    def rank(self, prompt: Text, candidates: Sequence[Text], *, normalize: bool = False) -> Ranking:
        """Candidates for one prompt, best first (one scoring pass; ties keep input order)."""
        return self.rank_many([api_text(prompt, "prompt")], [texts(candidates, "candidates")], normalize=normalize)[0]

    def rank_many(self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]], *,
                  normalize: bool = False) -> list[Ranking]:
        """`rank` for many prompts at once: one scoring pass over every candidate of every prompt."""
        prompts, candidates = _check_lists(prompts, candidates)
        flat = self.score([p for p, c in zip(prompts, candidates) for _ in c], [x for c in candidates for x in c],
                          normalize=normalize)
        out, start = [], 0
        for c in candidates:
            out.append(rank_scores(flat[start:start + len(c)]))
            start += len(c)
        return out


RANK_STRATEGIES = ("matrix", "knockout")


class PairwiseJudge:
    """Base of kinds that read both responses at once (pairwise rankers, generative judges): subclasses set
    `kind` and implement `margins`; `compare` and `rank` follow, and per-response scores raise `NoScores`."""

    kind = "pairwise"
    pointwise = False
    temperature = 1.0
    bf16 = False
    rank_strategy = "matrix"

    def margins(self, prompts: Sequence[Text], responses_a: Sequence[Text],
                responses_b: Sequence[Text]) -> torch.Tensor:
        """(N,) log-odds of a ≻ b at T=1, antisymmetric: margins(p, a, b) == −margins(p, b, a) exactly."""
        raise NotImplementedError

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False) -> list[float]:
        raise NoScores(self.kind)

    def score_details(self, prompts: Sequence[Text], responses: Sequence[Text]) -> ScoreDetails:
        raise NoScores(self.kind)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        raise NoScores(self.kind, "a normalised score")

    def compare(self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text], *,
                temperature: float | None = None) -> list[Comparison]:
        """For each prompt, P(a ≻ b) = sigmoid(margin / T); T defaults to the model's."""
        prompts, responses_a, responses_b = _check_triples(prompts, responses_a, responses_b)
        m = self.margins(prompts, responses_a, responses_b)
        return comparisons(m, self.temperature if temperature is None else temperature)

    def prob_better(self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text], *,
                    temperature: float | None = None) -> list[float]:
        return [c.prob_a_better for c in self.compare(prompts, responses_a, responses_b, temperature=temperature)]

    def rank(self, prompt: Text, candidates: Sequence[Text], *, normalize: bool = False,
             strategy: str | None = None) -> Ranking:
        """Candidates best first. matrix: every pair judged once (N(N−1)/2), score_i = mean_j (P[i,j] − P[j,i]);
        knockout: single elimination, N − 1 judgements, score = rounds won (a bye counts as won)."""
        return self.rank_many([api_text(prompt, "prompt")], [texts(candidates, "candidates")], strategy=strategy)[0]

    def rank_many(self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]], *, normalize: bool = False,
                  strategy: str | None = None) -> list[Ranking]:
        """`rank` for many prompts, the judgements of every prompt in one `margins` call (one per knockout
        round). `normalize` is refused: rank scores have no saved statistics."""
        if normalize:
            raise NoScores(self.kind, "a normalised score")
        strategy = strategy or self.rank_strategy
        if strategy not in RANK_STRATEGIES:
            raise ValueError(f"unknown rank strategy {strategy!r}; choose from {', '.join(RANK_STRATEGIES)}")
        prompts, candidates = _check_lists(prompts, candidates)
        if strategy == "matrix":  # P[i,j] − P[j,i] = 2σ(m) − 1 = tanh(m / 2): exactly antisymmetric
            jobs = [(k, i, j) for k, c in enumerate(candidates) for i in range(len(c)) for j in range(i + 1, len(c))]
            m = self._judge(prompts, candidates, jobs)
            net = [torch.zeros(len(c), len(c), dtype=torch.float64) for c in candidates]
            for (k, i, j), x in zip(jobs, torch.tanh(m / 2).tolist()):
                net[k][i, j], net[k][j, i] = x, -x
            return [rank_scores((w.sum(1) / max(1, len(w) - 1)).tolist()) for w in net]
        rounds = [[0.0] * len(c) for c in candidates]
        alive = [list(range(len(c))) for c in candidates]
        while any(len(a) > 1 for a in alive):
            jobs = [(k, i, j) for k, a in enumerate(alive) for i, j in zip(a[0::2], a[1::2])]
            m = self._judge(prompts, candidates, jobs).tolist()
            won: list[list[int]] = [[] for _ in candidates]
            for (k, i, j), x in zip(jobs, m):
                won[k].append(i if x >= 0 else j)  # a tie: the first
            for k, a in enumerate(alive):
                if len(a) > 1:
                    alive[k] = won[k] + a[len(won[k]) * 2:]  # the odd one out has a bye
                    for i in alive[k]:
                        rounds[k][i] += 1
        return [rank_scores(r) for r in rounds]

    def _judge(self, prompts: Sequence[Text], candidates: Sequence[Sequence[Text]],
               jobs: list[tuple[int, int, int]]) -> torch.Tensor:
        """Margins (len(jobs),) of candidates[k][i] over candidates[k][j] for each job (k, i, j)."""
        if not jobs:
            return torch.zeros(0, dtype=torch.float64)
        return self.margins([prompts[k] for k, _, _ in jobs], [candidates[k][i] for k, i, _ in jobs],
                            [candidates[k][j] for k, _, j in jobs]).double()
