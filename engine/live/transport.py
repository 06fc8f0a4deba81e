"""The transport: tempo, meter, bar counter and a sample clock, with a bar grid that never drifts.

Bar lines are integers in samples. Each stretch of constant tempo and meter is a
:class:`Segment` anchored at a bar line (``bar``, ``sample``); any later bar line in it is
``sample + round((n - bar) * samples_per_bar)`` with ``samples_per_bar`` an exact fraction.
Lengths are never accumulated, so rounding never adds up: after ten hours at 93.7 BPM every bar
line is still within half a sample of its exact position.

A tempo or meter change takes effect at the next bar line: a new segment is anchored there.

The clock is injected: a callable returning the audio clock in samples (the player's
``position()``), so tests drive the transport with a fake clock.

Sources: the internal clock (default; tempo and meter from the performer) or an external
master (JACK transport BBT, MIDI clock) fed to :meth:`Transport.follow` as
:class:`BBTObservation` values; the transport then follows the master's grid.

Thread: the control plane (asyncio loop) owns a transport. ``follow`` must be called there too
(a JACK or MIDI thread hands its observations over with ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from fractions import Fraction

from engine import limits
from engine.errors import InvalidRequest

log = logging.getLogger(__name__)

MIN_TEMPO, MAX_TEMPO = limits.TEMPO_BPM
#: Segments kept for looking up past bars; older ones are forgotten.
MAX_SEGMENTS = 64


def _check_tempo(tempo: float) -> float:
    return limits.check_tempo(tempo)


def _check_meter(beats_per_bar: int) -> int:
    return limits.check_count(beats_per_bar, "beats per bar", limits.BEATS_PER_BAR)


def _round(x: Fraction) -> int:
    """Round half up (exact, no float)."""
    return math.floor(x + Fraction(1, 2))


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of constant tempo and meter, anchored at bar line ``bar`` = sample ``sample``."""

    bar: int
    sample: int
    tempo: float
    beats_per_bar: int
    sample_rate: int

    @functools.cached_property
    def samples_per_bar(self) -> Fraction:
        """Exact samples per bar (the float tempo taken at its exact binary value)."""
        return Fraction(60 * self.sample_rate * self.beats_per_bar) / Fraction(self.tempo)

    @functools.cached_property
    def samples_per_beat(self) -> Fraction:
        """Exact samples per beat."""
        return Fraction(60 * self.sample_rate) / Fraction(self.tempo)

    def bar_start(self, bar: int) -> int:
        """Sample of bar line ``bar`` in this segment's grid."""
        return self.sample + _round((bar - self.bar) * self.samples_per_bar)

    def bar_at(self, sample: int) -> int:
        """The bar containing ``sample`` in this segment's grid."""
        bar = self.bar + math.floor((sample - self.sample) / self.samples_per_bar)
        while self.bar_start(bar + 1) <= sample:
            bar += 1
        while self.bar_start(bar) > sample:
            bar -= 1
        return bar


@dataclasses.dataclass(frozen=True)
class FollowConfig:
    """Hysteresis for following an external master (:meth:`Transport.follow`).

    Why: every re-anchor moves the grid, and planned work made for the old grid may have to
    be redone; a master's measured tempo and phase jitter. An observation is out of tolerance
    when its beat is more than ``phase_tolerance`` samples off the same beat on the current
    grid or its tempo more than ``tempo_tolerance`` BPM off the grid's tempo; the grid is
    re-anchored only after ``confirm`` consecutive observations out of tolerance (one outlier
    changes nothing). A relocation (the beat more than a beat off), a meter change or a tempo
    step of more than four tolerances re-anchors at once. A small tempo error is caught by the
    phase check once it has added up, and the re-anchor then takes the master's latest
    (better) tempo.
    """

    phase_tolerance: int = 96
    tempo_tolerance: float = 0.5
    confirm: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.phase_tolerance, bool) or not isinstance(self.phase_tolerance, int) \
                or not 0 <= self.phase_tolerance <= 48_000:
            raise InvalidRequest("phase_tolerance must be 0..48000 samples")
        if not math.isfinite(self.tempo_tolerance) or not 0 <= self.tempo_tolerance <= 10:
            raise InvalidRequest("tempo_tolerance must be 0..10 BPM")
        if isinstance(self.confirm, bool) or not isinstance(self.confirm, int) \
                or not 1 <= self.confirm <= 16:
            raise InvalidRequest("confirm must be 1..16 observations")


@dataclasses.dataclass(frozen=True)
class BBTObservation:
    """An external master's position: at audio-clock ``sample`` it is ``beat`` beats into
    ``bar`` (0-based bar; ``beat`` fractional, ``0 <= beat < beats_per_bar``) at ``tempo``.

    JACK transport: bar - 1, (beat - 1) + tick / ticks_per_beat, beats_per_minute,
    beats_per_bar. MIDI clock: song position and the tempo measured from the 24 ppqn pulses.
    """

    sample: int
    bar: int
    beat: float
    tempo: float
    beats_per_bar: int

    def __post_init__(self) -> None:
        _check_tempo(self.tempo)
        _check_meter(self.beats_per_bar)
        if not math.isfinite(self.beat) or not 0.0 <= self.beat < self.beats_per_bar + 1e-9:
            raise InvalidRequest(f"beat must be in [0, {self.beats_per_bar}), not {self.beat!r}")


