"""mDNS/DNS-SD (zeroconf) records, so OSCQuery clients on the network find the engine.

Two services, as OSCQuery clients (ossia score, Chataigne, VRChat-style tools) browse for
them: ``_oscjson._tcp`` (the OSCQuery HTTP server) and ``_osc._udp`` (the OSC port), both
under the same instance name. Names that clash with another host's are renamed by zeroconf.

Only on a real interface: advertising a loopback-only service would send clients to an
address they cannot reach, so :func:`start_web` skips it for a loopback ``--osc-host``.

Thread: :meth:`Advertiser.start` and :meth:`~Advertiser.close` run on the asyncio loop
(``AsyncZeroconf`` does its network I/O there).
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import ifaddr
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

log = logging.getLogger(__name__)

OSCQUERY_TYPE = "_oscjson._tcp.local."
OSC_TYPE = "_osc._udp.local."


def advertised_addresses(host: str) -> list[str]:
    """The IPv4 addresses to publish for a service bound to ``host``: ``host`` itself, or
    every non-loopback IPv4 address of this machine for a wildcard bind."""
    ip = ipaddress.ip_address(host) if _is_ip(host) else None
    if ip is not None and not ip.is_unspecified:
        return [str(ip)]
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for addr in adapter.ips:
            if isinstance(addr.ip, str) and not ipaddress.ip_address(addr.ip).is_loopback:
                found.append(addr.ip)
    return found


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.x, ::1, localhost)."""
    if host == "localhost":
        return True
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback


class Advertiser:
    """The registered records; :meth:`close` withdraws them."""

    def __init__(self, zc: AsyncZeroconf, infos: list[ServiceInfo]) -> None:
        self.zc = zc
        self.infos = infos

    @classmethod
    async def start(cls, name: str, host: str, http_port: int, osc_port: int) -> Advertiser:
        """Register ``name`` for the OSCQuery HTTP port and the OSC port on ``host``."""
        addresses = [socket.inet_aton(a) for a in advertised_addresses(host)]
        server = f"{socket.gethostname().split('.')[0]}.local."
        properties = {"txtvers": "1"}
        infos = [ServiceInfo(kind, f"{name}.{kind}", port=port, addresses=addresses,
                             server=server, properties=properties)
                 for kind, port in ((OSCQUERY_TYPE, http_port), (OSC_TYPE, osc_port))]
        zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        try:
            for info in infos:
                await zc.async_register_service(info, allow_name_change=True)
        except BaseException:
            await zc.async_close()
            raise
        log.info("OSCQuery advertised by mDNS as %r (%s)", infos[0].name,
                 ", ".join(advertised_addresses(host)) or "no address")
        return cls(zc, infos)

    async def close(self) -> None:
        """Withdraw the records and stop zeroconf."""
        try:
            await self.zc.async_unregister_all_services()
        finally:
            await self.zc.async_close()
