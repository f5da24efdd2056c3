"""Request and response bodies of the reward server (module-level pydantic models)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from rewardkit.data.fields import CHAT_ROLES, join_text_parts

Role = Literal[CHAT_ROLES]  # the roles chat templates know; others are 422 (as in data files)
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(v: Any) -> Any:
    """Refuse a string (or a list's strings) holding a lone UTF-16 surrogate: valid JSON ("\\ud800"), but
    no tokenizer can read it (it raised TypeError: a 500). Every text field of every route passes here."""
    for i, s in enumerate([v] if isinstance(v, str) else v if isinstance(v, list) else []):
        if isinstance(s, str) and not s.isascii() and (m := _SURROGATE.search(s)):  # isascii: O(1) fast path
            which = f"text {i}" if isinstance(v, list) else "text"
            raise ValueError(f"{which} contains a lone surrogate (\\u{ord(m.group()):04x}) at character {m.start()}; "
                             "send valid Unicode (UTF-16 surrogates only in pairs)")
    return v


# Unions are checked once, after the union: a check inside each branch would report every branch's error.
UText = Annotated[str, AfterValidator(valid_unicode)]
UTexts = Annotated[Union[str, list[str], None], AfterValidator(valid_unicode)]  # one text or a list, vLLM-style


class ChatMessage(BaseModel):
    role: Role
    content: UText


# A plain string, or chat messages (the server applies the template); an empty list has nothing to render
# (send "" for no prompt).
Text = Annotated[Union[str, Annotated[list[ChatMessage], Field(min_length=1)]], AfterValidator(valid_unicode)]


def as_text(t: Text) -> str | list[dict[str, str]]:
    """Pydantic messages -> the plain dicts `rewardkit.data.tokenize.render` takes."""
    return t if isinstance(t, str) else [m.model_dump() for m in t]


# --------------------------------------------------------------------------- OpenRLHF remote RM

class GetRewardRequest(BaseModel):
    """OpenRLHF's `--reward.remote_url` body. Only `query` is needed; other keys are kept as per-text fields
    (a combination rule may read one, e.g. `is_safety`)."""

    model_config = ConfigDict(extra="allow")

    query: list[UText] = Field(description="full prompt+response texts as the PPO side decodes them")
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
    prob_a_better: list[float]  # sigmoid(margin / temperature), as Judge.compare (margin = raw_a - raw_b)
    raw_scores_a: list[float] | None  # None: the model compares without a score per text
    raw_scores_b: list[float] | None
    margins: list[float] | None = None  # log-odds of a over b at T=1
    temperature: float = 1.0  # the served model's calibrated T (1.0 when unfitted or several models)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: Text = ""
    candidates: list[Text] = Field(min_length=1)
    normalize: bool | None = None


class RankResponse(BaseModel):
    scores: list[float]  # in candidate order (rank scores for models that only compare)
    raw_scores: list[float] | None
    order: list[int]  # candidate indices, best first (ties keep input order)
    best: int


class ErrorResponse(BaseModel):
    """Every error answer (400, 401, 408, 413, 422, 503): one sentence naming the field or the limit. A 422
    joins its problems as `field.path: message; ...` and never echoes the submitted input."""

    detail: str


class HealthResponse(BaseModel):
    status: str
    models: list[str]
    precision: dict[str, str] = {}  # model name -> "bf16" or "fp32" (what `scoring.bf16` resolved to)


# --------------------------------------------------------------------------- vLLM's pooling API
# Field names and shapes as vLLM's `--runner pooling` server documents them, so clients written for it
# (verl's reward loop, NeMo-RL) work unchanged. Unknown vLLM options (add_special_tokens, priority, user,
# truncate_prompt_tokens, ...) are accepted and ignored: rewardkit always lays text out as the model was
# trained (see README); extra list fields with one value per text reach combination rules as fields.

class VllmMessage(BaseModel):
    """A chat message whose content is a string or OpenAI-style parts; only text parts can be scored."""

    role: Role
    content: UText

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, v: Any) -> Any:
        return join_text_parts(v, "content") if isinstance(v, list) else v


class _Activation(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: UText | None = None  # echoed back; the server answers with its one reward whatever the name
    use_activation: bool | None = None  # None = vLLM's default for a 1-label head: sigmoid on
    activation: bool | None = None  # the name before vLLM 0.11.2; verl's older reward loop sends it

    @model_validator(mode="after")
    def _one_activation(self):
        if None not in (self.use_activation, self.activation) and self.use_activation != self.activation:
            raise ValueError("`use_activation` and `activation` (its old name) disagree; send one")
        return self

    def activation_on(self) -> bool:
        flag = self.use_activation if self.use_activation is not None else self.activation
        return True if flag is None else flag

    def fields(self, n: int) -> dict[str, list[Any]]:
        return per_text_fields(self.model_extra, n)


class ClassifyRequest(_Activation):
    """/classify and /pooling: `input` (one text or a list of full texts, chat template already applied,
    as verl sends) or one chat in `messages` (the server applies the model's template)."""

    input: UTexts = None
    messages: list[VllmMessage] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, v: Any) -> Any:
        if isinstance(v, list) and any(isinstance(x, (int, list)) for x in v):
            raise ValueError("token ids are not accepted: rewardkit tokenises with the reward model's own "
                             "tokenizer and layout, so send the text")
        return v

    @model_validator(mode="after")
    def _one_form(self):
        if (self.input is None) == (self.messages is None):
            raise ValueError("give either `input` (a text or a list of texts) or `messages` (one chat)")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` must hold at least one message")
        return self

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input or [])


class PoolingRequest(ClassifyRequest):
    task: str | None = None

    @field_validator("task")
    @classmethod
    def _sequence_task(cls, v: str | None) -> str | None:
        if v not in (None, "classify"):
            raise ValueError(f"rewardkit serves one reward per sequence (task `classify`); task {v!r} is not "
                             "available")
        return v


class VllmScoreRequest(_Activation):
    """vLLM's score body: `queries` and `documents` (or the older `text_1` and `text_2`), each a text or a list.
    Here a query is the prompt and a document the response. 1:1, 1:N (one prompt for every response) and N:N."""

    text_1: UTexts = None
    text_2: UTexts = None
    queries: UTexts = None
    documents: UTexts = None

    @model_validator(mode="after")
    def _pairs_fit(self):
        old, new = (self.text_1, self.text_2), (self.queries, self.documents)
        if sum(x is not None for x in old + new) != 2 or (None in old and None in new):
            raise ValueError("give `queries` and `documents` (or vLLM's older `text_1` and `text_2`)")
        first, second = (_as_list(x) for x in (old if None not in old else new))
        if not first or not second:
            raise ValueError("at least one query (text_1) and one document (text_2) are needed")
        if len(first) > 1 and len(first) != len(second):
            raise ValueError(f"{len(first)} queries for {len(second)} documents: give one query for all "
                             "documents, or one per document")
        return self

    def pairs(self) -> tuple[list[str], list[str]]:
        """(prompts, responses), one pair per document."""
        first, second = (_as_list(x) for x in ((self.text_1, self.text_2) if self.text_1 is not None
                                               else (self.queries, self.documents)))
        return (first * len(second) if len(first) == 1 else first), second


def _as_list(x: str | list[str] | None) -> list[str]:
    return [x] if isinstance(x, str) else list(x or [])


def per_text_fields(extra: dict[str, Any] | None, n: int) -> dict[str, list[Any]]:
    """Request keys with one value per text (a combination rule may read them, e.g. `is_safety`)."""
    return {k: v for k, v in (extra or {}).items() if isinstance(v, list) and len(v) == n}


class Usage(BaseModel):
    prompt_tokens: int  # tokens the server's models read (summed over the models of a combination)
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


def _now() -> int:
    return int(time.time())


class _VllmList(BaseModel):
    """The frame of vLLM's answers; subclasses add `data` and `usage` (in vLLM's field order)."""

    prefix: ClassVar[str]
    id: str = ""  # "<prefix>-<random hex>" when not given
    object: str = "list"
    created: int = Field(default_factory=_now)
    model: str

    def model_post_init(self, context: Any) -> None:
        if not self.id:
            self.id = f"{self.prefix}-{uuid.uuid4().hex}"


class ClassifyData(BaseModel):
    index: int
    label: str  # HF's name of a 1-output head's only class, as vLLM reports for reward models
    probs: list[float]  # [sigmoid(reward)], or [reward] with use_activation false
    num_classes: int = 1


class ClassifyResponse(_VllmList):
    prefix: ClassVar[str] = "classify"
    data: list[ClassifyData]
    usage: Usage


class PoolingData(BaseModel):
    index: int
    object: str = "pooling"
    data: list[float]  # the same one value as /classify's probs


class PoolingResponse(_VllmList):
    prefix: ClassVar[str] = "pool"
    data: list[PoolingData]
    usage: Usage


class VllmScoreData(BaseModel):
    index: int
    object: str = "score"
    score: float  # sigmoid(reward), or the reward with use_activation false


class VllmScoreResponse(_VllmList):
    prefix: ClassVar[str] = "score"
    data: list[VllmScoreData]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "rewardkit"


class ModelList(BaseModel):
    """GET /v1/models: vLLM's own examples read the served model's name from here first."""

    object: str = "list"
    data: list[ModelCard]