class Transport:
    """Tempo, meter, bar counter and sample clock (see the module docstring).

    ``clock()`` returns the audio clock in samples; it is called from the control plane only.
    """

    def __init__(
        self,
        clock: Callable[[], int],
        sample_rate: int,
        tempo: float = 120.0,
        beats_per_bar: int = 4,
        *,
        follow: FollowConfig | None = None,
    ) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1000:
            raise InvalidRequest(f"sample rate must be an integer >= 1000, not {sample_rate!r}")
        self._clock = clock
        self.sample_rate = sample_rate
        self.follow_config = follow or FollowConfig()
        #: Incremented whenever the grid changes (start, tempo/meter change, re-anchor).
        self.version = 0
        #: Grid changes made by :meth:`follow` (the first lock to a master included).
        self.reanchors = 0
        self._strikes = 0  # consecutive observations out of tolerance
        self.external = False
        self.running = False
        self._segments: list[Segment] = [
            Segment(0, 0, _check_tempo(tempo), _check_meter(beats_per_bar), sample_rate)
        ]
        self._lines: dict[int, int] = {}  # bar -> line, cleared whenever the grid changes

    # -- the clock -------------------------------------------------------------------------

    def now(self) -> int:
        """The audio clock in samples."""
        return int(self._clock())

    def bar(self) -> int:
        """The bar playing now (the bar counter)."""
        return self.bar_at(self.now())

    @property
    def tempo(self) -> float:
        """Tempo of the latest segment (the one in effect from its bar line on)."""
        return self._segments[-1].tempo

    @property
    def beats_per_bar(self) -> int:
        """Meter of the latest segment."""
        return self._segments[-1].beats_per_bar

    def segment_for_bar(self, bar: int) -> Segment:
        """The segment whose grid holds bar line ``bar``."""
        for seg in reversed(self._segments):
            if seg.bar <= bar:
                return seg
        return self._segments[0]

    def segment_at(self, sample: int) -> Segment:
        """The segment in effect at ``sample``."""
        for seg in reversed(self._segments):
            if seg.sample <= sample:
                return seg
        return self._segments[0]

    # -- the grid --------------------------------------------------------------------------

    def bar_start(self, bar: int) -> int:
        """Sample of bar line ``bar`` (an integer, exact, drift-free)."""
        line = self._lines.get(bar)
        if line is None:
            if len(self._lines) >= 256:
                self._lines.clear()
            line = self._lines[bar] = self.segment_for_bar(bar).bar_start(bar)
        return line

    def bar_at(self, sample: int) -> int:
        """The bar that contains ``sample``."""
        bar = self.segment_at(sample).bar_at(sample)
        # A later segment may start at an earlier bar line than this grid predicts.
        while self.bar_start(bar + 1) <= sample:
            bar += 1
        while bar > -(2**62) and self.bar_start(bar) > sample:
            bar -= 1
        return bar

    def next_bar_line(self, after_sample: int) -> tuple[int, int]:
        """The first bar line strictly after ``after_sample``: ``(bar, sample)``."""
        bar = self.bar_at(after_sample) + 1
        return bar, self.bar_start(bar)

    def next_beat_line(self, at_or_after: int) -> int:
        """The first beat line at or after sample ``at_or_after`` (a bar line is a beat line
        too); exact like the bar lines: beat k of bar b is ``bar_start(b)`` plus k beats,
        rounded half up."""
        bar = self.bar_at(at_or_after)
        seg = self.segment_for_bar(bar)
        line = self.bar_start(bar)
        for k in range(1, seg.beats_per_bar):
            if line >= at_or_after:
                return line
            line = self.bar_start(bar) + _round(k * seg.samples_per_beat)
        return line if line >= at_or_after else self.bar_start(bar + 1)

    def clip_samples(self, start_bar: int, bars: int) -> int:
        """Exact length in samples of ``bars`` bars from ``start_bar`` at that bar's tempo."""
        if bars < 1:
            raise InvalidRequest(f"a clip is at least one bar, not {bars}")
        seg = self.segment_for_bar(start_bar)
        return seg.bar_start(start_bar + bars) - seg.bar_start(start_bar)

    def tempo_at_bar(self, bar: int) -> tuple[float, int]:
        """``(tempo, beats_per_bar)`` in effect at bar line ``bar``."""
        seg = self.segment_for_bar(bar)
        return seg.tempo, seg.beats_per_bar

    # -- control ---------------------------------------------------------------------------

    def start(self, at_sample: int | None = None) -> None:
        """Start the internal clock: bar 0 begins at ``at_sample`` (default: now)."""
        start = self.now() if at_sample is None else int(at_sample)
        last = self._segments[-1]
        self._segments = [dataclasses.replace(last, bar=0, sample=start)]
        self._lines.clear()
        self.version += 1
        self.running = True

    def stop(self) -> None:
        """Stop counting bars (the audio clock keeps running)."""
        self.running = False

    def set_tempo(
        self, tempo: float | None = None, beats_per_bar: int | None = None, *,
        after_bar: int | None = None,
    ) -> tuple[int, int]:
        """Change tempo and/or meter at the next bar line; returns that ``(bar, sample)``.

        ``after_bar``: the change lands after this bar's line at the earliest. The scheduler
        passes the last bar line whose clip it has already handed to the player, so a change
        that arrives in the moments before a line (the clip for it is already scheduled at
        the old length) takes effect one bar later, on a grid every scheduled clip fits.
        Several changes before the same bar line merge (the latest values win). Raises
        InvalidRequest (changing nothing) for bad values or while following an external master.
        """
        if self.external:
            raise InvalidRequest("the transport follows an external clock; tempo is set there")
        last = self._segments[-1]
        new_tempo = last.tempo if tempo is None else _check_tempo(tempo)
        new_meter = last.beats_per_bar if beats_per_bar is None else _check_meter(beats_per_bar)
        bar, sample = self.next_bar_line(self.now())
        if after_bar is not None and bar <= after_bar:
            bar = after_bar + 1
            sample = self.bar_start(bar)
        # Latest wins: a change still pending at (or after) that bar line is replaced.
        while len(self._segments) > 1 and self._segments[-1].bar >= bar:
            self._segments.pop()
        seg = Segment(bar, sample, new_tempo, new_meter, self.sample_rate)
        if self._segments[-1].bar >= bar:
            self._segments[-1] = seg
        else:
            self._segments.append(seg)
        del self._segments[:-MAX_SEGMENTS]
        self._lines.clear()
        self.version += 1
        log.info("tempo %.3f BPM, %d/bar from bar %d (sample %d)", new_tempo, new_meter, bar,
                 sample)
        return bar, sample

    def follow(self, obs: BBTObservation) -> bool:
        """Follow an external master; returns True when the grid changed.

        The first observation (after the internal clock) locks the grid at once. After that,
        hysteresis (:class:`FollowConfig`): an observation within tolerance changes nothing;
        the grid is re-anchored at the observed bar's line, with the observed tempo, after
        ``confirm`` consecutive observations out of tolerance, or at once for a relocation, a
        meter change or a large tempo step. Bars before a tempo or phase correction keep their
        lines; a tempo that changes a bar by less than a sample keeps the grid's tempo.
        """
        cfg = self.follow_config
        beat_samples = _round(Fraction(obs.beat) * Fraction(60 * self.sample_rate)
                              / Fraction(obs.tempo))
        line = obs.sample - beat_samples
        current = self.segment_for_bar(obs.bar)
        # How far the observed beat is from the same beat on the current grid.
        phase = obs.sample - self.bar_start(obs.bar) - _round(Fraction(obs.beat)
                                                              * current.samples_per_beat)
        locked = self.external and self.running
        self.external = True
        self.running = True
        jump = (abs(phase) > current.samples_per_beat
                or current.beats_per_bar != obs.beats_per_bar
                or abs(current.tempo - obs.tempo) > 4 * cfg.tempo_tolerance)
        if locked and not jump:
            if (abs(current.tempo - obs.tempo) <= cfg.tempo_tolerance
                    and abs(phase) <= cfg.phase_tolerance):
                self._strikes = 0
                return False
            self._strikes += 1
            if self._strikes < cfg.confirm:
                return False
        self._strikes = 0
        tempo = obs.tempo
        if locked and not jump and abs(Fraction(60 * self.sample_rate * obs.beats_per_bar)
                                       / Fraction(tempo) - current.samples_per_bar) < 1:
            # A tempo that changes a bar by less than a sample is no tempo change: a phase
            # correction keeps the grid's tempo (and clips planned at it stay valid).
            tempo = current.tempo
            line = obs.sample - _round(Fraction(obs.beat) * current.samples_per_beat)
        seg = Segment(obs.bar, line, tempo, obs.beats_per_bar, self.sample_rate)
        if abs(current.bar_start(obs.bar) - line) < current.samples_per_bar:
            # A tempo change or phase correction: bars before it keep their lines.
            self._segments = [s for s in self._segments if s.bar < obs.bar] + [seg]
            del self._segments[:-MAX_SEGMENTS]
        else:  # a relocation: the old bar numbers mean nothing any more
            self._segments = [seg]
        self._lines.clear()
        self.version += 1
        self.reanchors += 1
        log.info("following external clock: bar %d at sample %d, %.4f BPM, %d/bar "
                 "(%+d samples off the grid)", obs.bar, line, tempo, obs.beats_per_bar, phase)
        return True

    def use_internal(self) -> None:
        """Go back to the internal clock, keeping the current grid (no jump): the tempo of
        the latest segment goes on."""
        self.external = False
        self._strikes = 0
