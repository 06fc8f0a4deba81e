"""Request guards of the HTTP server: body limits, JSON parsing, bearer tokens, counting.

Kept apart from the routes (protocols/http/app.py) because none of it is about generation: it is
what every request passes through before a route sees it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from protocols.http.metrics import Metrics

log = logging.getLogger(__name__)

#: Paths that monitors poll: logged at debug level only.
_QUIET_PATHS = frozenset({"/health", "/health-check", "/metrics"})


class HttpProblem(Exception):
    """An error answer with a status, a one-line detail and optional headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (413) before and while reading."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise HttpProblem(413, f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HttpProblem(413, f"request body is larger than {limit} bytes")
    return bytes(body)


async def read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON, refusing bodies over ``limit`` bytes before reading."""
    body = await read_body(request, limit)
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise HttpProblem(400, f"request body is not JSON: {exc}") from None
    except RecursionError:
        raise HttpProblem(400, "request body is nested too deeply") from None
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise HttpProblem(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


#: No request the engine accepts nests deeper than this; deeper bodies are refused before
#: validation (which would otherwise recurse through them).
MAX_JSON_DEPTH = 32


def _depth_exceeds(data: Any, limit: int) -> bool:
    """Whether ``data`` nests more than ``limit`` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def until_disconnected(request: Request, ticket: Any) -> Any:
    """The result of queued work ``ticket``, unless the client disconnects first: then the
    work is cancelled (skipped if still waiting, stopped between steps if running) and
    :class:`ClientGone` is raised (nobody is left to answer).

    Why a watcher: for a plain (non-streaming) answer, the server does not cancel the handler
    when the connection closes; only ``receive()`` sees the ``http.disconnect``. Thread: the
    event loop.
    """
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({ticket.future, watcher},
                                     return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        ticket.cancel()
        raise
    finally:
        watcher.cancel()
    if ticket.future in done:
        return ticket.future.result()
    ticket.cancel()
    raise ClientGone(f"client left {request.url.path} before its answer was ready")


async def _disconnected(request: Request) -> None:
    """Return when the client has disconnected (the body has already been read)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


_BEARER = HTTPBearer(auto_error=False)


class Authorize:
    """Dependency: with a token configured, requests must carry ``Authorization: Bearer``."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def __call__(
        self, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> None:
        """Raise 401 unless the token matches (compared in constant time)."""
        if self.token is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HttpProblem(401, "a valid bearer token is required",
                              {"WWW-Authenticate": "Bearer"})


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), for uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class CountRequests:
    """ASGI middleware counting answered requests by route and status, and logging one line
    per request (method, path, status, seconds, queue depth; ``/health`` and ``/metrics``
    at debug level, as monitors poll them). Pure ASGI, so streaming responses and client
    disconnects pass through untouched. Thread: the server's event loop."""

    def __init__(self, app: Any, metrics: Metrics,
                 depth: Callable[[], int | None] = lambda: None) -> None:
        self.app = app
        self.metrics = metrics
        self.depth = depth

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        began = time.perf_counter()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            self.metrics.request(getattr(route, "path", "other"), status)
            path = str(scope.get("path", ""))[:200]
            depth = self.depth()
            log.log(logging.DEBUG if path in _QUIET_PATHS else logging.INFO,
                    "%s %s -> %d in %.3f s (queue %s)", scope.get("method", "?"), path, status,
                    time.perf_counter() - began, "-" if depth is None else depth)
