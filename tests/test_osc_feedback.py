"""OSC feedback rules over real UDP: where replies go, seed image id checks, the hold on the
peer moving an address, and generation failures reaching subscribers.

Clients are real sockets. A "send-only" client opens a fresh socket (a new ephemeral port)
for every message, as Pd's ``[netsend]`` and liblo's ``oscsend`` do, and listens on another
port that it subscribed with ``/riff/subscribe <port>``. One test drives the real ``oscsend``
and ``oscdump`` binaries (liblo-tools) when they are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import UnknownId
from engine.live.control import Engine
from engine.live.state import PARAMETERS
from engine.presets import Preset, PresetLibrary
from protocols.control_target import Commands, library_id_check
from protocols.osc.server import OscConfig, OscServer, build_message
from tests.control_surface_helpers import Client, LoopThread, Served, served
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink
from tests.test_osc import seed_library


def send_once(server: tuple[str, int], address: str, *args: Any) -> None:
    """Send one message from a fresh socket (a throwaway port), then close it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(build_message(address, args), server)


def read_until(client: Client, address: str, pred: Any = lambda params: True
               ) -> list[tuple[str, list[Any]]]:
    """Everything ``client`` receives up to and including a message at ``address`` whose
    params satisfy ``pred`` (the socket's 10 s timeout fails the test otherwise)."""
    out: list[tuple[str, list[Any]]] = []
    while True:
        for m in client.recv():
            out.append((m.address, list(m.params)))
            if m.address == address and pred(list(m.params)):
                return out


def drain(client: Client) -> list[tuple[str, list[Any]]]:
    """Everything queued for ``client``, up to the pong of its own ping.

    The client must be a subscriber (its ping is then answered to it alone)."""
    return client.messages_until_pong()


serving = contextlib.contextmanager(served)


@pytest.fixture
def osc(tmp_path: Path) -> Iterator[Served]:
    yield from served(tmp_path, image_ids=library_id_check(seed_library(tmp_path)))


def test_send_only_client_gets_replies_on_its_subscribed_port(osc: Served) -> None:
    listener = osc.client()  # the port the send-only client listens on; it never sends
    touchosc = osc.client()  # a bare subscriber on the same host (sends and listens on one)
    touchosc.send("/riff/subscribe")
    assert "/riff/alpha" in dict(drain(touchosc))
    send_once(osc.addr, "/riff/subscribe", listener.port)
    initial = read_until(listener, "/riff/status/bar")
    assert dict(initial)["/riff/alpha"] == [0.0]
    # Every reply to a throwaway port also reaches the subscribed listening port.
    send_once(osc.addr, "/riff/ping")
    assert read_until(listener, "/riff/pong")[-1] == ("/riff/pong", [])
    send_once(osc.addr, "/riff/tempo", 999)
    (error,) = read_until(listener, "/riff/error")
    assert error[1][0] == "/riff/tempo" and "between" in error[1][1]
    send_once(osc.addr, "/riff/seed", 7)
    send_once(osc.addr, "/riff/state", 1.0)  # what a TouchOSC button (or oscsend f 1) sends
    state = dict(read_until(listener, "/riff/transition_clips"))
    assert state["/riff/seed"] == [7]
    assert set(state) >= {spec.address for spec in PARAMETERS.values()}
    send_once(osc.addr, "/riff/state")
    assert dict(read_until(listener, "/riff/transition_clips"))["/riff/seed"] == [7]
    # The bare subscriber got the seed change as feedback, but none of the other client's
    # replies: it is not listening for anyone else.
    seen = drain(touchosc)
    assert ("/riff/seed", [7]) in seen
    assert {a for a, _ in seen} <= {spec.address for spec in PARAMETERS.values()} | {
        f"/riff/status/{k}" for k in ("bar", "queue", "late", "progress", "clip")}
    # A subscriber's own messages are answered to it once, not to other listeners.
    touchosc.send("/riff/tempo", 999)
    assert [a for a, _ in drain(touchosc)] == ["/riff/error"]
    send_once(osc.addr, "/riff/unsubscribe", listener.port)
    send_once(osc.addr, "/riff/ping")
    touchosc.send("/riff/seed", 8)
    assert drain(touchosc) == []  # touchosc moves seed: no echo to it during the hold
    # The listener is gone: nothing after the unsubscribe (pong included) reached it.
    listener.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        listener.recv()


