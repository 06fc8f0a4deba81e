"""The web app of ``riff run --http``: the monitor page, its WebSocket, and OSCQuery.

A FastAPI app, as ``riff serve``'s, served by uvicorn on the daemon's own loop
(:mod:`protocols.web.server`). Routes:

- ``GET /monitor``: the page; ``GET /monitor/status``: its document as JSON;
  ``GET /monitor/clip/{job}.png``: a clip's spectrogram; ``WS /monitor/ws``: the live feed
  and the page's commands (see :mod:`protocols.web.monitor`);
- everything else: OSCQuery (:mod:`protocols.web.oscquery`), GET and HEAD.

The WebSocket changes the engine, so it is guarded before it is accepted: the peer must be
inside the allowed networks (the OSC server's rule: ``--osc-allow``, else loopback for a
loopback bind, else this machine's networks), and a browser's ``Origin`` must be this server
itself. Browsers let any web page open a WebSocket to any address, so without the origin
check a page from anywhere, open in a browser on this machine, could play the engine. On a
loopback bind the ``Host`` header must also be a loopback name (against DNS rebinding).
Refused handshakes are answered 403 and counted (:attr:`WebCounters.denied`).

Thread: every route runs on the asyncio loop; none blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect

from protocols.osc.access import AccessControl
from protocols.web.advertise import is_loopback
from protocols.web.monitor import (
    CLIP_PATH,
    PAGE_PATH,
    PUSH_INTERVAL_S,
    SOCKET_PATH,
    STATUS_PATH,
    Monitor,
)
from protocols.web.oscquery import OscQuery
from protocols.web.pictures import Pictures

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WebCounters:
    """``sockets``: WebSockets open now; ``accepted``/``denied``: handshakes so far;
    ``commands``/``refused``: command messages applied / refused (any reason)."""

    sockets: int = 0
    accepted: int = 0
    denied: int = 0
    commands: int = 0
    refused: int = 0


def local_host_header(host: str | None) -> bool:
    """Whether a ``Host`` header names this machine by a loopback name or address. A server
    bound to loopback requires it of WebSockets: a page whose own name was made to resolve to
    127.0.0.1 (DNS rebinding) sends its own name, and so passes the origin check alone."""
    if host is None:
        return False
    name = urlsplit(f"//{host}").hostname
    return name is not None and is_loopback(name)


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a handshake's ``Origin`` header is this server (``Host``), or absent (not a
    browser: a script or a controller, which the network allow-list already admitted)."""
    if origin is None:
        return True
    if host is None:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, separators=(",", ":"), default=str).encode("utf-8"),
                    status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def build_app(monitor: Monitor, oscquery: OscQuery, access: AccessControl,
              pictures: Pictures | None, counters: WebCounters, *,
              loopback: bool = True) -> FastAPI:
    """The app over the running engine's monitor and OSCQuery views; ``loopback``: the
    server listens on a loopback address only (see :func:`local_host_header`)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.api_route(PAGE_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> Response:
        return Response(monitor.page, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    @app.api_route(STATUS_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    async def status() -> Response:
        return _json(monitor.document())

    @app.api_route(CLIP_PATH + "/{job_id}.png", methods=["GET", "HEAD"],
                   include_in_schema=False)
    async def clip_picture(job_id: int) -> Response:
        png = await pictures.png(job_id) if pictures is not None else None
        if png is None:
            return _json({"error": f"no audio of clip {job_id} at hand"}, 404)
        # A job id names one clip for the engine's life: the picture never changes.
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.websocket(SOCKET_PATH)
    async def socket(websocket: WebSocket) -> None:
        client = websocket.client
        peer = (client.host, client.port) if client is not None else ("", 0)
        host = websocket.headers.get("host")
        if not access.allows(peer[0]) \
                or not same_origin(websocket.headers.get("origin"), host) \
                or (loopback and not local_host_header(host)):
            counters.denied += 1
            log.warning("monitor WebSocket from %s (origin %s) refused", peer[0],
                        websocket.headers.get("origin"))
            await websocket.close(code=1008)  # before accept(): answered 403
            return
        await websocket.accept()
        counters.accepted += 1
        counters.sockets += 1
        try:
            await _session(websocket, monitor, peer, counters)
        finally:
            counters.sockets -= 1

    @app.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def osc_query(request: Request, path: str) -> Response:
        code, body = oscquery.handle("/" + path, request.url.query)
        if body is None:
            return Response(status_code=code, headers={"Cache-Control": "no-store"})
        return _json(body, code)

    return app


async def _session(websocket: WebSocket, monitor: Monitor, peer: tuple[str, int],
                   counters: WebCounters) -> None:
    """One page: the hello, then pushes (a task) while commands are read here."""
    lock = asyncio.Lock()
    wake = asyncio.Event()

    async def send(text: str) -> None:
        async with lock:
            await websocket.send_text(text)

    async def push() -> None:
        last = ""
        while True:
            text = monitor.status_text()
            if text != last:
                try:
                    await send(text)
                except (WebSocketDisconnect, OSError):
                    return  # the page left; the reading side sees the disconnect
                last = text
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), PUSH_INTERVAL_S)
            wake.clear()

    await send(json.dumps(monitor.hello, separators=(",", ":")))
    pusher = asyncio.ensure_future(push())
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                text = "binary message"  # refused as bad JSON below, with a reason
            reply = monitor.command(peer, text)
            if reply["ok"]:
                counters.commands += 1
            else:
                counters.refused += 1
            await send(json.dumps(reply, separators=(",", ":"), default=str))
            wake.set()
    except WebSocketDisconnect:
        return
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher

