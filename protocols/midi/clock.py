"""MIDI clock in: 24 ticks per quarter note -> tempo, start/stop/continue, song position.

The clock turns raw realtime bytes with timestamps into :class:`ClockObservation` events for
whoever follows it. A transport that follows MIDI clock (``engine.live.transport``) needs only
``observe(observation)``; :class:`StateFollower` is the simple follower used when no transport
hook is given: it sets the ``tempo`` parameter and starts/stops the engine.
:class:`TransportFollower` locks the engine's transport (``engine.live.transport.Transport``) to the
master's grid: tempo and bar phase.

Tempo estimate: the mean tick interval over a sliding window of ``smoothing_beats`` beats
(2 by default), computed from the window's first and last timestamps. Jitter of a few ms on
single ticks (USB MIDI, rtmidi threads) is divided by the whole window, a tempo change is fully
taken within the window, and with JACK MIDI timestamps (sample-accurate) it is exact. Tempo
observations are reported when the estimate moves by ``min_change_bpm`` or more.

Thread: :meth:`MidiClock.handle` and every observer run on the asyncio loop.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

from engine.errors import RiffError
from engine.live.state import PARAMETERS

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 24
CLOCK, START, CONTINUE, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2

ObservationKind = Literal["tempo", "start", "continue", "stop", "position", "beat"]


@dataclasses.dataclass(frozen=True)
class ClockObservation:
    """One thing learned from the clock.

    ``time``: seconds on the input's clock (JACK frame time / rate, or monotonic) when the
    byte arrived. ``beats``: quarter notes since song start at that moment. ``bpm``: the
    smoothed tempo (0 until known). ``running``: between start/continue and stop.
    """

    kind: ObservationKind
    time: float
    beats: float
    bpm: float
    running: bool


class ClockObserver(Protocol):
    """Anything that follows MIDI clock (the transport, or :class:`StateFollower`).

    Called on the asyncio loop; must not block.
    """

    def observe(self, observation: ClockObservation) -> None: ...


class MidiClock:
    """Turns clock bytes into observations for ``observer``."""

    def __init__(self, observer: ClockObserver, *, smoothing_beats: float = 2.0,
                 min_change_bpm: float = 0.05) -> None:
        self.observer = observer
        self.min_change_bpm = min_change_bpm
        self.running = False
        self.ticks = 0  # ticks since song start (song position * 6 after a jump)
        self.bpm = 0.0
        window = max(2, round(TICKS_PER_BEAT * smoothing_beats))
        self._times: collections.deque[float] = collections.deque(maxlen=window + 1)
        self._reported_bpm = 0.0

    def _emit(self, kind: ObservationKind, t: float) -> None:
        self.observer.observe(ClockObservation(kind, t, self.ticks / TICKS_PER_BEAT,
                                               self.bpm, self.running))

    def handle(self, data: bytes | tuple[int, ...], t: float) -> bool:
        """Handle one message if it is clock-related; returns whether it was."""
        status = data[0]
        if status == CLOCK:
            self._tick(t)
        elif status == START:
            self.running, self.ticks = True, 0
            self._emit("start", t)
        elif status == CONTINUE:
            self.running = True
            self._emit("continue", t)
        elif status == STOP:
            self.running = False
            self._emit("stop", t)
        elif status == SONG_POSITION and len(data) == 3:
            self.ticks = ((data[2] << 7) | data[1]) * 6  # sixteenth notes -> ticks
            self._emit("position", t)
        else:
            return False
        return True

    def _tick(self, t: float) -> None:
        times = self._times
        # 0.2 s per tick is 12.5 BPM: a gap that long (or time going back) means the clock
        # stopped and resumed; measure afresh.
        if times and not 0 < t - times[-1] < 0.2:
            times.clear()
        times.append(t)
        intervals = len(times) - 1
        if intervals:
            self.bpm = 60.0 * intervals / (TICKS_PER_BEAT * (times[-1] - times[0]))
        if self.running:
            self.ticks += 1
        if intervals >= TICKS_PER_BEAT // 2 and (
                abs(self.bpm - self._reported_bpm) >= self.min_change_bpm):
            self._reported_bpm = self.bpm
            self._emit("tempo", t)
        if self.running and self.ticks % TICKS_PER_BEAT == 0:
            self._emit("beat", t)


class StateFollower:
    """Follows the clock through the control surface: tempo parameter, play and stop.

    ``set_tempo(bpm)`` and ``play()``/``stop()`` are the surface's commands.
    """

    def __init__(self, set_tempo: Callable[[float], object], play: Callable[[], None],
                 stop: Callable[[], None]) -> None:
        self._set_tempo = set_tempo
        self._play = play
        self._stop = stop
        spec = PARAMETERS["tempo"]
        self._lo = float(spec.lo or 0)
        self._hi = float(spec.hi or 1000)
        self.errors = 0

    def observe(self, observation: ClockObservation) -> None:
        """Apply one observation (asyncio loop)."""
        try:
            if observation.kind == "tempo" and observation.bpm > 0:
                bpm = min(max(observation.bpm, self._lo), self._hi)
                self._set_tempo(round(bpm, 2))
            elif observation.kind in ("start", "continue"):
                self._play()
            elif observation.kind == "stop":
                self._stop()
        except RiffError as exc:
            self.errors += 1
            log.warning("MIDI clock %s not applied: %s", observation.kind, exc)


class FollowsClock(Protocol):
    """The slice of ``engine.live.transport.Transport`` that :class:`TransportFollower` drives."""

    @property
    def beats_per_bar(self) -> int: ...

    def now(self) -> int: ...

    def follow(self, obs: Any) -> bool: ...


class TransportFollower:
    """Follows the clock with the engine's transport: its bar grid locks to the master's.

    Each beat (and each tempo change or song position jump) becomes a
    ``engine.live.transport.BBTObservation`` at the transport's current sample, so the grid follows
    the master's tempo and phase; start/continue and stop play and stop the engine. While the
    master is stopped its tempo still arrives; it goes to ``tempo_follower`` (the tempo
    parameter), since there is no phase to lock to.
    """

    def __init__(self, transport: FollowsClock, play: Callable[[], None],
                 stop: Callable[[], None], tempo_follower: StateFollower | None = None) -> None:
        from engine.live.transport import BBTObservation

        self._make = BBTObservation
        self.transport = transport
        self.tempo_follower = tempo_follower
        self._play = play
        self._stop = stop
        self.errors = 0

    def observe(self, observation: ClockObservation) -> None:
        """Apply one observation (asyncio loop)."""
        try:
            if observation.kind in ("start", "continue"):
                self._play()
            elif observation.kind == "stop":
                self._stop()
            elif observation.kind == "tempo" and not observation.running:
                if self.tempo_follower is not None:
                    self.tempo_follower.observe(observation)
            elif observation.bpm > 0 and observation.running:
                meter = self.transport.beats_per_bar
                beats = observation.beats
                self.transport.follow(self._make(
                    sample=self.transport.now(), bar=int(beats // meter), beat=beats % meter,
                    tempo=round(observation.bpm, 3), beats_per_bar=meter))
        except RiffError as exc:
            self.errors += 1
            log.warning("MIDI clock %s not followed: %s", observation.kind, exc)
