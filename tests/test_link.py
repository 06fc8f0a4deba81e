"""Ableton Link through the engine's master sync: two real Link peers in this process.

The engine's audio clock here runs on CLOCK_MONOTONIC_RAW (Link's clock on Linux), so the
phase comparison measures the follower, not a clock mismatch. Peers find each other by
Link's own UDP multicast discovery on this machine's interfaces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

aalink = pytest.importorskip("aalink", reason="aalink (Ableton Link binding) not installed")

from engine.live.control import Engine  # noqa: E402
from protocols.surfaces import ControlConfig, ControlSurfaces, start_control_surfaces  # noqa: E402
from tests.control_surface_helpers import LoopThread  # noqa: E402
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink  # noqa: E402

RATE = 48000


class RealtimeSink(FakeSink):
    """A sink whose position is the real clock Link uses, in samples."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock, RATE)
        self.origin = time.clock_gettime(time.CLOCK_MONOTONIC_RAW)

    def position(self) -> int:
        return round((time.clock_gettime(time.CLOCK_MONOTONIC_RAW) - self.origin) * RATE)


class Session:
    def __init__(self, tmp_path: Path) -> None:
        self.lt = LoopThread()
        clock = FakeClock()
        self.engine = Engine(FakeGenerator(clock), RealtimeSink(clock), sample_rate=RATE,
                             clock=clock)

        async def start() -> tuple[Any, ControlSurfaces]:
            peer = aalink.Link(100.0)
            peer.quantum = 4
            peer.enabled = True
            surfaces = await start_control_surfaces(
                self.engine, ControlConfig(osc=None, link=True, preset_dirs=(tmp_path,),
                                           check_image_ids=False))
            return peer, surfaces

        self.peer, self.surfaces = self.lt.run(start())

    def call(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()
        return self.lt.run(run())

    def wait(self, cond: Any, timeout: float) -> float:
        """Seconds until ``cond()`` (on the loop) holds; fails after ``timeout``."""
        t0 = time.monotonic()
        while not self.call(cond):
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"not within {timeout} s")
            time.sleep(0.005)
        return time.monotonic() - t0

    def close(self) -> None:
        async def stop() -> None:
            await self.surfaces.close()
            self.peer.enabled = False
            await self.engine.close()
        self.lt.run(stop())
        self.lt.close()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    s = Session(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _phase_error_ms(s: Session) -> float:
    """The engine's beat position against the peer's, at one instant, in milliseconds."""
    def measure() -> float:
        t = s.engine.transport
        peer_beat = float(s.peer.beat)
        sample = t.now()
        bar = t.bar_at(sample)
        seg = t.segment_at(sample)
        beats = bar * t.beats_per_bar + float((sample - t.bar_start(bar)) / seg.samples_per_beat)
        return (beats - peer_beat) * 60.0 / float(s.peer.tempo) * 1000.0
    return float(s.call(measure))


def test_link_tempo_phase_and_start_stop(session: Session) -> None:
    s = session
    link = s.surfaces.link
    try:
        s.wait(lambda: link.link.num_peers >= 1, 10)
    except AssertionError:
        pytest.skip("the Link peers did not find each other (no multicast here)")
    # The engine follows the session (whose tempo the first peer set).
    s.wait(lambda: s.engine.transport.external
           and abs(s.engine.transport.tempo - float(s.peer.tempo)) < 0.01, 5)
    # A tempo set on the other peer is followed here within a second.
    s.call(lambda: setattr(s.peer, "tempo", 133.0))
    s.wait(lambda: abs(s.engine.transport.tempo - 133.0) < 0.01, 1.0)
    # Beat phase: bar lines where the peer's phase is 0 (quantum 4), within 1 ms.
    time.sleep(0.2)
    errors = [_phase_error_ms(s) for _ in range(5)]
    assert max(abs(e) for e in errors) < 1.0, errors
    assert s.call(lambda: s.engine.transport.beats_per_bar) == 4
    # /riff/tempo goes to the session (not refused), and the grid follows it.
    s.call(lambda: s.engine.state.set("tempo", 90.0))
    s.wait(lambda: abs(float(s.peer.tempo) - 90.0) < 0.01, 1.0)
    s.wait(lambda: abs(s.engine.transport.tempo - 90.0) < 0.01, 1.0)
    # /riff/meter sets the quantum: bar lines every 3 beats of the session.
    s.call(lambda: s.engine.state.set("meter", 3))
    s.wait(lambda: s.engine.transport.beats_per_bar == 3, 1.0)
    time.sleep(0.2)
    assert abs(_phase_error_ms(s)) < 1.0
    # Start/stop sync: the peer starts the session, the engine plays; it stops, the engine
    # stops (--on-master-stop stop); the engine's own play starts the session.
    s.call(lambda: setattr(s.peer, "start_stop_sync_enabled", True))
    s.call(lambda: setattr(s.peer, "playing", True))
    s.wait(lambda: s.engine.scheduler.running, 2.0)
    s.call(lambda: setattr(s.peer, "playing", False))
    s.wait(lambda: not s.engine.scheduler.running, 2.0)
    s.call(s.engine.play)
    s.wait(lambda: bool(s.peer.playing), 2.0)
    assert link.errors == 0


def test_closing_link_returns_to_the_internal_clock(session: Session) -> None:
    s = session
    s.wait(lambda: s.engine.transport.external, 10)
    s.lt.run(s.surfaces.close())
    assert not s.call(lambda: s.engine.transport.external)
    s.call(lambda: s.engine.state.set("tempo", 111.0))  # accepted again, locally
    assert s.call(lambda: s.engine.transport.tempo) == pytest.approx(111.0)
