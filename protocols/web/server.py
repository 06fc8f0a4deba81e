"""Start and stop the web side of ``riff run`` (OSCQuery, mDNS, the monitor page).

``protocols.surfaces`` calls :func:`start_web` after the OSC server is up (OSCQuery's
HOST_INFO names the OSC port) and :meth:`WebServer.close` when the surfaces close.

Thread: the asyncio loop.
"""

from __future__ import annotations

import dataclasses
import logging
import socket

from engine.errors import InvalidRequest
from protocols.control_target import ControlTarget
from protocols.web.advertise import Advertiser, is_loopback
from protocols.web.http import HttpResponder, Request, Response
from protocols.web.monitor import Monitor
from protocols.web.oscquery import HostInfo, OscQuery

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WebConfig:
    """``host``/``port``: where the HTTP responder listens (port 0: an ephemeral one; the
    same interface as OSC by default). ``advertise``: publish by mDNS (never for a loopback
    host). ``name``: the service name controllers show (default ``riff on <hostname>``)."""

    host: str = "127.0.0.1"
    port: int = 0
    advertise: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidRequest(f"OSCQuery port must be 0..65535, not {self.port}")
        if len(self.name) > 63 or any(c in self.name for c in ".\x00"):
            raise InvalidRequest("the service name must be at most 63 characters, no dots")

    @property
    def service_name(self) -> str:
        """The name published and shown in HOST_INFO."""
        return self.name or f"riff on {socket.gethostname().split('.')[0]}"[:63]


class WebServer:
    """The running responder (and advertiser); :meth:`close` stops both."""

    def __init__(self, responder: HttpResponder, oscquery: OscQuery, monitor: Monitor,
                 advertiser: Advertiser | None) -> None:
        self.responder = responder
        self.oscquery = oscquery
        self.monitor = monitor
        self.advertiser = advertiser

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self.responder.address

    async def close(self) -> None:
        """Withdraw the mDNS records, then stop serving."""
        if self.advertiser is not None:
            try:
                await self.advertiser.close()
            except Exception:
                log.exception("withdrawing the mDNS records failed")
            self.advertiser = None
        await self.responder.close()


async def start_web(engine: ControlTarget, config: WebConfig,
                    osc_address: tuple[str, int] | None) -> WebServer:
    """Serve OSCQuery and the monitor for ``engine`` (OSC at ``osc_address``, if any)."""
    osc_host, osc_port = osc_address if osc_address is not None else (config.host, 0)
    state = engine.state
    host_info = HostInfo(config.service_name, osc_host, osc_port)
    oscquery = OscQuery(state.snapshot, engine.status, host_info)
    monitor = Monitor(engine, state.snapshot)

    def handle(request: Request) -> Response:
        answer = monitor.handle(request)
        return answer if answer is not None else oscquery.handle(request)

    responder = await HttpResponder.start(handle, config.host, config.port)
    port = responder.address[1]
    log.info("OSCQuery on http://%s:%d/ (monitor page: /monitor)", config.host, port)
    advertiser: Advertiser | None = None
    if config.advertise and osc_address is not None and not is_loopback(config.host):
        try:
            advertiser = await Advertiser.start(config.service_name, config.host, port,
                                                osc_port)
        except Exception as exc:  # no multicast here: serve anyway, say why
            log.warning("mDNS advertising failed (%s); OSCQuery still answers on port %d",
                        exc, port)
    return WebServer(responder, oscquery, monitor, advertiser)
