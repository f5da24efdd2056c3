"""Request and response bodies of the reward server (module-level pydantic models)."""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChatMessage(BaseModel):
    role: str
    content: str


Text = Union[str, list[ChatMessage]]  # a plain string, or chat messages (the server applies the template)


def as_text(t: Text) -> str | list[dict[str, str]]:
    """Pydantic messages -> the plain dicts `rewardkit.data.tokenize.render` takes."""
    return t if isinstance(t, str) else [m.model_dump() for m in t]


# --------------------------------------------------------------------------- OpenRLHF remote RM

class GetRewardRequest(BaseModel):
    """OpenRLHF's `--reward.remote_url` body. Only `query` is needed; other keys are kept as per-text fields
    (a combination rule may read one, e.g. `is_safety`)."""

    model_config = ConfigDict(extra="allow")

    query: list[str] = Field(description="full prompt+response texts as the PPO side decodes them")
    prompts: list[Any] | None = None
    labels: list[Any] | None = None

    def fields(self) -> dict[str, list[Any]]:
        out = {k: v for k, v in (self.model_extra or {}).items() if isinstance(v, list)}
        out.update({k: v for k, v in (("prompts", self.prompts), ("labels", self.labels)) if v is not None})
        return out


class GetRewardResponse(BaseModel):
    rewards: list[float]  # the reward PPO uses (normalised and clipped when enabled)
    scores: list[float]  # OpenRLHF filters on these; the same values as `rewards`
    extra_logs: dict[str, list[float]]  # raw and per-model scores, one value per query


# --------------------------------------------------------------------------- /v1 API

class ScoreItem(BaseModel):
    """A (prompt, response) pair, or a whole chat in `messages` whose last message is the response."""

    model_config = ConfigDict(extra="allow")

    prompt: Text = ""
    response: Text | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "ScoreItem":
        if (self.response is None) == (self.messages is None):
            raise ValueError("give either `response` (with an optional `prompt`) or `messages`")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` must hold at least the response message")
        return self

    def pair(self) -> tuple[str | list[dict[str, str]], str | list[dict[str, str]]]:
        if self.messages is not None:
            msgs = [m.model_dump() for m in self.messages]
            return msgs[:-1], msgs[-1:]
        return as_text(self.prompt), as_text(self.response)


class ScoreRequest(BaseModel):
    items: list[ScoreItem]
    normalize: bool | None = None  # None: the server's setting


class ScoreResponse(BaseModel):
    scores: list[float]  # after normalisation/combination and clipping
    raw_scores: list[float]  # the model's output (the rule applied to raw outputs with several models)
    components: dict[str, list[float]]  # per-model scores


class CompareItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: Text = ""
    a: Text
    b: Text


class CompareRequest(BaseModel):
    items: list[CompareItem]


class CompareResponse(BaseModel):
    prob_a_better: list[float]  # sigmoid((raw_a - raw_b) / temperature), as RewardScorer.compare
    raw_scores_a: list[float]
    raw_scores_b: list[float]
    temperature: float = 1.0  # the served model's calibrated T (1.0 when unfitted or several models)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: Text = ""
    candidates: list[Text] = Field(min_length=1)
    normalize: bool | None = None


class RankResponse(BaseModel):
    scores: list[float]  # in candidate order
    raw_scores: list[float]
    order: list[int]  # candidate indices, best first (ties keep input order)
    best: int


class HealthResponse(BaseModel):
    status: str
    models: list[str]