def test_unknown_seed_image_or_mask_changes_nothing(osc: Served, tmp_path: Path) -> None:
    client = osc.client()
    watcher = osc.client()
    watcher.send("/riff/subscribe")
    drain(watcher)
    before = osc.lt.call(osc.engine.state.snapshot)
    client.send("/riff/seed_image", "nosuchseed")
    client.send("/riff/mask", "nosuchmask")
    client.send("/riff/seed{_image,/b}", "nosuchseed")  # a pattern: seed/b takes a number
    replies = client.messages_until_pong()
    assert [r[0] for r in replies] == ["/riff/error"] * 4
    (seed_where, seed_reason), (mask_where, mask_reason) = replies[0][1], replies[1][1]
    assert seed_where == "/riff/seed_image" and "unknown seed image 'nosuchseed'" in seed_reason
    assert mask_where == "/riff/mask" and "unknown mask 'nosuchmask'" in mask_reason
    assert "seed image" not in mask_reason
    assert osc.lt.call(osc.engine.state.snapshot) == before
    # A preset naming an unknown seed image is refused whole.
    PresetLibrary([tmp_path]).save("broken", Preset({"prompt": "x", "seed_image": "gone"}))
    client.send("/riff/preset/load", "broken")
    (reply,) = client.messages_until_pong()
    assert reply[0] == "/riff/error" and "unknown seed image 'gone'" in reply[1][1]
    assert osc.lt.call(osc.engine.state.snapshot) == before
    # Nothing was echoed to the subscriber as if it were valid.
    assert drain(watcher) == []
    # Ids the library holds are accepted (a mask and a seed share the library); "" clears.
    client.send("/riff/seed_image", "vibes")
    client.send("/riff/mask", "mask_soft")
    client.send("/riff/mask", "")
    assert client.messages_until_pong() == []
    assert osc.lt.call(lambda: osc.engine.state.get("seed_image")) == "vibes"
    assert dict(read_until(watcher, "/riff/mask", lambda p: p == [""]))[
        "/riff/seed_image"] == ["vibes"]


def test_moving_peer_gets_no_echo_while_others_do(tmp_path: Path) -> None:
    # A 30 s hold: "within the hold" holds for the whole test however slow the machine is.
    with serving(tmp_path, OscConfig(port=0, feedback_hold_s=30)) as s:
        mover = s.client()  # TouchOSC: sends and listens on one port
        other = s.client()
        listener = s.client()  # a send-only client's listening port
        for c in (mover, other):
            c.send("/riff/subscribe")
            drain(c)
        send_once(s.addr, "/riff/subscribe", listener.port)
        read_until(listener, "/riff/status/bar")
        values = [round(0.01 * (i + 1), 2) for i in range(20)]
        for v in values:
            mover.send("/riff/alpha", v)
        got = read_until(other, "/riff/alpha", lambda p: abs(p[0] - values[-1]) < 1e-6)
        assert len([a for a, _ in got if a == "/riff/alpha"]) < len(values)  # coalesced
        # The other subscriber has the last value, so every send of it is done; the mover
        # got none of its own values back.
        assert [a for a, _ in drain(mover) if a == "/riff/alpha"] == []
        # The other subscriber's move reaches it... but while the mover holds alpha, not
        # the mover (its fader is under a finger); other addresses reach the mover.
        other.send("/riff/alpha", 0.9)
        other.send("/riff/guidance", 3)
        read_until(listener, "/riff/alpha", lambda p: abs(p[0] - 0.9) < 1e-6)
        assert [a for a, _ in drain(mover)] == ["/riff/guidance"]
        assert "/riff/alpha" not in dict(drain(other))
        # A send-only client moving seed: its listening port is skipped, the others are not.
        for seed in (11, 12, 13):
            send_once(s.addr, "/riff/seed", seed)
        read_until(mover, "/riff/seed", lambda p: p == [13])
        read_until(other, "/riff/seed", lambda p: p == [13])
        other.send("/riff/tempo", 100)  # another client's change reaches the listener
        assert [a for a, _ in read_until(listener, "/riff/tempo")
                if a in ("/riff/seed", "/riff/alpha")] == []
        stats = s.lt.call(s.server.stats)
        assert stats["feedback_held"] >= 3


