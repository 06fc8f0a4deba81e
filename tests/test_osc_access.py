"""OSC access control over real UDP: the allow-list (a second loopback address, 127.0.0.2,
plays the foreign device: all of 127/8 is loopback on Linux), and the file-write policy."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

import pytest

from engine.errors import InvalidRequest
from protocols.osc.access import (
    LOOPBACK,
    AccessControl,
    default_networks,
    interface_networks,
    parse_networks,
)
from protocols.osc.server import OscConfig
from protocols.surfaces import add_control_arguments, control_config_from_args
from tests.control_surface_helpers import Client, Served


class ClientFrom(Client):
    """A UDP OSC client sending from ``host`` (e.g. 127.0.0.2)."""

    def __init__(self, server: tuple[str, int], host: str) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(10)

    def pending(self) -> bool:
        """Whether anything has arrived (without waiting)."""
        self.sock.setblocking(False)
        try:
            self.sock.recvfrom(65536)
            return True
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(10)


def serve(tmp_path: Path, **kwargs: object) -> tuple[Served, tuple[str, int]]:
    served = Served(tmp_path, OscConfig(port=0, **kwargs))  # type: ignore[arg-type]
    return served, ("127.0.0.1", served.addr[1])


def test_foreign_sender_is_dropped_counted_and_logged(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.osc.access")
    osc, addr = serve(tmp_path, host="0.0.0.0", allow=("127.0.0.1/32",))
    foreign = ClientFrom(addr, "127.0.0.2")
    local = ClientFrom(addr, "127.0.0.1")
    try:
        before = osc.lt.call(osc.engine.state.snapshot)
        for _ in range(3):
            foreign.send("/riff/tempo", 99.0)
            foreign.send("/riff/subscribe")
            foreign.send("/riff/ping")
        foreign.send_raw(b"garbage!")
        # Datagrams are handled in arrival order: once the local pong is back, every foreign
        # one has been handled, and any answer to it would be waiting in its socket.
        assert local.messages_until_pong() == []
        assert not foreign.pending()
        assert osc.lt.call(osc.engine.state.snapshot) == before
        stats = osc.lt.call(osc.server.stats)
        assert stats["denied"] == 10 and stats["received"] == 1 and stats["subscribers"] == 0
        lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(lines) == 1 and "127.0.0.2" in lines[0]  # rate-limited: one line
    finally:
        foreign.close()
        local.close()
        osc.close()


def test_loopback_bind_serves_all_of_loopback_by_default(tmp_path: Path) -> None:
    osc, addr = serve(tmp_path, host="127.0.0.1")
    other = ClientFrom(addr, "127.0.0.2")
    try:
        assert other.messages_until_pong() == []
        assert osc.lt.call(osc.server.stats)["denied"] == 0
        assert osc.server.access.networks == LOOPBACK and osc.server.file_writes
    finally:
        other.close()
        osc.close()


def test_wildcard_bind_defaults_to_the_local_networks(tmp_path: Path) -> None:
    osc, addr = serve(tmp_path, host="0.0.0.0")
    other = ClientFrom(addr, "127.0.0.2")
    try:
        assert other.messages_until_pong() == []  # loopback is always local
        nets = osc.server.access.networks
        assert set(LOOPBACK) <= set(nets) and nets == default_networks("0.0.0.0")
        assert not osc.server.file_writes
    finally:
        other.close()
        osc.close()


def test_file_writes_are_off_on_a_wildcard_bind(tmp_path: Path) -> None:
    osc, addr = serve(tmp_path, host="0.0.0.0", allow=("127.0.0.0/8",))
    client = ClientFrom(addr, "127.0.0.1")
    try:
        for address, args in (("/riff/preset/save", ("mine",)), ("/riff/record/start", ()),
                              ("/riff/record/stop", ()), ("/riff/midi/learn", ("/riff/alpha",)),
                              ("/riff/record/*", ())):
            client.send(address, *args)
            replies = client.messages_until_pong()
            assert len(replies) >= 1 and all(r[0] == "/riff/error" for r in replies), address
            assert all("--osc-allow-file-writes" in r[1][1] for r in replies), replies
        client.send("/riff/preset/load", "nothing")  # reading is fine (an unknown preset)
        assert "--osc-allow" not in client.messages_until_pong()[0][1][1]
        assert not list(tmp_path.glob("*.toml"))
    finally:
        client.close()
        osc.close()


def test_file_writes_can_be_allowed_or_forbidden(tmp_path: Path) -> None:
    osc, addr = serve(tmp_path / "a", host="0.0.0.0", allow=("127.0.0.0/8",), file_writes=True)
    client = ClientFrom(addr, "127.0.0.1")
    try:
        client.send("/riff/preset/save", "mine")
        assert client.messages_until_pong() == []
        assert (tmp_path / "a" / "mine.toml").is_file()
    finally:
        client.close()
        osc.close()
    osc, addr = serve(tmp_path / "b", host="127.0.0.1", file_writes=False)
    client = ClientFrom(addr, "127.0.0.1")
    try:
        client.send("/riff/preset/save", "mine")
        [(address, (target, reason))] = client.messages_until_pong()
        assert (address, target) == ("/riff/error", "/riff/preset/save")
        assert "--osc-readonly-files" in reason
        assert not (tmp_path / "b" / "mine.toml").exists()
    finally:
        client.close()
        osc.close()


def test_networks_and_addresses() -> None:
    ip_json = ('[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},'
               '{"ifname":"eth0","addr_info":[{"family":"inet","local":"192.168.1.20",'
               '"prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]},'
               '{"ifname":"ifb0","addr_info":[]}]')
    assert [str(n) for n in interface_networks(ip_json)] == [
        "127.0.0.0/8", "192.168.1.0/24", "fe80::/64"]
    access = AccessControl(parse_networks(["192.168.1.5/24", "10.0.0.7", "fd00::/8"]))
    assert access.allows("192.168.1.200") and access.allows("10.0.0.7")
    assert access.allows("::ffff:192.168.1.9") and access.allows("fd12::3")
    assert not access.allows("192.168.2.1") and not access.allows("10.0.0.8")
    assert not access.allows("127.0.0.1") and not access.allows("not-an-ip")
    with pytest.raises(InvalidRequest, match="not a network"):
        OscConfig(allow=("192.168.1.0/33",))


def test_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    add_control_arguments(parser)
    config = control_config_from_args(parser.parse_args(
        ["--osc-host", "0.0.0.0", "--osc-allow", "10.0.0.0/8", "--osc-allow", "192.168.1.7",
         "--osc-allow-file-writes"]))
    assert config.osc is not None
    assert config.osc.allow == ("10.0.0.0/8", "192.168.1.7") and config.osc.file_writes is True
    config = control_config_from_args(parser.parse_args(["--osc-readonly-files"]))
    assert config.osc is not None and config.osc.file_writes is False
    config = control_config_from_args(parser.parse_args([]))
    assert config.osc is not None and config.osc.allow == () and config.osc.file_writes is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--osc-readonly-files", "--osc-allow-file-writes"])
    with pytest.raises(InvalidRequest):
        control_config_from_args(parser.parse_args(["--osc-allow", "nonsense"]))
