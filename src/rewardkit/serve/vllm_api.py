"""vLLM's pooling API for reward models: POST /classify, /score, /pooling, GET /v1/models, and vLLM's score
body on /v1/score.

verl's reward loop, NeMo-RL and vLLM's own examples talk to a vLLM server run with `--runner pooling`
(`--convert classify` for a reward model). These routes take the same requests and give the same answers, so
such a client can point at rewardkit unchanged. They are thin: the scoring is the same RewardService call as
/get_reward and /v1/score (cross-request batching, API key, body and count limits, metrics, errors).

The numbers. A reward model has one output, so every item carries one value: with the activation on (vLLM's
default for a 1-label head, used when the request does not say) it is sigmoid(reward); with
`use_activation: false` (or `activation: false`, its name before vLLM 0.11.2) it is the reward itself, the
number /get_reward returns as `rewards` (normalised, combined and clipped as the server is set up). That is
what vLLM gives for a 1-label model, whose activation is a sigmoid on the raw logit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from rewardkit.serve.schemas import (ClassifyData, ClassifyRequest, ClassifyResponse, ModelCard, ModelList,
                                     PoolingData, PoolingRequest, PoolingResponse, ScoreRequest, Usage,
                                     VllmScoreData, VllmScoreRequest, VllmScoreResponse)
from rewardkit.serve.service import RewardService, Scored

LABEL = "LABEL_0"  # HF's name for the only class of a 1-output head; what vLLM reports for reward models
VLLM_SCORE_KEYS = ("queries", "documents", "text_1", "text_2")
CheckCount = Callable[..., None]


def add_vllm_routes(app: FastAPI, service: RewardService, auth: list, check_count: CheckCount,
                    get_errors: dict | None = None, post_errors: dict | None = None) -> None:
    """`get_errors`/`post_errors`: the error answers the OpenAPI schema declares for each kind of route."""
    @app.get("/v1/models", dependencies=auth, response_model=ModelList, responses=get_errors)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served_name(service))])

    @app.post("/classify", dependencies=auth, response_model=ClassifyResponse, responses=post_errors)
    async def classify(req: ClassifyRequest) -> ClassifyResponse:
        values, scored = await _classify(service, req, check_count)
        return ClassifyResponse(model=req.model or served_name(service), usage=_usage(scored),
                                data=[ClassifyData(index=i, label=LABEL, probs=[v]) for i, v in enumerate(values)])

    @app.post("/pooling", dependencies=auth, response_model=PoolingResponse, responses=post_errors)
    async def pooling(req: PoolingRequest) -> PoolingResponse:
        values, scored = await _classify(service, req, check_count)
        return PoolingResponse(model=req.model or served_name(service), usage=_usage(scored),
                               data=[PoolingData(index=i, data=[v]) for i, v in enumerate(values)])

    @app.post("/score", dependencies=auth, response_model=VllmScoreResponse, responses=post_errors)
    async def score(req: VllmScoreRequest) -> VllmScoreResponse:
        return await vllm_score(service, req, check_count)


def parse_v1_score(body: dict[str, Any]) -> ScoreRequest | VllmScoreRequest:
    """/v1/score takes rewardkit's body (`items`) or vLLM's (`queries`/`documents` or `text_1`/`text_2`),
    told apart by the fields present; errors come out as the other routes' 422s."""
    vllm = [k for k in VLLM_SCORE_KEYS if k in body]
    if ("items" in body) == bool(vllm):
        what = "both `items` and " + ", ".join(f"`{k}`" for k in vllm) if vllm else "neither"
        raise RequestValidationError([{"loc": ("body",), "type": "value_error", "msg": (
            f"got {what}: give `items` (rewardkit's score body) or `queries` and `documents` "
            "(vLLM's; also `text_1` and `text_2`)")}])
    try:
        return (VllmScoreRequest if vllm else ScoreRequest).model_validate(body)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_input=False)) from None


async def vllm_score(service: RewardService, req: VllmScoreRequest, check_count: CheckCount) -> VllmScoreResponse:
    prompts, responses = req.pairs()
    check_count(len(prompts))
    scored = await service.score_pairs(prompts, responses, req.fields(len(prompts)))
    values = _activate(scored, req.activation_on())
    return VllmScoreResponse(model=req.model or served_name(service), usage=_usage(scored),
                             data=[VllmScoreData(index=i, score=v) for i, v in enumerate(values)])


def served_name(service: RewardService) -> str:
    return "+".join(service.rule.model_names())


async def _classify(service: RewardService, req: ClassifyRequest, check_count: CheckCount) -> tuple[list[float], Scored]:
    if req.messages is not None:
        # One chat: the last message is the response, the rest the prompt; the model's template renders the
        # whole conversation, as vLLM does with add_generation_prompt off.
        msgs = [m.model_dump() for m in req.messages]
        scored = await service.score_pairs([msgs[:-1]], [msgs[-1:]], req.fields(1))
    else:
        # Full texts with the chat template already applied (verl decodes and templates them itself):
        # tokenised as /get_reward's queries, with the layout's own BOS/EOS once, so the reward is read
        # where the model was trained to put it.
        texts = req.texts()
        check_count(len(texts))
        scored = await service.score_full_texts(texts, req.fields(len(texts)))
    return _activate(scored, req.activation_on()), scored


def _activate(scored: Scored, on: bool) -> list[float]:
    return (torch.sigmoid(scored.reward) if on else scored.reward).tolist()


def _usage(scored: Scored) -> Usage:
    return Usage(prompt_tokens=scored.tokens, total_tokens=scored.tokens)