def test_hold_ends_with_the_latest_value(tmp_path: Path) -> None:
    # After the hold, a peer that was skipped gets the latest value once: its value labels
    # catch up, and a value another controller set meanwhile is not lost.
    with serving(tmp_path, OscConfig(port=0, feedback_hold_s=0.3)) as s:
        mover, other = s.client(), s.client()
        for c in (mover, other):
            c.send("/riff/subscribe")
            drain(c)
        mover.send("/riff/alpha", 0.25)
        other.send("/riff/alpha", 0.75)
        # Within the hold or not (a slow machine), the mover ends on the value set last.
        got = read_until(mover, "/riff/alpha", lambda p: abs(p[0] - 0.75) < 1e-6)
        assert all(abs(p[0] - 0.75) < 1e-6 for a, p in got if a == "/riff/alpha")
        time.sleep(1.0)  # generous: both holds are over
        mover.send("/riff/denoising", 0.5)  # a later change by the mover is not held back
        other.send("/riff/alpha", 0.5)
        read_until(mover, "/riff/alpha", lambda p: abs(p[0] - 0.5) < 1e-6)
        read_until(other, "/riff/denoising", lambda p: abs(p[0] - 0.5) < 1e-6)


def test_generation_failure_reaches_subscribers(tmp_path: Path) -> None:
    # The real engine facade (scheduler, planner, transport) with a GPU-less generator whose
    # next job fails for good, as a clip with a missing seed image does.
    lt = LoopThread()
    clock = FakeClock()
    gen = FakeGenerator(clock)
    gen.failures.append(UnknownId("unknown seed image 'gone'"))
    engine = Engine(gen, FakeSink(clock, 48000), sample_rate=48000, clock=clock)

    async def start() -> tuple[OscServer, asyncio.Task[None]]:
        task = asyncio.ensure_future(engine.run())
        server = await OscServer.start(Commands(engine, PresetLibrary([tmp_path])),
                                       OscConfig(port=0))
        return server, task

    server, task = lt.run(start())
    client = Client(server.address)
    try:
        client.send("/riff/subscribe")
        initial = dict(client.messages_until_pong())
        assert initial["/riff/status/failed"] == [0] and initial["/riff/status/error"] == [""]
        client.send("/riff/steps", 10)
        client.send("/riff/play")
        assert "/riff/error" not in dict(client.messages_until_pong())
        assert lt.call(lambda: (engine.state.get("steps"), engine.scheduler.running)) \
            == (10, True)
        lt.run(clock.run_until(lambda: engine.scheduler.counters.abandoned >= 1, 60, 0.05))
        seen = dict(read_until(client, "/riff/status/error",
                               lambda p: "unknown seed image 'gone'" in p[0]))
        if "/riff/status/failed" not in seen:
            seen.update(read_until(client, "/riff/status/failed"))
        assert seen["/riff/status/failed"][0] >= 1
    finally:
        client.close()
        lt.run(server.close())
        lt.run(engine.close())
        task.cancel()
        lt.close()


OSC_TOOLS = shutil.which("oscsend") is not None and shutil.which("oscdump") is not None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(not OSC_TOOLS, reason="liblo-tools (oscsend, oscdump) is not installed; "
                    "scripts/setup installs it as root (apt-get install liblo-tools)")
def test_real_oscsend_and_oscdump(osc: Served) -> None:
    port = _free_udp_port()
    dump = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert dump.stdout is not None
        for line in dump.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    host, server_port = osc.addr[0], str(osc.addr[1])

    def oscsend(address: str, *typed: str) -> None:
        subprocess.run(["oscsend", host, server_port, address, *typed], check=True,
                       timeout=30)

    def expect(needle: str, resend: tuple[str, ...] | None = None) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if resend is not None:  # oscdump may still be starting: ask again
                oscsend(*resend)
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            while needle not in line:
                line = lines.get(timeout=10)
            return line
        raise AssertionError(f"oscdump never printed {needle!r}")

    try:
        oscsend("/riff/subscribe", "i", str(port))
        expect("/riff/pong", resend=("/riff/ping",))
        oscsend("/riff/seed_image", "s", "nosuchseed")
        line = expect("/riff/error")
        assert "/riff/seed_image" in line and "unknown seed image" in line
        assert osc.lt.call(lambda: osc.engine.state.get("seed_image")) == "og_beat"
        oscsend("/riff/seed", "i", "77")
        oscsend("/riff/state", "f", "1.0")
        expect("/riff/seed i 77")
        expect("/riff/transition_clips")
    finally:
        dump.terminate()
        dump.wait(10)
