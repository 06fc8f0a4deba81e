"""The scheduler: look-ahead, latest wins, pre-emption, a deadline per bar line, retries.

It keeps up to ``lookahead`` planned clips (slots) ahead of the one playing. One worker task
per generator takes the oldest slot without work and awaits ``generate`` on it. At each bar
line's deadline (the line minus a safety margin) the scheduler decides what the sink plays from
that line:

- the next ready clip, when the playing clip has ended there, or when the playing clip is a
  repeat or stale (a state change since it was planned): so a new prompt is heard at the first
  bar line after its first clip is ready;
- otherwise, when the playing clip ends there, the playing clip again (``repeated``; the clip
  that should have started is counted ``late`` once), never silence.

A relevant state change (:meth:`Scheduler.invalidate`) drops every planned slot: work in
flight is cancelled (the generator stops between denoising steps), ready clips are discarded
(both counted ``preempted``), and new slots are planned from the jam position of the last clip
actually scheduled. A failed generation is retried with exponential backoff up to
``max_retries`` times (``failed`` counts attempts that raised, ``retried`` the retries); a bad
request (InvalidRequest, UnknownId, InvalidImage) is not retried: the slot is abandoned and
planning waits for the next state change. Nothing here ever stops the audio.

Thread: everything runs on the control plane's asyncio loop: :meth:`tick` from the engine's
loop task, :meth:`run_worker` as one task per generator, :meth:`invalidate` from state
listeners. No method blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Protocol

from engine.errors import InvalidImage, InvalidRequest, RiffError, UnknownId
from engine.live.jobs import Clip, ClipGenerator, ClipSink, ClipSpec, GenerationJob
from engine.live.planner import JamPlanner, JamPosition
from engine.live.state import EngineState
from engine.live.transport import Transport

log = logging.getLogger(__name__)

#: Errors that mean the job itself is bad: retrying cannot help.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (InvalidRequest, UnknownId, InvalidImage)


class Clock(Protocol):
    """Wall-clock time for the control plane (seconds) and a way to wait on it.

    Thread: the asyncio loop. Tests inject a fake clock that they advance by hand.
    """

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(seconds)


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling policy. Times in seconds; ``margin_s`` is how long before a bar line the
    clip for it must be ready (and handed to the sink)."""

    lookahead: int = 2
    margin_s: float = 0.05
    max_retries: int = 3
    backoff_s: float = 0.25
    backoff_max_s: float = 4.0
    cooldown_s: float = 2.0
    max_tick_s: float = 0.02

    def __post_init__(self) -> None:
        if not 1 <= self.lookahead <= 8:
            raise InvalidRequest(f"lookahead must be 1..8 clips, not {self.lookahead}")
        if self.max_retries < 0:
            raise InvalidRequest("max_retries must not be negative")
        for name in ("margin_s", "backoff_s", "backoff_max_s", "cooldown_s", "max_tick_s"):
            value = getattr(self, name)
            if not 0.0 <= value <= 60.0:
                raise InvalidRequest(f"{name} must be between 0 and 60 seconds, not {value}")
        if self.max_tick_s <= 0.0:
            raise InvalidRequest("max_tick_s must be positive")


@dataclasses.dataclass
class Counters:
    """What the scheduler did since the engine started."""

    generated: int = 0
    late: int = 0
    repeated: int = 0
    preempted: int = 0
    failed: int = 0
    retried: int = 0
    abandoned: int = 0


@dataclasses.dataclass(eq=False)
class _Slot:
    """A planned clip: its job, the jam position after it, and its work's progress."""

    job: GenerationJob
    position: JamPosition
    task: asyncio.Future[Clip] | None = None
    clip: Clip | None = None
    busy: bool = False
    dropped: bool = False
    late: bool = False
    attempts: int = 0
    progress: float = 0.0


