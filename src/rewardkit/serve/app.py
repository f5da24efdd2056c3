"""HTTP layer: `create_app(service, settings)` -> FastAPI app. Nothing is loaded at import time.

Routes: POST /get_reward (OpenRLHF's remote reward model), POST /v1/score, /v1/compare, /v1/rank,
vLLM's pooling API (POST /classify, /score, /pooling, GET /v1/models; `vllm_api.py`), GET /health (never
needs the key), GET /metrics (Prometheus text), GET /openapi.json (needs the key too). Request bodies are
never logged. Auth, body limits and deadlines, and client disconnects are handled in front of the routes
(`guard.py`); every error answer is `{"detail": "<one sentence>"}`, as the OpenAPI schema declares.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import socket
import sys
from contextlib import asynccontextmanager
from typing import Any, Union

from fastapi import Body, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from pydantic.json_schema import models_json_schema

from rewardkit.config import ConfigError
from rewardkit.precision import precision_name
from rewardkit.scoring import NoScores, UnscorableResponse
from rewardkit.serve.batcher import QueueFull, ShuttingDown
from rewardkit.serve.combine import FieldMissing, ModelsConfig
from rewardkit.serve.guard import Guard, default_max_connections, guarded_protocol
from rewardkit.serve.schemas import (CompareRequest, CompareResponse, ErrorResponse, GetRewardRequest,
                                     GetRewardResponse, HealthResponse, RankRequest, RankResponse, ScoreRequest,
                                     ScoreResponse, VllmScoreRequest, VllmScoreResponse, as_text)
from rewardkit.serve.service import NotServable, RewardService, ServeSettings, Unrenderable
from rewardkit.serve.vllm_api import add_vllm_routes, parse_v1_score, vllm_score

log = logging.getLogger(__name__)
DRAIN_GRACE_S = 5.0  # after the drain: time for a forward already running to finish before uvicorn cuts it
ERRORS = {400: "the served model kind cannot answer this route", 401: "missing or wrong API key",
          408: "request body not received within serve.body_timeout", 413: "body or text count over the limit",
          422: "malformed request (names the field)", 503: "queue full, or server shutting down (Retry-After)"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse, "description": ERRORS[c]} for c in codes}


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
    app.add_middleware(Guard, settings=settings, metrics=service.metrics)
    # Guard checks the key before the body is read; this dependency only declares it in the OpenAPI schema.
    auth = [Security(HTTPBearer(auto_error=False))] if settings.api_key is not None else []
    get_errors = _errors(401) if settings.api_key is not None else {}
    post_errors = _errors(*(c for c in ERRORS if c != 401 or settings.api_key is not None))

    def check_count(n: int, what: str = "texts") -> None:
        if n > settings.max_texts:
            raise HTTPException(413, f"too many {what} in one request: {n} > {settings.max_texts} "
                                     "(the server's --max-texts); split the request")

    @app.exception_handler(QueueFull)
    @app.exception_handler(ShuttingDown)
    async def _busy(request: Request, exc: QueueFull | ShuttingDown):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(NoScores)
    @app.exception_handler(UnscorableResponse)
    @app.exception_handler(NotServable)
    async def _unservable(request: Request, exc: ValueError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(FieldMissing)
    @app.exception_handler(Unrenderable)
    async def _field(request: Request, exc: ValueError):
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
        precision = {n: precision_name(getattr(m.scorer, "bf16", False)) for n, m in service.models.items()}
        return HealthResponse(status="ok", models=list(service.models), precision=precision)

    @app.get("/metrics", dependencies=auth, response_class=PlainTextResponse, responses=get_errors)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/get_reward", dependencies=auth, response_model=GetRewardResponse, responses=post_errors)
    async def get_reward(req: GetRewardRequest) -> GetRewardResponse:
        check_count(len(req.query), "queries")
        scored = await service.score_full_texts(req.query, _checked_fields(req.fields(), len(req.query)),
                                                prompts=req.prompts)
        rewards = scored.reward.tolist()
        return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=scored.extra)

    @app.post("/v1/score", dependencies=auth, response_model=Union[ScoreResponse, VllmScoreResponse],
              responses=post_errors, openapi_extra={"requestBody": {"content": {"application/json": {"schema": {
                  "anyOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in V1_SCORE_BODIES]}}}}})
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

    @app.post("/v1/compare", dependencies=auth, response_model=CompareResponse, responses=post_errors)
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

    @app.post("/v1/rank", dependencies=auth, response_model=RankResponse, responses=post_errors)
    async def rank(req: RankRequest) -> RankResponse:
        n = len(req.candidates)
        check_count(n, "candidates")
        fields = {k: [v] * n for k, v in (req.model_extra or {}).items()}
        ranking, raw = await service.rank(as_text(req.prompt), [as_text(c) for c in req.candidates], fields,
                                          req.normalize)
        return RankResponse(scores=ranking.scores, raw_scores=raw, order=ranking.order, best=ranking.best)

    add_vllm_routes(app, service, auth, check_count, get_errors, post_errors)
    _declare_v1_score_bodies(app)
    return app


V1_SCORE_BODIES = (ScoreRequest, VllmScoreRequest)  # /v1/score takes either (parse_v1_score tells them apart)


def _declare_v1_score_bodies(app: FastAPI) -> None:
    """Put /v1/score's two body models (and what they use) into the schema's components, which FastAPI does
    not do for a body it sees as a plain dict."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            _, defs = models_json_schema([(m, "validation") for m in V1_SCORE_BODIES],
                                         ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
        return app.openapi_schema
    app.openapi = openapi


