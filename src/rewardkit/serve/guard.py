"""The ASGI layer in front of every route: what a request must pass before the app sees it, in this order.

1. API key: every path but /health (also /openapi.json, and unknown paths) needs `Authorization: Bearer
   <key>` when the server has one; checked on the headers alone, so a malformed body without a key is 401,
   never 422.
2. Body: read here, at most `max_body_bytes` (413, also for chunked uploads without Content-Length) and
   within `body_timeout` seconds of the headers (408: a client dribbling its body cannot hold a connection
   and a worker slot; the 408 closes the connection). The body is then replayed to the app.
3. Disconnects: the app runs as a task beside a watcher of the connection; when the client goes away
   before its answer, the task is cancelled, so its texts leave the model queue unscored (batcher.py).
4. Shutdown: a request cut off by the server's own stop (uvicorn cancels what outlives the drain) gets a
   503 instead of a silently closed connection.
Before all of these, in the HTTP protocol itself (`guarded_protocol`): a connection must send each request's
headers within `header_timeout` seconds of opening or of its previous answer, or it is closed (with a 408 when
part of a request had come). uvicorn has no such timeout: a client sending its headers a byte at a time
(slowloris) held a connection open for as long as it liked. And a connection beyond `max_connections` open ones
gets a 503 with Retry-After and is closed, instead of the process running out of file descriptors.

Every request is timed into the metrics (status 499: the client went away first).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

ROUTES = ("/get_reward", "/v1/score", "/v1/compare", "/v1/rank", "/classify", "/score", "/pooling", "/v1/models",
          "/health", "/metrics", "/openapi.json")
OPEN_PATHS = ("/health",)
CLIENT_GONE = 499  # nginx's code for "client closed the request", in metrics only
FD_RESERVE = 64  # file descriptors kept free below the open-file limit for model files, logs and listeners
REFUSED_LINGER_S = 2.0  # a connection refused by max_connections is closed by then if the client has not
REFUSED_LINGER_MAX = FD_RESERVE // 2  # ... and closed at once while this many refused ones linger already


class Guard:
    """ASGI middleware; `settings` is a ServeSettings (api_key, max_body_bytes, body_timeout)."""

    def __init__(self, app, settings, metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        state = {"status": CLIENT_GONE, "started": False, "done": False}

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            await send(message)

        try:
            if scope["path"] not in OPEN_PATHS and not self._authorised(scope):
                return await send_json(send_tracked, 401, "missing or wrong API key: send `Authorization: Bearer "
                                       "<key>`", [(b"www-authenticate", b"Bearer")])
            body = await self._read_body(scope, receive)
            if isinstance(body, tuple):
                # Only a 408 closes: closing with unread body bytes makes the kernel send a reset, which can
                # reach the client before the answer; uvicorn discards the rest of a 401/413 body itself.
                code, detail = body
                return await send_json(send_tracked, code, detail, [(b"connection", b"close")] if code == 408 else [])
            if body is None:
                return  # the client went away while sending
            await self._run(scope, _Replay(body, receive), send_tracked, state)
        except Exception:
            state["status"] = 500  # Starlette's outer error middleware answers it, past send_tracked
            raise
        finally:
            self.metrics.request(route, state["status"], time.perf_counter() - started)

    def _authorised(self, scope) -> bool:
        key = self.settings.api_key
        if key is None:
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())

    async def _read_body(self, scope, receive) -> bytes | tuple[int, str] | None:
        limit, seconds = self.settings.max_body_bytes, self.settings.body_timeout
        too_big = (413, f"request body too large: over {limit} bytes (the server's --max-body-bytes)")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    return too_big
            except ValueError:
                return 400, "invalid Content-Length header"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except asyncio.TimeoutError:
                return 408, (f"request body not received within {seconds:g} s (the server's serve.body_timeout); "
                             "connection closed")
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return too_big
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _run(self, scope, replay: "_Replay", send, state: dict[str, Any]) -> None:
        app = asyncio.ensure_future(self.app(scope, replay, send))
        watcher = asyncio.ensure_future(replay.watch())
        try:
            await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not app.done() and not state["done"]:  # the client went away first: drop its work
                app.cancel()
                await asyncio.wait({app})  # unlike `await app`, does not raise the app's CancelledError here
                return
            await app
        except asyncio.CancelledError:
            # The server stops and this request outlived the drain: answer it rather than drop the socket.
            # The cancellation is not re-raised: this is the request's outermost frame and it ends now.
            app.cancel()
            if not state["started"]:
                await send_json(send, 503, "server shutting down: the request could not finish within the "
                                "drain time; retry (on another server)", [(b"connection", b"close")])
        finally:
            watcher.cancel()


def open_file_limit() -> int | None:
    """The process's soft limit on open files (None where unknown or unlimited)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int | None:
    """The open-file limit less FD_RESERVE (model files, logs, the listening sockets), at least 1."""
    limit = open_file_limit()
    return None if limit is None else max(1, limit - FD_RESERVE)


