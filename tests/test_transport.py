"""Transport: integral, drift-free bar lines; tempo changes at the next bar line; following."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRequest
from engine.live.jobs import ClipSpec
from engine.live.transport import BBTObservation, FollowConfig, Transport

TEN_HOURS = 10 * 3600


class FakeClock:
    """An audio clock the test moves by hand."""

    def __init__(self) -> None:
        self.sample = 0

    def __call__(self) -> int:
        return self.sample


def exact_line(n: int, tempo: float, sr: int, bpb: int) -> Fraction:
    """Bar line n as an exact fraction (reference, computed without the transport)."""
    return n * Fraction(60 * sr * bpb) / Fraction(tempo)


@pytest.mark.parametrize("sr", [44100, 48000])
def test_every_bar_line_for_ten_hours_at_93_7_bpm(sr: int) -> None:
    clock = FakeClock()
    t = Transport(clock, sr, 93.7, 4)
    t.start(0)
    bars = int(TEN_HOURS * 93.7 / 60 / 4)
    spb = Fraction(60 * sr * 4) / Fraction(93.7)
    lo, hi = int(spb), int(spb) + 1
    prev = t.bar_start(0)
    assert prev == 0
    for n in range(1, bars + 1):
        line = t.bar_start(n)
        assert isinstance(line, int)
        assert lo <= line - prev <= hi  # each bar is the floor or ceiling of the exact length
        prev = line
    # After ten hours the last bar line is within half a sample of the exact one.
    assert abs(prev - exact_line(bars, 93.7, sr, 4)) <= Fraction(1, 2)
    # A naive accumulation of rounded bar lengths would have drifted by many samples.
    naive = bars * round(float(spb))
    assert abs(naive - prev) > 100


@settings(max_examples=40, deadline=None)
@given(
    tempo=st.floats(40.0, 240.0, allow_nan=False),
    sr=st.sampled_from([22050, 44100, 48000, 96000]),
    bpb=st.integers(1, 16),
    start=st.integers(0, 2**40),
    frac=st.floats(0.0, 1.0),
)
def test_bar_lines_integral_and_never_drift(
    tempo: float, sr: int, bpb: int, start: int, frac: float
) -> None:
    clock = FakeClock()
    t = Transport(clock, sr, tempo, bpb)
    t.start(start)
    last_bar = int(TEN_HOURS * tempo / 60 / bpb)
    for n in {0, 1, 2, last_bar // 3, int(last_bar * frac), last_bar - 1, last_bar}:
        line = t.bar_start(n)
        assert isinstance(line, int)
        assert abs(line - start - exact_line(n, tempo, sr, bpb)) <= Fraction(1, 2)
        assert t.bar_at(line) == n
        assert t.bar_at(line - 1) == n - 1
        assert t.next_bar_line(line - 1) == (n, line)
        assert t.next_bar_line(line) == (n + 1, t.bar_start(n + 1))
        length = t.clip_samples(n, 2)
        assert length == t.bar_start(n + 2) - line
        ClipSpec(tempo, 2, bpb, sr, length)  # the transport's lengths always validate


def test_tempo_change_takes_effect_at_the_next_bar_line() -> None:
    clock = FakeClock()
    t = Transport(clock, 48000, 120.0, 4)  # 96000 samples per bar
    t.start(0)
    clock.sample = 96000 * 3 + 10  # inside bar 3
    assert t.bar() == 3
    assert t.set_tempo(60.0) == (4, 384000)
    # Bars up to 4 keep the old grid; after that 192000 samples per bar.
    assert [t.bar_start(n) for n in range(3, 7)] == [288000, 384000, 576000, 768000]
    assert t.bar_at(575999) == 4 and t.bar_at(576000) == 5
    assert t.clip_samples(2, 2) == 192000  # old tempo for a clip starting before the change
    assert t.clip_samples(4, 2) == 384000
    assert t.tempo_at_bar(3) == (120.0, 4) and t.tempo_at_bar(4) == (60.0, 4)
    # A second change before that bar line replaces the pending one; meter merges.
    assert t.set_tempo(beats_per_bar=3) == (4, 384000)
    assert t.tempo_at_bar(4) == (60.0, 3)
    assert t.bar_start(5) == 384000 + 144000


def test_tempo_changes_re_anchor_without_drift() -> None:
    clock = FakeClock()
    t = Transport(clock, 44100, 93.7, 4)
    t.start(0)
    for k, tempo in enumerate([101.3, 77.77, 93.7, 140.01]):
        clock.sample = t.bar_start(10 * (k + 1)) + 5
        bar, line = t.set_tempo(tempo)
        assert bar == 10 * (k + 1) + 1
        n = bar + 5000
        assert abs(t.bar_start(n) - line - exact_line(5000, tempo, 44100, 4)) <= Fraction(1, 2)


def test_bad_values_change_nothing() -> None:
    clock = FakeClock()
    t = Transport(clock, 48000, 120.0, 4)
    t.start(0)
    before = t.bar_start(100)
    for bad in (0.0, -5.0, float("nan"), float("inf"), 5000.0):
        with pytest.raises(InvalidRequest):
            t.set_tempo(bad)
    with pytest.raises(InvalidRequest):
        t.set_tempo(beats_per_bar=0)
    with pytest.raises(InvalidRequest):
        t.clip_samples(0, 0)
    assert t.bar_start(100) == before and t.tempo == 120.0
    with pytest.raises(InvalidRequest):
        Transport(clock, 10, 120.0)


def test_follow_external_bbt() -> None:
    clock = FakeClock()
    t = Transport(clock, 48000, 120.0, 4,
                  follow=FollowConfig(phase_tolerance=32, tempo_tolerance=0.01, confirm=1))
    # The master is 1.5 beats into bar 7 at sample 1_000_000, at 100 BPM in 3/4.
    assert t.follow(BBTObservation(1_000_000, 7, 1.5, 100.0, 3))
    assert t.external
    assert t.bar_start(7) == 1_000_000 - 43200  # 1.5 beats of 28800 samples
    assert t.bar_start(8) == 1_000_000 - 43200 + 86400
    # Jitter within the tolerances (phase and measured tempo) changes nothing.
    version = t.version
    assert not t.follow(BBTObservation(1_000_010, 7, 1.5, 100.004, 3))
    assert t.bar_start(7) == 1_000_000 - 43200 and t.version == version
    # A tempo change on the master at its bar 9 keeps the lines before it.
    line9 = t.bar_start(9)
    assert t.follow(BBTObservation(line9 + 32000, 9, 1.0, 90.0, 3))
    assert t.bar_start(8) == 1_000_000 - 43200 + 86400 and t.bar_start(9) == line9
    assert t.bar_start(10) == line9 + 96000 and t.version == version + 1
    # A tempo change on the master re-anchors; the internal tempo control is refused.
    assert t.follow(BBTObservation(2_000_000, 20, 0.0, 110.0, 3))
    assert t.bar_start(20) == 2_000_000 and t.tempo == 110.0
    with pytest.raises(InvalidRequest):
        t.set_tempo(90.0)
    t.use_internal()
    assert t.set_tempo(90.0)[0] == t.bar_at(clock.sample) + 1
    with pytest.raises(InvalidRequest):
        BBTObservation(0, 0, 5.0, 120.0, 4)
