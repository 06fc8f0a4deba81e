"""Who may talk to the OSC server: an allow-list of networks, and whether OSC may write files.

Why: OSC is plain UDP with no authentication. Bound to ``0.0.0.0`` on a stage network (what the
TouchOSC instructions need), any device there could otherwise record takes, save presets,
start MIDI learn or point feedback at a spoofed address. So every datagram's source address is
checked against an allow-list before it is parsed (denied ones are dropped without a reply, so
the server never reflects traffic to a forged source, and counted, with a rate-limited log
line), and commands that write files can be turned off.

Defaults: a loopback bind (``127.0.0.1``, ``::1``, ``localhost``) allows loopback only; any
other bind allows the networks of this machine's interfaces (from ``ip -j addr``; loopback
only, with a warning, when that cannot be read). File writes over OSC are on for loopback
binds and off otherwise, unless asked for.

Thread: :class:`AccessControl` is used on the asyncio loop only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterable
from typing import Any

from engine.errors import InvalidRequest

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Every loopback address (all of 127/8 on Linux, and ::1).
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128"))


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """``CIDR`` strings (``192.168.1.0/24``, ``10.0.0.7``, ``fd00::/8``) as networks; host
    bits are allowed (``192.168.1.5/24`` means its /24). Raises InvalidRequest."""
    out: list[Network] = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise InvalidRequest(f"--osc-allow {cidr!r} is not a network: {exc}") from None
    return tuple(out)


def is_loopback_host(host: str) -> bool:
    """Whether binding to ``host`` listens on loopback only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def interface_networks(ip_json: str) -> tuple[Network, ...]:
    """The networks of the interfaces in ``ip -j addr`` output (addresses with prefixes)."""
    out: list[Network] = []
    for iface in json.loads(ip_json):
        for addr in iface.get("addr_info", []):
            local, prefix = addr.get("local"), addr.get("prefixlen")
            if isinstance(local, str) and isinstance(prefix, int):
                try:
                    out.append(ipaddress.ip_network(f"{local}/{prefix}", strict=False))
                except ValueError:
                    log.debug("interface address %s/%s skipped", local, prefix)
    return tuple(out)


def local_networks() -> tuple[Network, ...]:
    """Loopback plus the networks of this machine's interfaces; loopback only (with a
    warning) when ``ip`` is missing or fails. Runs ``ip`` once (at server start)."""
    ip = shutil.which("ip")
    if ip is None:
        log.warning("OSC: 'ip' not found, cannot list local networks; allowing loopback only "
                    "(use --osc-allow CIDR)")
        return LOOPBACK
    try:
        text = subprocess.run([ip, "-j", "addr"], capture_output=True, text=True, timeout=5,
                              check=True).stdout
        found = interface_networks(text)
    except (OSError, subprocess.SubprocessError, ValueError, AttributeError) as exc:
        log.warning("OSC: cannot list local networks (%s); allowing loopback only "
                    "(use --osc-allow CIDR)", exc)
        return LOOPBACK
    return tuple(dict.fromkeys((*LOOPBACK, *found)))


def default_networks(host: str) -> tuple[Network, ...]:
    """The allow-list for a bind to ``host`` when none is given (see the module docstring)."""
    return LOOPBACK if is_loopback_host(host) else local_networks()


class AccessControl:
    """Decides per source address whether a datagram is served; counts and logs the rest.

    Decisions are cached per address (bounded), so a flood costs one dict lookup per
    datagram. Denials are logged at most once per ``log_every_s`` (the first one at once),
    with the count since the last line.
    """

    max_cache = 4096

    def __init__(self, networks: Iterable[Network], *, log_every_s: float = 10.0) -> None:
        self.networks = tuple(networks)
        self.log_every_s = log_every_s
        self.denied = 0
        self._cache: dict[str, bool] = {}
        self._unlogged = 0
        self._last_log = -float("inf")

    def allows(self, host: str) -> bool:
        """Whether datagrams from ``host`` (an IP address string) are served."""
        hit = self._cache.get(host)
        if hit is None:
            hit = self._check(host)
            if len(self._cache) >= self.max_cache:
                self._cache.clear()
            self._cache[host] = hit
        return hit

    def _check(self, host: str) -> bool:
        try:
            addr: Any = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(addr.version == net.version and addr in net for net in self.networks)

    def deny(self, peer: tuple[str, int]) -> None:
        """Count a dropped datagram from ``peer`` and log it, rate-limited."""
        self.denied += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            log.warning("OSC from %s:%d dropped: not in the allowed networks (%s); %d dropped "
                        "since the last such line, %d in all", peer[0], peer[1],
                        self.describe(), self._unlogged, self.denied)
            self._unlogged = 0
            self._last_log = now

    def describe(self) -> str:
        """The allowed networks, for log lines."""
        return ", ".join(str(n) for n in self.networks) or "none"
