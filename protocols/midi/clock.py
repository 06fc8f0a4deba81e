"""MIDI clock in: 24 ticks per quarter note -> tempo and phase, start/stop/continue, song position.

The clock turns raw realtime bytes with timestamps into :class:`ClockObservation` events for
whoever follows it. :class:`TransportFollower` locks the engine's transport
(``engine.live.transport.Transport``, through ``engine.live.sync.MasterSync``) to the
master's grid: tempo and bar phase, start/stop and "master gone". :class:`StateFollower` is the
simple follower used when there is no transport: it sets the ``tempo`` parameter and
starts/stops the engine.

Why a filter: tick timestamps jitter (USB MIDI through rtmidi: +-0.5 ms easily; a thread that
stamps on arrival adds its own scheduling delay). A tempo measured from raw intervals wanders
by whole BPM and moved the grid dozens of times a minute. :class:`TickFilter` is a second-order
delay-locked loop (DLL) on the tick timestamps: it predicts the next tick, and each tick's error
corrects the predicted phase (gain ``alpha``) and the period (gain ``beta``). Its gains follow the
expanding-memory schedule of a least-squares line fit (``alpha = 2(2k+1)/((k+1)(k+2))``,
``beta = 6/((k+1)(k+2))`` after ``k`` ticks), so it locks within a beat and then narrows to a
bandwidth of a few hundredths of a hertz (``max_memory_ticks``): under +-1 ms of jitter the
tempo is good to about 1e-5 and the filtered tick time to a few tens of microseconds. When the
smoothed error shows a real change (a tempo step or ramp on the master, not jitter) the memory
is cut back to ``reset_ticks`` and the loop follows quickly again.

Phase: a tick's position is exact (the first clock after Start is song position 0; Song
Position Pointer names the position of the next clock), and its time is the filtered time of the
event, converted to the audio clock by a :class:`Timebase` (JACK MIDI: the event's frame time;
rtmidi: its monotonic time stamp), never the moment the loop handles the message.

Thread: :meth:`MidiClock.handle` and every observer run on the asyncio loop.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Literal, Protocol

from engine.errors import InvalidRequest, RiffError
from engine.live.state import PARAMETERS
from engine.live.transport import BBTObservation

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 24
SOURCE = "MIDI clock"
CLOCK, START, CONTINUE, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2

ObservationKind = Literal["tick", "tempo", "start", "continue", "stop", "position", "beat"]


@dataclasses.dataclass(frozen=True)
class ClockConfig:
    """The tick filter and when observations are reported.

    ``max_memory_ticks``: the DLL's longest memory (its narrowest bandwidth), in ticks.
    ``reset_ticks``: the memory it falls back to when the master's tempo really changes.
    ``lock_ticks``: ticks before the tempo is trusted (no beat observation before).
    ``change_jitter_ratio`` and ``change_floor_s``: a change is declared when the error
    smoothed over ``change_window_ticks`` exceeds ``change_jitter_ratio`` times the measured
    jitter (RMS tick error) and at least ``change_floor_s``.
    ``min_change_bpm``: a ``tempo`` observation is reported when the filtered tempo moved this
    much since the last one, or 0.005 BPM after 4 beats (the estimate refined; for
    :class:`StateFollower`, which rounds to 0.01 BPM). ``observe_ticks``: a ``beat``
    observation (a position for the transport) every this many ticks (6: each sixteenth), so a
    tempo change on the master is confirmed within a fraction of a beat.
    """

    max_memory_ticks: int = 24 * 32
    reset_ticks: int = 12
    lock_ticks: int = 2 * TICKS_PER_BEAT
    change_window_ticks: int = 12
    change_jitter_ratio: float = 1.0
    change_floor_s: float = 0.00025
    min_change_bpm: float = 0.05
    observe_ticks: int = 6

    def __post_init__(self) -> None:
        if not 2 <= self.reset_ticks <= self.max_memory_ticks <= 100_000:
            raise InvalidRequest("need 2 <= reset_ticks <= max_memory_ticks <= 100000")
        if not 2 <= self.lock_ticks <= 24 * 16:
            raise InvalidRequest("lock_ticks must be 2..384")
        if self.observe_ticks not in (1, 2, 3, 4, 6, 8, 12, 24):
            raise InvalidRequest("observe_ticks must divide 24")
        if not 1 <= self.change_window_ticks <= 1000:
            raise InvalidRequest("change_window_ticks must be 1..1000")
        for name in ("change_jitter_ratio", "change_floor_s", "min_change_bpm"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InvalidRequest(f"{name} must be a positive number, not {value!r}")


class TickFilter:
    """A DLL on tick timestamps (see the module docstring): filtered time and period.

    Thread: the asyncio loop (through :class:`MidiClock`).
    """

    #: A tick more than this many periods late, or earlier than half a period, restarts the
    #: filter (the clock stopped and resumed, or the time base jumped); one 0.75 to this many
    #: periods late comes after lost ticks, which are counted.
    GAP_PERIODS = 4.0

    def __init__(self, config: ClockConfig) -> None:
        self.config = config
        self.n = 0  # ticks absorbed since the last restart
        self.k = 0  # the memory in use (n, cut back on a change)
        self.period = 0.0
        self.time = 0.0  # filtered time of the latest tick
        self.changes = 0
        self.lost = 0
        self._rephase = False
        self._predicted = 0.0
        self._smoothed = 0.0
        self._jitter2 = 0.0

    @property
    def locked(self) -> bool:
        """Whether enough ticks arrived for the tempo to be trusted."""
        return self.n >= self.config.lock_ticks and self.period > 0

    @property
    def bpm(self) -> float:
        """The filtered tempo (0 until two ticks arrived)."""
        return 60.0 / (TICKS_PER_BEAT * self.period) if self.period > 0 else 0.0

    @property
    def jitter(self) -> float:
        """RMS tick error (seconds) measured while locked."""
        return math.sqrt(self._jitter2)

    def rephase(self) -> None:
        """Start/Continue: the next tick may start a new pulse (some masters restart it).
        A tick off the predicted one by more than a quarter period takes the phase afresh
        and keeps the period; one on time is filtered as usual."""
        self._rephase = True

    def reset(self) -> None:
        """Forget everything (a stop of the tick stream)."""
        self.n = self.k = 0
        self.period = self._smoothed = self._jitter2 = 0.0

    def update(self, t: float) -> tuple[float, int]:
        """Absorb the tick stamped ``t`` (seconds); returns its filtered time and how many
        ticks were lost just before it (a tick 0.75 to 4 periods late: lost on the way, e.g. in a
        JACK period the input missed; counting them keeps the song position right)."""
        lost = 0
        if self.n >= 2 and self._rephase:
            self._rephase = False
            error = t - self._predicted
            if abs(error) > 0.25 * self.period:
                # The master restarted its pulse at Start/Continue: a new phase, same period.
                self.time, self._predicted, self._smoothed = t, t + self.period, 0.0
                self.n += 1
                return t, 0
        if self.n >= 2:
            error = t - self._predicted
            if not -0.5 * self.period < error < self.GAP_PERIODS * self.period:
                log.debug("MIDI clock: tick %.6f s off the prediction; restarting the filter",
                          error)
                self.reset()
            elif error > 0.75 * self.period:
                lost = round(error / self.period)
                self._predicted += lost * self.period
                self.lost += lost
        return self._update(t), lost

    def _update(self, t: float) -> float:
        cfg = self.config
        if self.n == 0:
            self.time = self._predicted = t
            self.n = self.k = 1
            return t
        if self.n == 1:
            self.period = t - self.time
            if self.period <= 0:
                self.reset()
                return self._update(t)
            self.time = t
            self._predicted = t + self.period
            self.n = self.k = 2
            return t
        error = t - self._predicted
        k = self.k
        alpha = 2.0 * (2 * k + 1) / ((k + 1) * (k + 2))
        beta = 6.0 / ((k + 1) * (k + 2))
        self.time = self._predicted + alpha * error
        self.period += beta * error
        self._predicted = self.time + self.period
        self.n += 1
        self.k = min(self.k + 1, cfg.max_memory_ticks)
        # Change detection: a smoothed error well above the jitter is the master, not noise.
        w = 1.0 / cfg.change_window_ticks
        self._smoothed += w * (error - self._smoothed)
        if self.n > cfg.lock_ticks:
            threshold = max(cfg.change_floor_s, cfg.change_jitter_ratio * self.jitter)
            if abs(self._smoothed) > threshold and self.k > cfg.reset_ticks:
                self.k = cfg.reset_ticks
                self._smoothed = 0.0
                self.changes += 1
            else:  # the jitter around the smoothed error (a slow drift is no jitter)
                dev = error - self._smoothed
                self._jitter2 += (dev * dev - self._jitter2) / (4 * TICKS_PER_BEAT)
        elif self.n == cfg.lock_ticks:
            self._jitter2 = error * error
        return self.time


@dataclasses.dataclass(frozen=True)
class ClockObservation:
    """One thing learned from the clock.

    ``time``: seconds on the input's clock (JACK frame time / rate, or monotonic): the
    filtered time of the tick for ``tick``/``beat``/``tempo``, the arrival time otherwise.
    ``beats``: quarter notes since song start at that moment. ``bpm``: the filtered tempo (0
    until locked). ``running``: between start/continue and stop.
    """

    kind: ObservationKind
    time: float
    beats: float
    bpm: float
    running: bool


class ClockObserver(Protocol):
    """Anything that follows MIDI clock (:class:`TransportFollower`, :class:`StateFollower`).

    Called on the asyncio loop; must not block.
    """

    def observe(self, observation: ClockObservation) -> None: ...


class MidiClock:
    """Turns clock bytes into observations for ``observer`` (asyncio loop)."""

    def __init__(self, observer: ClockObserver, config: ClockConfig | None = None) -> None:
        self.observer = observer
        self.config = config or ClockConfig()
        self.filter = TickFilter(self.config)
        self.running = False
        self.ticks = 0  # song position (in ticks) of the next clock
        self._reported_bpm = 0.0
        self._since_report = 0

    @property
    def bpm(self) -> float:
        """The filtered tempo, 0 until locked."""
        return self.filter.bpm if self.filter.locked else 0.0

    def _emit(self, kind: ObservationKind, t: float, ticks: int | None = None) -> None:
        at = self.ticks if ticks is None else ticks
        self.observer.observe(ClockObservation(kind, t, at / TICKS_PER_BEAT, self.bpm,
                                               self.running))

    def handle(self, data: bytes | tuple[int, ...], t: float) -> bool:
        """Handle one message stamped ``t`` if it is clock-related; returns whether it was."""
        status = data[0]
        if status == CLOCK:
            self._tick(t)
        elif status == START:
            self.running, self.ticks = True, 0
            self.filter.rephase()
            self._emit("start", t)
        elif status == CONTINUE:
            self.running = True
            self.filter.rephase()
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
        filtered, lost = self.filter.update(t)
        if self.running:
            self.ticks += lost
        position = self.ticks  # this clock's song position
        if self.running:
            self.ticks += 1
        self._emit("tick", filtered, position)
        if not self.filter.locked:
            return
        self._since_report += 1
        moved = abs(self.filter.bpm - self._reported_bpm)
        if moved >= self.config.min_change_bpm or (
                moved >= 0.005 and self._since_report >= 4 * TICKS_PER_BEAT):
            # A real change at once; a refinement of the estimate (worth 0.01 BPM) at most
            # once every 4 beats.
            self._reported_bpm = self.filter.bpm
            self._since_report = 0
            self._emit("tempo", filtered, position)
        if self.running and position % self.config.observe_ticks == 0:
            self._emit("beat", filtered, position)


# ---- time bases -------------------------------------------------------------------------------


class Timebase(Protocol):
    """Converts an input's time stamp (seconds on its clock) to the audio clock (samples)."""

    def to_sample(self, t: float) -> int: ...


