"""HTTP layer: `create_app(service, settings)` -> FastAPI app. Nothing is loaded at import time.

Routes: POST /get_reward (OpenRLHF's remote reward model), POST /v1/score, /v1/compare, /v1/rank,
vLLM's pooling API (POST /classify, /score, /pooling, GET /v1/models; `vllm_api.py`), GET /health (never
needs the key), GET /metrics (Prometheus text). Request bodies are never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from rewardkit.scoring import NoScores
from rewardkit.serve.batcher import QueueFull
from rewardkit.serve.combine import FieldMissing, ModelsConfig
from rewardkit.serve.schemas import (CompareRequest, CompareResponse, GetRewardRequest, GetRewardResponse,
                                     HealthResponse, RankRequest, RankResponse, ScoreResponse, VllmScoreRequest,
                                     VllmScoreResponse, as_text)
from rewardkit.serve.service import NotServable, RewardService, ServeSettings
from rewardkit.serve.vllm_api import add_vllm_routes, parse_v1_score, vllm_score

log = logging.getLogger(__name__)
ROUTES = ("/get_reward", "/v1/score", "/v1/compare", "/v1/rank", "/classify", "/score", "/pooling", "/v1/models",
          "/health", "/metrics")


def create_app(service: RewardService, settings: ServeSettings) -> FastAPI:
    """The server around a (not yet started) service; its workers start and stop with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="rewardkit reward server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimitAndMetrics, max_body=settings.max_body_bytes, metrics=service.metrics)
    auth = [Depends(_bearer_check(settings.api_key))]

    def check_count(n: int, what: str = "texts") -> None:
        if n > settings.max_texts:
            raise HTTPException(413, f"too many {what} in one request: {n} > {settings.max_texts} "
                                     "(the server's --max-texts); split the request")

    @app.exception_handler(QueueFull)
    async def _busy(request: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(NoScores)
    @app.exception_handler(NotServable)
    async def _unservable(request: Request, exc: ValueError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(FieldMissing)
    async def _field(request: Request, exc: FieldMissing):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # Name the field and the problem; never echo the submitted input back.
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: "
                    + ("not valid JSON" if e.get("type") == "json_invalid" else str(e.get("msg")))
                    for e in exc.errors()]
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse(status="ok", models=list(service.models))

    @app.get("/metrics", dependencies=auth, response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/get_reward", dependencies=auth, response_model=GetRewardResponse)
    async def get_reward(req: GetRewardRequest) -> GetRewardResponse:
        check_count(len(req.query), "queries")
        scored = await service.score_full_texts(req.query, _checked_fields(req.fields(), len(req.query)))
        rewards = scored.reward.tolist()
        return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=scored.extra)

    @app.post("/v1/score", dependencies=auth, response_model=None)
    async def score(body: dict[str, Any] = Body()) -> ScoreResponse | VllmScoreResponse:
        # vLLM serves /v1/score too: a vLLM client that calls it gets vLLM's answer shape.
        req = parse_v1_score(body)
        if isinstance(req, VllmScoreRequest):
            return await vllm_score(service, req, check_count)
        check_count(len(req.items))
        pairs = [it.pair() for it in req.items]
        scored = await service.score_pairs([p for p, _ in pairs], [r for _, r in pairs],
                                           _item_fields(req.items), req.normalize)
        return ScoreResponse(scores=scored.reward.tolist(), raw_scores=scored.raw.tolist(), components=scored.extra)

    @app.post("/v1/compare", dependencies=auth, response_model=CompareResponse)
    async def compare(req: CompareRequest) -> CompareResponse:
        check_count(2 * len(req.items), "texts (2 per comparison)")
        comps = await service.compare([as_text(it.prompt) for it in req.items], [as_text(it.a) for it in req.items],
                                      [as_text(it.b) for it in req.items], _item_fields(req.items))
        scored = bool(comps) and comps[0].reward_a is not None
        return CompareResponse(prob_a_better=[c.prob_a_better for c in comps],
                               raw_scores_a=[c.reward_a for c in comps] if scored else None,
                               raw_scores_b=[c.reward_b for c in comps] if scored else None,
                               margins=[c.margin for c in comps],
                               temperature=comps[0].temperature if comps else service.temperature)

    @app.post("/v1/rank", dependencies=auth, response_model=RankResponse)
    async def rank(req: RankRequest) -> RankResponse:
        n = len(req.candidates)
        check_count(n, "candidates")
        fields = {k: [v] * n for k, v in (req.model_extra or {}).items()}
        ranking, raw = await service.rank(as_text(req.prompt), [as_text(c) for c in req.candidates], fields,
                                          req.normalize)
        return RankResponse(scores=ranking.scores, raw_scores=raw, order=ranking.order, best=ranking.best)

    add_vllm_routes(app, service, auth, check_count)
    return app


def _checked_fields(fields: dict[str, list[Any]], n: int) -> dict[str, list[Any]]:
    # OpenRLHF sends prompts/labels alongside; only fields with one value per query are meaningful.
    return {k: v for k, v in fields.items() if len(v) == n}


def _item_fields(items) -> dict[str, list[Any]]:
    keys = {k for it in items for k in (it.model_extra or {})}
    return {k: [(it.model_extra or {}).get(k) for it in items] for k in keys}


def _bearer_check(api_key: str | None):
    async def check(authorization: str | None = Header(default=None)) -> None:
        if api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                headers={"WWW-Authenticate": "Bearer"})
    return check


class _BodyLimitAndMetrics:
    """ASGI middleware: refuse bodies over `max_body` bytes with 413 (before parsing), time every request.

    The body is read here (at most max_body + one chunk) and replayed to the app, so chunked uploads
    without Content-Length are bounded too.
    """

    def __init__(self, app, max_body: int, metrics):
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = [500]

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            replay = await self._read_body(scope, receive)
            if isinstance(replay, tuple):
                code, detail = replay
                await _send_json(send_tracked, code, detail)
                return
            await self.app(scope, replay, send_tracked)
        finally:
            self.metrics.request(route, status[0], time.perf_counter() - started)

    async def _read_body(self, scope, receive):
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = (413, f"request body too large: over {self.max_body} bytes (the server's --max-body-bytes)")
        if declared is not None:
            try:
                if int(declared) > self.max_body:
                    return too_big
            except ValueError:
                return 400, "invalid Content-Length header"
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _replay_disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return too_big
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), [False]

        async def replay():
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the client to disconnect
        return replay


async def _replay_disconnect():
    return {"type": "http.disconnect"}


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build_app(models: ModelsConfig, settings: ServeSettings, *, device: str = "cpu",
              max_length: int | None = None, bf16: bool = False) -> FastAPI:
    """Load the models of `models` and wrap them in an app."""
    return create_app(RewardService.load(models, settings, device=device, max_length=max_length, bf16=bf16),
                      settings)


def run_server(models: ModelsConfig, settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 5000,
               device: str = "cpu", max_length: int | None = None, access_log: bool = False,
               bf16: bool = False) -> None:
    """Load, then serve until interrupted (uvicorn, one process: the model worker holds the model once)."""
    import uvicorn

    if not _is_loopback(host) and settings.api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model "
                    "(set --api-key or REWARDKIT_API_KEY)", host)
    app = build_app(models, settings, device=device, max_length=max_length, bf16=bf16)
    log.info("reward server on http://%s:%d (OpenRLHF: --reward.remote_url http://%s:%d/get_reward)",
             host, port, host, port)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
