"""The ring copy's render thread (no JACK needed): its adaptive look-ahead and what it records
about being held up, with an injected clock and the callback's read counter moved by hand."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.audio import jack_rt
from protocols.audio.jack_rt import RenderAhead, RtTable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(max_ahead: int | None) -> tuple[RenderAhead, RtTable, Clock, list[int]]:
    table = RtTable(2, 16384)
    clock = Clock()
    rendered: list[int] = []

    def render(bufs: list[np.ndarray]) -> None:
        rendered.append(len(bufs[0]))
        for b in bufs:
            b.fill(0.5)

    r = RenderAhead(table, render, ahead=2048, block=256, sample_rate=48000,
                    max_ahead=max_ahead, relax_s=10.0, clock=clock)
    return r, table, clock, rendered


def consume(table: RtTable, frames: int) -> None:
    """What the callback does to the counters when it plays ``frames``."""
    table.ctl[jack_rt.READ] += min(frames, int(table.ctl[jack_rt.WRITE] - table.ctl[jack_rt.READ]))


def test_a_late_wake_doubles_the_look_ahead_and_calm_halves_it_again() -> None:
    r, table, clock, _ = make(max_ahead=8192)
    r.fill()  # as JackOutput.start does before the thread's first wake
    r._wake()
    assert r.target == 2048 and table.ctl[jack_rt.WRITE] - table.ctl[jack_rt.READ] == 2048
    clock.now = 0.2  # held up 200 ms: the callback drained the ring
    consume(table, 9600)
    r._wake()
    assert r.target == 4096 and r.late_wakes == 1 and r.min_level == 0
    assert r.max_gap_s == pytest.approx(0.2) and r.gaps == [(0.2, pytest.approx(0.2))]
    r.fill()
    assert table.ctl[jack_rt.WRITE] - table.ctl[jack_rt.READ] == 4096
    clock.now = 0.4
    consume(table, 4096)
    r._wake()
    assert r.target == 8192  # again: doubled up to the limit
    r.fill()
    consume(table, 8192)
    r._wake()
    assert r.target == 8192  # never past it
    r.fill()
    for step in range(1, 12):  # calm: the ring stays full
        clock.now = 0.4 + step * 1.0
        consume(table, 256)
        r._wake()
        r.fill()
    assert r.target == 4096  # halved once after 10 s without a late wake
    clock.now += 11
    r._wake()
    assert r.target == 2048


def test_without_a_limit_the_look_ahead_stays_fixed() -> None:
    r, table, clock, rendered = make(max_ahead=None)
    r.fill()
    r._wake()
    clock.now = 0.5
    consume(table, 48000)
    r._wake()
    r.fill()
    assert r.target == 2048 and r.late_wakes == 1
    assert sum(rendered) == 2048 + 2048
    with pytest.raises(ValueError, match="max_ahead"):
        RenderAhead(table, lambda b: None, ahead=2048, block=256, sample_rate=48000,
                    max_ahead=1024)