@dataclasses.dataclass(frozen=True)
class FrameTimebase:
    """JACK MIDI with JACK audio: a stamp is a JACK frame / rate, and the audio clock is the
    frame minus the output's ``frame_offset()`` (``JackOutput.frame_offset``): exact.

    Thread: the asyncio loop (reads an int the JACK thread writes)."""

    sample_rate: float
    frame_offset: Callable[[], int]

    def to_sample(self, t: float) -> int:
        """The audio-clock sample of the event at JACK frame ``t * sample_rate``."""
        return round(t * self.sample_rate) - int(self.frame_offset())


class AgeTimebase:
    """Any input whose clock can be read now (rtmidi: ``time.monotonic``; JACK MIDI without
    JACK audio: the MIDI client's frame time): the event happened ``input_now() - t`` seconds
    before now on the audio clock.

    Why not simply ``audio_now()``: the audio clock (the player's position) moves in whole
    periods, so "now" on it is late by anything from 0 to a period (a sawtooth of up to 5 ms
    at 256 frames), which would shake the grid. The offset between the two clocks is taken at
    the top of that sawtooth: the largest value seen in the last ``window_s`` seconds (so
    clock drift and xruns are followed within that window). Not sample-exact (within a few
    samples of a fixed latency while clock ticks come), but steady.
    Thread: the asyncio loop.
    """

    def __init__(self, sample_rate: float, audio_now: Callable[[], int],
                 input_now: Callable[[], float] = time.monotonic, *,
                 window_s: float = 1.0) -> None:
        self.sample_rate = float(sample_rate)
        self.audio_now = audio_now
        self.input_now = input_now
        self.window_s = window_s
        self._tops: collections.deque[tuple[float, float]] = collections.deque()

    def to_sample(self, t: float) -> int:
        """The audio-clock sample of the event stamped ``t``."""
        now = self.input_now()
        offset = self.audio_now() - now * self.sample_rate  # audio sample at input time 0
        tops = self._tops  # (time, offset), offsets decreasing: a sliding-window maximum
        while tops and tops[-1][1] <= offset:
            tops.pop()
        tops.append((now, offset))
        while tops[0][0] < now - self.window_s:
            tops.popleft()
        return round(tops[0][1] + t * self.sample_rate)