@dataclasses.dataclass
class _Playing:
    """The clip the sink plays from bar ``start_bar`` until ``end_bar``."""

    clip: Clip
    start_bar: int
    end_bar: int
    repeating: bool = False


class Scheduler:
    """Plans, generates and schedules clips on the bar grid (see the module docstring)."""

    def __init__(
        self,
        state: EngineState,
        transport: Transport,
        planner: JamPlanner,
        sink: ClipSink,
        clock: Clock,
        config: SchedulerConfig | None = None,
    ) -> None:
        self.state = state
        self.transport = transport
        self.planner = planner
        self.sink = sink
        self.clock = clock
        self.config = config or SchedulerConfig()
        self.counters = Counters()
        self.running = False
        self.last_error = ""
        self._slots: list[_Slot] = []
        self._playing: _Playing | None = None
        self._playing_stale = False
        self._committed: JamPosition | None = None
        self._decided_bar = 0
        self._grid_version = transport.version
        self._next_job_id = 0
        self._blocked = False
        self._blocked_until = 0.0
        self._work = asyncio.Event()

    # -- control (asyncio loop) ------------------------------------------------------------

    def start(self) -> None:
        """Begin playing from the transport's current bar (the transport is started first)."""
        self.stop()
        self.running = True
        self._decided_bar = self.transport.bar()
        self._grid_version = self.transport.version
        self._fill(self.transport.now())

    def stop(self) -> None:
        """Drop all planned work and forget the playing clip; the jam restarts on ``start``."""
        self.running = False
        self._drop_all(count=False)
        self._playing = None
        self._playing_stale = False
        self._committed = None

    def invalidate(self, reason: str) -> None:
        """A relevant state change: pre-empt everything planned and plan again (latest wins)."""
        self._blocked = False
        self._blocked_until = 0.0
        if not self.running:
            return
        log.debug("re-planning: %s", reason)
        self._drop_all()
        if self._playing is not None:
            self._playing_stale = True
        self._fill(self.transport.now())

    # -- the bar-line loop (asyncio loop) --------------------------------------------------

    def tick(self) -> float:
        """Make every decision that is due; returns seconds until the next one (for sleeping).

        Called by the engine's loop task; cheap and non-blocking.
        """
        cfg = self.config
        if not self.running:
            return cfg.max_tick_s
        now = self.transport.now()
        margin = round(cfg.margin_s * self.transport.sample_rate)
        if self.transport.version != self._grid_version:
            self._regrid(now)
        if self._playing is None:
            head = self._slots[0] if self._slots else None
            if head is not None and head.clip is not None:
                bar, line = self.transport.next_bar_line(now + margin)
                self._play(head, bar, line)
                self._decided_bar = bar
        else:
            if self.transport.bar_start(self._decided_bar + 1) - margin < now - 4 * margin:
                # The loop stalled past whole bar lines: decide from the current bar on.
                self._decided_bar = max(self._decided_bar, self.transport.bar_at(now) - 1)
            while self.transport.bar_start(self._decided_bar + 1) - margin <= now:
                bar = self._decided_bar + 1
                self._decide(bar, self.transport.bar_start(bar))
                self._decided_bar = bar
        self._fill(now)
        wait = self.transport.bar_start(self._decided_bar + 1) - margin - now
        return min(cfg.max_tick_s, max(wait / self.transport.sample_rate, 0.001))

    def _regrid(self, now: int) -> None:
        """The grid changed (tempo or meter change, external master re-anchored or relocated).

        Bar numbers stay continuous for a tempo change; after a relocation the playing clip
        is treated as a repeat ending at the next bar line, so the next clip (or a repeat)
        starts on the master's next bar line. Planned clips made for another tempo or meter
        are re-planned.
        """
        self._grid_version = self.transport.version
        bar = self.transport.bar_at(now)
        if not bar - 1 <= self._decided_bar <= bar + 1:
            log.info("transport relocated to bar %d", bar)
            self._decided_bar = bar
            if self._slots:  # planned in the old bar numbers
                self.invalidate("the transport relocated")
        playing = self._playing
        if playing is not None and not playing.start_bar <= bar < playing.end_bar:
            self._playing = _Playing(playing.clip, bar, bar + 1, repeating=True)
        if any(
            (slot.job.spec.tempo, slot.job.spec.beats_per_bar)
            != self.transport.tempo_at_bar(slot.job.start_bar)
            for slot in self._slots
        ):
            self.invalidate("the transport's tempo or meter changed")

    def _decide(self, bar: int, line: int) -> None:
        playing = self._playing
        assert playing is not None
        due = bar >= playing.end_bar
        head = self._slots[0] if self._slots else None
        if head is not None and head.clip is not None and (
            due or playing.repeating or self._playing_stale
        ):
            if (head.clip.spec.tempo, head.clip.spec.beats_per_bar) == self.transport.tempo_at_bar(
                bar
            ):
                self._play(head, bar, line)
                return
            log.info("clip %d was made for another tempo; dropped", head.job.job_id)
            self._drop(head)
            self._fill(self.transport.now())
            head = self._slots[0] if self._slots else None
        if due:
            self.sink.schedule(playing.clip, line)
            self.counters.repeated += 1
            if head is not None and not head.late:
                head.late = True
                self.counters.late += 1
            self._playing = _Playing(playing.clip, bar, bar + playing.clip.spec.bars, True)
            log.info("bar %d: clip %d not ready, repeating clip %d",
                     bar, head.job.job_id if head else -1, playing.clip.job_id)

    def _play(self, slot: _Slot, bar: int, line: int) -> None:
        clip = slot.clip
        assert clip is not None
        self.sink.schedule(clip, line)
        self._slots.remove(slot)
        self._playing = _Playing(clip, bar, bar + clip.spec.bars)
        self._playing_stale = False
        self._committed = slot.position
        log.info("bar %d: clip %d (alpha %.2f, %s -> %s)", bar, clip.job_id,
                 clip.request.alpha, clip.request.start.prompt, clip.request.end_or_start.prompt)

    # -- planning --------------------------------------------------------------------------

    def _fill(self, now: int) -> None:
        if self._blocked or self.clock.now() < self._blocked_until:
            return
        while len(self._slots) < self.config.lookahead:
            if self._slots:
                last = self._slots[-1]
                prev: JamPosition | None = last.position
                start_bar = max(last.job.start_bar + last.job.spec.bars,
                                self.transport.bar_at(now) + 1)
            else:
                prev = self._committed
                start_bar = self.transport.bar_at(now) + 1
                if self._playing is not None and not self._playing_stale:
                    start_bar = max(start_bar, self._playing.end_bar)
            try:
                job, position = self._make_job(prev, start_bar)
            except RiffError as exc:
                self._report(f"cannot plan the next clip: {exc}")
                self._blocked = True
                return
            self._slots.append(_Slot(job, position))
            self._work.set()

    def _make_job(self, prev: JamPosition | None, start_bar: int) -> tuple[GenerationJob,
                                                                           JamPosition]:
        snapshot = self.state.snapshot()
        request, position = self.planner.plan(snapshot, prev)
        tempo, meter = self.transport.tempo_at_bar(start_bar)
        bars = int(snapshot["bars"])
        spec = ClipSpec(tempo, bars, meter, self.transport.sample_rate,
                        self.transport.clip_samples(start_bar, bars))
        job = GenerationJob(self._next_job_id, request, spec, start_bar, self.clock.now())
        self._next_job_id += 1
        return job, position

    def _drop(self, slot: _Slot, *, count: bool = True) -> None:
        """Remove a slot; cancel its work in flight or discard its clip (``count``: a
        pre-emption, not a stop)."""
        slot.dropped = True
        if slot in self._slots:
            self._slots.remove(slot)
        if slot.task is not None and not slot.task.done():
            slot.task.cancel()
            self.counters.preempted += count
        elif slot.clip is not None:
            self.counters.preempted += count

    def _drop_all(self, *, count: bool = True) -> None:
        for slot in tuple(self._slots):
            self._drop(slot, count=count)

    def _report(self, message: str) -> None:
        self.last_error = message
        log.error("%s", message)

    # -- workers (one asyncio task per generator) ------------------------------------------

    async def run_worker(self, generator: ClipGenerator) -> None:
        """Generate planned clips with ``generator`` until cancelled (one task per generator)."""
        while True:
            slot = await self._take()
            try:
                await self._generate(generator, slot)
            finally:
                slot.busy = False

    async def _take(self) -> _Slot:
        while True:
            for slot in self._slots:
                if not slot.busy and slot.clip is None:
                    slot.busy = True
                    return slot
            self._work.clear()
            await self._work.wait()

    async def _generate(self, generator: ClipGenerator, slot: _Slot) -> None:
        cfg = self.config

        def progress(step: int, total: int) -> None:
            """Called by the generator on the loop thread after each step; stores a float."""
            slot.progress = step / total if total else 0.0

        while not slot.dropped:
            task = asyncio.ensure_future(generator.generate(slot.job, progress))
            slot.task = task
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError:  # the worker itself is stopping
                task.cancel()
                raise
            finally:
                slot.task = None
            if slot.dropped:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self.counters.failed += 1
                    log.warning("pre-empted job %d had failed: %r", slot.job.job_id,
                                task.exception())
                return
            error: BaseException | None = None
            if task.cancelled():
                error = RuntimeError("the generator cancelled the job by itself")
            else:
                error = task.exception()
            if error is None:
                clip = task.result()
                if clip.job_id == slot.job.job_id and clip.spec == slot.job.spec:
                    slot.clip = clip
                    slot.progress = 1.0
                    self.counters.generated += 1
                    return
                error = RuntimeError(f"the generator returned clip {clip.job_id} "
                                     f"({clip.spec}) for job {slot.job.job_id}")
            self.counters.failed += 1
            log.warning("job %d failed (attempt %d): %r", slot.job.job_id, slot.attempts + 1,
                        error)
            if isinstance(error, PERMANENT_ERRORS) or slot.attempts >= cfg.max_retries:
                self._abandon(slot, error)
                return
            slot.attempts += 1
            self.counters.retried += 1
            await self.clock.sleep(min(cfg.backoff_s * 2 ** (slot.attempts - 1),
                                       cfg.backoff_max_s))

    def _abandon(self, slot: _Slot, error: BaseException) -> None:
        self.counters.abandoned += 1
        self._report(f"clip {slot.job.job_id} abandoned: {error}")
        self._drop(slot)
        if isinstance(error, PERMANENT_ERRORS):
            self._blocked = True  # until the performer changes something
        else:
            self._blocked_until = self.clock.now() + self.config.cooldown_s

    # -- status ----------------------------------------------------------------------------

    def head_ready(self) -> bool:
        """Whether the next planned clip has arrived (True when nothing is planned).

        ``progress`` cannot tell: it reaches 1.0 after the last denoising step, before the
        clip arrives. The offline renderer waits on this before passing a bar line."""
        return not self._slots or self._slots[0].clip is not None

    @property
    def queue(self) -> int:
        """Planned clips not yet handed to the sink."""
        return len(self._slots)

    @property
    def progress(self) -> float:
        """Progress 0..1 of the next clip not yet ready (1.0 when all planned clips are)."""
        for slot in self._slots:
            if slot.clip is None:
                return slot.progress
        return 1.0 if self._slots else 0.0

    @property
    def playing_job(self) -> int:
        """Job id of the clip playing (or repeating), -1 before the first."""
        return self._playing.clip.job_id if self._playing is not None else -1

    @property
    def playing_clip(self) -> Clip | None:
        """The clip playing (or repeating)."""
        return self._playing.clip if self._playing is not None else None