def _checked_fields(fields: dict[str, list[Any]], n: int) -> dict[str, list[Any]]:
    # OpenRLHF sends prompts/labels alongside; only fields with one value per query are meaningful.
    return {k: v for k, v in fields.items() if len(v) == n}


def _item_fields(items) -> dict[str, list[Any]]:
    keys = {k for it in items for k in (it.model_extra or {})}
    return {k: [(it.model_extra or {}).get(k) for it in items] for k in keys}


def build_app(models: ModelsConfig, settings: ServeSettings, *, device: str = "cpu",
              max_length: int | None = None, bf16: bool | None = False) -> FastAPI:
    """Load the models of `models` and wrap them in an app."""
    return create_app(RewardService.load(models, settings, device=device, max_length=max_length, bf16=bf16),
                      settings)


def run_server(models: ModelsConfig, settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 5000,
               device: str = "cpu", max_length: int | None = None, access_log: bool = False,
               bf16: bool | None = False) -> None:
    """Bind, load, then serve until SIGTERM/SIGINT (uvicorn, one process: the model worker holds the model
    once).

    A busy port or a bad host fails before the models load, and loading errors before anything listens (the
    CLI turns both into exit 2). On SIGTERM the server stops accepting, drains (`settings.drain_timeout`) and
    exits 0."""
    import uvicorn

    sockets = bind_sockets(host, port)  # first: a failure here is the only line printed
    if not _is_loopback(host) and settings.api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model "
                    "(set --api-key or REWARDKIT_API_KEY)", host)
    try:
        _steady_malloc()
        service = RewardService.load(models, settings, device=device, max_length=max_length, bf16=bf16)
        max_connections = settings.max_connections or default_max_connections()
        config = uvicorn.Config(create_app(service, settings), host=host, port=port, access_log=access_log,
                                log_level="info", timeout_graceful_shutdown=settings.drain_timeout + DRAIN_GRACE_S,
                                http=guarded_protocol(settings.header_timeout, max_connections))
        _listen(sockets, host, port, config.backlog)
        port = sockets[0].getsockname()[1]  # the one the system chose for port 0
        log.info("reward server on http://%s:%d (OpenRLHF: --reward.remote_url http://%s:%d/get_reward); at most %s "
                 "open connections", host, port, host, port, max_connections or "unbounded")
        draining_server(config, service, settings.drain_timeout).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """The server's sockets, bound (not yet listening) before the models load: a busy port or an unknown host
    is a one-line start-up error (ConfigError: exit 2) at once, not uvicorn's exit 3 after a long load. One
    socket per address `host` resolves to, with the options asyncio's create_server (uvicorn's own bind) sets."""
    sockets: list[socket.socket] = []
    try:
        infos = list(dict.fromkeys(socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)))
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over old TIME_WAIT connections
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 address has its own socket
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno != errno.EADDRNOTAVAIL or len(infos) == 1:
                    raise
                sockets.pop().close()  # a family not enabled here (e.g. ::1 without IPv6); asyncio skips it too
        if not sockets:
            raise OSError(errno.EADDRNOTAVAIL, "no address of this host can be bound")
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sockets


def _listen(sockets: list[socket.socket], host: str, port: int, backlog: int) -> None:
    """Listen only once the models are loaded: until then clients get a quick refusal, not a hang. Another
    server that binds with SO_REUSEADDR can still take the port meanwhile; that is caught here, in one line."""
    try:
        for sock in sockets:
            sock.listen(backlog)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e} (taken while the models loaded)"
                          ) from None


def _steady_malloc() -> None:
    """Keep the server's RSS flat. glibc raises its mmap threshold each time a large block is freed, so the
    forward's buffers of ever-different batch shapes then come from (and stay in) the heap: RSS grew 35% in
    a 2-minute bench/soak.py run, and stayed flat with a fixed 64 KiB threshold. Linux/glibc only; an
    explicit MALLOC_MMAP_THRESHOLD_ in the environment wins. Under a preloaded tcmalloc (cli/allocator.py) this
    sets glibc's unused allocator and changes nothing."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from <malloc.h>
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 64 * 1024)


def draining_server(config, service: RewardService, drain_s: float):
    """A uvicorn.Server whose shutdown (SIGTERM, SIGINT) first tells the service to drain: new requests get
    503, queued work may run `drain_s` more seconds, then gets 503. A drained stop exits 0 instead of
    re-raising the signal (uvicorn's habit), as a finished job should."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            log.info("shutting down: draining for up to %g s", drain_s)
            service.begin_drain(drain_s)
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals.clear()  # reached only when the shutdown completed

    return DrainingServer(config)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