# ---- followers --------------------------------------------------------------------------------


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


class FollowsMaster(Protocol):
    """The slice of ``engine.live.sync.MasterSync`` that :class:`TransportFollower` drives."""

    @property
    def beats_per_bar(self) -> int: ...

    @property
    def following(self) -> bool: ...

    def heartbeat(self) -> None: ...

    def position(self, obs: BBTObservation, source: str = ...) -> bool: ...

    def started(self) -> None: ...

    def stopped(self) -> None: ...


class TransportFollower:
    """Follows the clock with the engine's transport through its master sync.

    Each beat (and the first tick after start, continue or a song position jump) becomes a
    :class:`~engine.live.transport.BBTObservation` at the audio-clock sample of the tick's
    filtered time (``timebase``), so the grid follows the master's tempo and phase; start and
    continue start the engine (``sync.started``), stop goes to ``sync.stopped`` (stop, or keep
    playing on the internal clock: the sync's setting, the same as for JACK transport). Every
    tick is a heartbeat: when ticks stop coming, the sync returns to the internal clock. While
    the master has not started, its tempo goes to ``tempo_follower`` (the tempo parameter of
    the internal clock), since there is no phase to lock to.
    """

    def __init__(self, sync: FollowsMaster, timebase: Timebase,
                 tempo_follower: StateFollower | None = None) -> None:
        self.sync = sync
        self.timebase = timebase
        self.tempo_follower = tempo_follower
        self.errors = 0
        self._pending = False  # observe the next locked tick (after start/continue/position)

    def observe(self, observation: ClockObservation) -> None:
        """Apply one observation (asyncio loop)."""
        kind = observation.kind
        try:
            if kind == "tick":
                self.sync.heartbeat()
                if self._pending and observation.running and observation.bpm > 0:
                    self._follow(observation)
            elif kind in ("start", "continue"):
                self._pending = True
                self.sync.started()
            elif kind == "position":
                self._pending = True
            elif kind == "stop":
                self._pending = False
                self.sync.stopped()
            elif kind == "tempo" and not self.sync.following:
                if self.tempo_follower is not None:
                    self.tempo_follower.observe(observation)
            elif kind == "beat" and observation.bpm > 0 and observation.running:
                self._follow(observation)
        except RiffError as exc:
            self.errors += 1
            log.warning("MIDI clock %s not followed: %s", kind, exc)

    def _follow(self, observation: ClockObservation) -> None:
        self._pending = False
        meter = self.sync.beats_per_bar
        beats = observation.beats
        bar = int(beats // meter)
        self.sync.position(BBTObservation(
            sample=self.timebase.to_sample(observation.time), bar=bar,
            beat=beats - bar * meter, tempo=observation.bpm, beats_per_bar=meter), SOURCE)
