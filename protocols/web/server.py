"""Start and stop the web side of ``riff run``: the monitor page, its WebSocket, OSCQuery, mDNS.

``protocols.surfaces`` calls :func:`start_web` after the OSC server is up (OSCQuery's
HOST_INFO names the OSC port) and :meth:`WebServer.close` when the surfaces close.

Why uvicorn runs here as a task rather than as ``riff serve`` runs it (``Server.run``): the
daemon owns the process. Its asyncio loop already runs the engine, OSC and MIDI, and its own
SIGINT/SIGTERM handling stops them in order, so the server is started with ``serve()`` on
that loop and :class:`_EmbeddedServer` leaves the signal handlers alone (uvicorn's
``capture_signals`` would replace them while it runs and re-raise a captured signal when it
stops). :meth:`WebServer.close` asks it to exit (``should_exit``, as its own signal handler
does) and waits; open WebSockets get a close frame and at most
:data:`GRACEFUL_SHUTDOWN_S` to finish.

Thread: the asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from engine.errors import InvalidRequest
from protocols.control_target import Commands
from protocols.http.guard import bind
from protocols.osc.access import AccessControl, default_networks, parse_networks
from protocols.osc.server import OscConfig, OscServer
from protocols.web.advertise import Advertiser, is_loopback
from protocols.web.app import WebCounters, build_app
from protocols.web.monitor import CLIP_PATH, PAGE_PATH, Monitor
from protocols.web.oscquery import HostInfo, OscQuery
from protocols.web.pictures import Pictures

log = logging.getLogger(__name__)

#: Seconds open connections get to finish when the server stops.
GRACEFUL_SHUTDOWN_S = 1
#: Seconds uvicorn may take to start listening.
START_TIMEOUT_S = 10.0
#: The largest WebSocket message accepted from a page (bytes).
WS_MAX_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class WebConfig:
    """``host``/``port``: where the web side listens (port 0: an ephemeral one; loopback by
    default: the page has controls). ``allow``: networks (CIDR) whose WebSockets are accepted
    (empty: the OSC default for ``host``). ``advertise``: publish OSCQuery by mDNS (never for
    a loopback host). ``name``: the service name controllers show (default
    ``riff on <hostname>``)."""

    host: str = "127.0.0.1"
    port: int = 0
    advertise: bool = True
    name: str = ""
    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(self.allow))
        parse_networks(self.allow)  # raises InvalidRequest for a bad CIDR
        if not 0 <= self.port <= 65535:
            raise InvalidRequest(f"HTTP port must be 0..65535, not {self.port}")
        if len(self.name) > 63 or any(c in self.name for c in ".\x00"):
            raise InvalidRequest("the service name must be at most 63 characters, no dots")

    @property
    def service_name(self) -> str:
        """The name published and shown in HOST_INFO."""
        return self.name or f"riff on {socket.gethostname().split('.')[0]}"[:63]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn on a loop it does not own: no signal handlers (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Called by ``serve()`` on the loop: the daemon keeps its own handlers."""
        yield


class WebServer:
    """The running server (and advertiser); :meth:`close` stops both."""

    def __init__(self, server: _EmbeddedServer, task: asyncio.Task[None],
                 address: tuple[str, int], oscquery: OscQuery, monitor: Monitor,
                 counters: WebCounters, advertiser: Advertiser | None) -> None:
        self.server = server
        self.task = task
        self._address = address
        self.oscquery = oscquery
        self.monitor = monitor
        self.counters = counters
        self.advertiser = advertiser

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self._address

    def stats(self) -> dict[str, int]:
        """WebSocket counters (JSON-ready)."""
        return dataclasses.asdict(self.counters)

    async def close(self) -> None:
        """Withdraw the mDNS records, then stop serving (open connections are closed)."""
        if self.advertiser is not None:
            try:
                await self.advertiser.close()
            except Exception:
                log.exception("withdrawing the mDNS records failed")
            self.advertiser = None
        self.server.should_exit = True
        await self.task
        log.info("web stopped: %s", self.stats())


async def start_web(commands: Commands, config: WebConfig,
                    osc_address: tuple[str, int] | None) -> WebServer:
    """Serve the monitor page and OSCQuery for ``commands.engine`` (OSC at ``osc_address``,
    if any)."""
    engine: Any = commands.engine
    osc_host, osc_port = osc_address if osc_address is not None else (config.host, 0)
    state = engine.state
    host_info = HostInfo(config.service_name, osc_host, osc_port)
    oscquery = OscQuery(state.snapshot, engine.status, host_info)
    # The OSC server's handlers, not bound to a socket: the page's commands take OSC's path.
    dispatch = OscServer(commands, OscConfig(host=config.host, port=0, allow=config.allow),
                         source="monitor page")
    clip_of = getattr(getattr(engine, "scheduler", None), "clip", None)
    pictures = Pictures(clip_of, CLIP_PATH) if callable(clip_of) else None
    monitor = Monitor(engine, state.snapshot, dispatch, pictures)
    access = AccessControl(parse_networks(config.allow) or default_networks(config.host))
    counters = WebCounters()
    app = build_app(monitor, oscquery, access, pictures, counters,
                    loopback=is_loopback(config.host))
    sock = bind(config.host, config.port)
    address: tuple[str, int] = sock.getsockname()[:2]
    server = _EmbeddedServer(uvicorn.Config(
        app, lifespan="off", log_config=None, log_level="warning", access_log=False,
        ws="auto", ws_max_size=WS_MAX_BYTES, limit_concurrency=64,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("the web server stopped while starting")
            if loop.time() > deadline:
                raise RuntimeError(f"the web server did not start within {START_TIMEOUT_S} s")
            await asyncio.sleep(0.01)
    except BaseException:
        server.should_exit = True
        await asyncio.wait([task])
        sock.close()
        raise
    host, port = address[0], address[1]
    log.info("monitor page on http://%s:%d%s (OSCQuery on the same port)", host, port,
             PAGE_PATH)
    advertiser: Advertiser | None = None
    if config.advertise and osc_address is not None and not is_loopback(config.host):
        try:
            advertiser = await Advertiser.start(config.service_name, config.host, port,
                                                osc_port)
        except Exception as exc:  # no multicast here: serve anyway, say why
            log.warning("mDNS advertising failed (%s); OSCQuery still answers on port %d",
                        exc, port)
    return WebServer(server, task, (host, port), oscquery, monitor, counters, advertiser)
