"""A small HTTP/1.1 responder on the running asyncio loop.

Why not the FastAPI stack: ``riff serve``'s app runs under uvicorn, which wants to own the
process (signal handlers, its own serve loop); the daemon only needs a few read-only GET
routes next to its OSC server, on the same loop, started and closed with the control
surfaces. This responder does exactly that: GET and HEAD, no request bodies, keep-alive,
bounded request size, idle timeout and connection count.

Thread: :meth:`HttpResponder.start`, :meth:`~HttpResponder.close` and the handler all run on
the asyncio loop. The handler must be quick and must not block (it builds a response from
in-memory state).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import unquote

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 4096
MAX_HEADERS = 64
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 64


@dataclasses.dataclass(frozen=True)
class Request:
    """One parsed request: ``path`` is percent-decoded, ``query`` is the raw text after
    ``?`` (OSCQuery uses bare attribute names there: ``/riff/alpha?VALUE``)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Response:
    """What to answer; ``body`` is sent as is (not for HEAD)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Response]


class HttpResponder:
    """Serves ``handler`` on ``host:port`` (see the module docstring)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.server: asyncio.base_events.Server | None = None
        self.requests = 0
        self._clients: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, handler: Handler, host: str, port: int) -> HttpResponder:
        """Listen on ``host:port`` (0: an ephemeral port; see :attr:`address`)."""
        responder = cls(handler)
        responder.server = await asyncio.start_server(responder._accept, host, port,
                                                      reuse_address=True)
        return responder

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        assert self.server is not None and self.server.sockets, "not started"
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        if self.server is not None:
            self.server.close()
        for task in tuple(self._clients):
            task.cancel()
        for task in tuple(self._clients):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
            if not line:
                return
            if len(line) > MAX_REQUEST_LINE:
                await self._send(writer, "GET", Response(414, b"request line too long",
                                                         "text/plain"), close=True)
                return
            headers: dict[str, str] = {}
            for _ in range(MAX_HEADERS + 1):
                raw = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
                if raw in (b"\r\n", b"\n", b""):
                    break
                name, _, value = raw.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            else:
                await self._send(writer, "GET", Response(431, b"too many headers",
                                                         "text/plain"), close=True)
                return
            parts = line.decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await self._send(writer, "GET", Response(400, b"bad request", "text/plain"),
                                 close=True)
                return
            method, target, version = parts
            close = (headers.get("connection", "").lower() == "close"
                     or (version == "HTTP/1.0"
                         and headers.get("connection", "").lower() != "keep-alive"))
            if method not in ("GET", "HEAD") or headers.get("content-length", "0") != "0" \
                    or "transfer-encoding" in headers:
                await self._send(writer, method, Response(
                    405, b"only GET and HEAD", "text/plain", (("Allow", "GET, HEAD"),)),
                    close=True)
                return
            path, _, query = target.partition("?")
            request = Request(method, unquote(path), query, headers)
            self.requests += 1
            try:
                response = self.handler(request)
            except Exception:
                log.exception("HTTP handler for %s failed", path)
                response = Response(500, b"internal error", "text/plain")
            await self._send(writer, method, response, close=close)
            if close:
                return

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, method: str, response: Response, *,
                    close: bool) -> None:
        reason = HTTPStatus(response.status).phrase
        head = [f"HTTP/1.1 {response.status} {reason}",
                f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}",
                "Cache-Control: no-store",
                f"Connection: {'close' if close else 'keep-alive'}",
                *(f"{k}: {v}" for k, v in response.headers)]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD" and response.status not in (204, 304):
            writer.write(response.body)
        await writer.drain()