def guarded_protocol(header_timeout: float, max_connections: int | None = None, base: type | None = None) -> type:
    """uvicorn's HTTP protocol `base` (default: httptools' where installed, else h11's) with a deadline on request
    headers (module doc) and a bound on open connections; pass it as `uvicorn.Config(http=...)`. The header timer
    is armed when the connection opens and after every answer; it closes the connection only if no request's
    headers completed since then and no request is running. A connection beyond `max_connections` is answered
    503 with Retry-After and closed (`_rk_refuse`) before the process runs out of file descriptors, where the
    event loop stops accepting: asyncio leaves new clients waiting in the listen backlog, uvloop closes them
    unanswered (bench/serve_connections.py)."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol as base

    class Guarded(base):
        _rk_timer = None
        _rk_partial = False  # bytes of a request arrived since the timer was armed
        _rk_refused = False  # over max_connections: answered 503, lingering until closed

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if max_connections is not None and len(self.connections) > max_connections:
                self._rk_refuse(transport)
                return
            self._rk_arm()

        def _rk_refuse(self, transport) -> None:
            """503 and our end closed for writing; what the client sends meanwhile is read and dropped until it
            closes or REFUSED_LINGER_S pass: closing with its request unread would send a reset, which can
            destroy the 503 before the client reads it. Past REFUSED_LINGER_MAX lingering ones (a flood), closed
            at once."""
            self._rk_refused = True
            detail = json.dumps({"detail": f"too many open connections (the server's serve.max_connections is "
                                           f"{max_connections}); retry"}).encode()
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                            b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                            % (len(detail), detail))
            if len(self.connections) > max_connections + REFUSED_LINGER_MAX:  # a flood: no descriptors to spare
                transport.close()
                return
            if transport.can_write_eof():
                transport.write_eof()
            self._rk_timer = self.loop.call_later(REFUSED_LINGER_S, transport.close)

        def data_received(self, data: bytes) -> None:
            if self._rk_refused:
                return
            self._rk_partial = True
            super().data_received(data)

        def eof_received(self) -> None:
            if self._rk_refused:  # the client read the 503 and closed
                self.transport.close()
                return None
            return super().eof_received()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._rk_arm()

        def connection_lost(self, exc) -> None:
            if self._rk_timer is not None:
                self._rk_timer.cancel()
            super().connection_lost(exc)

        def _rk_arm(self) -> None:
            if self._rk_timer is not None:
                self._rk_timer.cancel()
            self._rk_partial = False
            self._rk_timer = self.loop.call_later(header_timeout, self._rk_expire, self.cycle)

        def _rk_expire(self, cycle) -> None:
            self._rk_timer = None
            idle = cycle is None or cycle.response_complete  # a pipelined request may be running
            if self.cycle is not cycle or not idle or self.transport.is_closing():
                return
            if self._rk_partial:  # a client that began a request learns why it was cut off
                detail = json.dumps({"detail": f"request headers not received within {header_timeout:g} s (the "
                                               "server's serve.header_timeout)"}).encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(detail), detail))
            self.transport.close()

    return Guarded


class _Replay:
    """The app's `receive`: the body once, then (like the server's own) nothing until the client disconnects."""

    def __init__(self, body: bytes, receive):
        self.body, self.receive, self.sent, self.gone = body, receive, False, asyncio.Event()

    async def __call__(self):
        if not self.sent:
            self.sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def watch(self) -> None:
        """Returns when the client disconnects (or the server says the response is complete)."""
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.gone.set()


async def send_json(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
