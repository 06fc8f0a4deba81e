"""The scheduler: look-ahead, latest wins, pre-emption, a deadline per bar line, retries,
a clip cache, and grid changes that keep work.

It keeps up to ``lookahead`` planned clips (slots) ahead of the one playing. One worker task
per generator takes the oldest slot without work and awaits ``generate`` on it, so each
generator has at most one job in flight; pre-empting it cancels that job by id and the next
one is sent at once (the worker drops a cancelled job that has not started: see
:mod:`engine.live.worker`). At each bar line's deadline (the line minus the sink's pre-roll
and a safety margin) the scheduler decides what the sink plays from that line:

- the next ready clip, when the playing clip has ended there, or when the playing clip is a
  repeat or stale (a state change since it was planned): so a new prompt is heard at the first
  bar line after its first clip is ready;
- otherwise, when the playing clip ends there, the playing clip again (``repeated``; the clip
  that should have started is counted ``late`` once: the one definition of late used by the
  status lines, OSC and the exit summary), never silence.

A relevant state change (:meth:`Scheduler.invalidate`) drops every planned slot: work in
flight is cancelled (the generator stops between denoising steps), ready clips are discarded
(both counted ``preempted``), and new slots are planned from the jam position of the last clip
actually scheduled. A knob swept at 60 Hz thus keeps one job in flight (cancelled at its next
step) and one wanted (replaced by each move): the final value is ready about one job time
after the last move, and the first move is planned at once, never delayed.

Clip cache (:mod:`engine.live.cache`): a planned clip whose request and spec were generated
before is ready at once (``cached``), so manual mode with a still knob generates nothing.

Grid changes keep work. A tempo or meter change re-targets every planned clip to the new
grid: the same request with a new spec (a new job id), which the worker answers from its
kept image with phase reconstruction only (``reconformed``); work in flight finishes and is
conformed again. The clip playing when the tempo changes is re-conformed too and restarts,
at its sample 0, on the first bar line of the new tempo; until that re-conform is ready the
playing clip restarts at each bar line (on the grid, if not filling the bar). A relocation
(the master jumped, such as a DAW's cycle loop) renumbers the planned clips from the next
bar line instead of discarding them (``renumbered``).

The lattice (``lattice`` points, 0 = off; manual mode only). While the request without its
alpha (prompt A/B, seeds, seed image, mask, denoising, guidance, steps) and the clip shape
(tempo, bars, meter) stay the same, idle generator time renders the same request at
``lattice`` evenly spaced alphas (0, 1/(N-1) ... 1), nearest to the knob first, in batched
calls where the generator has ``generate_batch`` (``lattice_batch`` alphas a call), into the
clip cache (so it is bounded by the cache's clips and bytes). It is idle work: a worker takes
it only when no planned clip wants work, and planned work that appears cancels it at once
(its alphas go back to the queue), so it never delays the clip of the exact request. A knob
move whose exact clip is not cached jumps at the next beat line (past the sink's deadline) to
the nearest lattice clip, read from the playing clip's bar line so it comes in at the same
position in the loop; that clip is stale, so the exact clip replaces it on the first bar line
after it is ready. A change of anything the lattice depends on drops it: its work in flight
is cancelled, its queue cleared and its clips removed from the cache, so no clip of an old
lattice is ever played. Cost: up to ``lattice`` extra clips per stable A/B pair.

A failed generation is retried with exponential backoff up to ``max_retries`` times
(``failed`` counts attempts that raised, ``retried`` the retries); a bad request
(InvalidRequest, UnknownId, InvalidImage) is not retried: the slot is abandoned and planning
waits for the next state change. Nothing here ever stops the audio.

Thread: everything runs on the control plane's asyncio loop: :meth:`tick` from the engine's
loop task, :meth:`run_worker` as one task per generator, :meth:`invalidate` from state
listeners. No method blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Protocol

from engine.errors import InvalidImage, InvalidRequest, RiffError, UnknownId
from engine.live.cache import DEFAULT_CLIPS, ClipCache
from engine.live.jobs import Clip, ClipGenerator, ClipSink, ClipSpec, GenerationJob
from engine.live.planner import JamPlanner, JamPosition
from engine.live.state import EngineState
from engine.live.transport import Transport
from engine.model.request import InferenceRequest

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
    """Scheduling policy. Times in seconds. The clip for a bar line must be ready (and handed
    to the sink) ``lead_s + margin_s`` before it: ``lead_s`` is the sink's pre-roll (the
    player's crossfade, which ends on the bar line, so the player needs the clip that long
    before its start; ``riff run`` sets it from ``--crossfade-ms``), ``margin_s`` the safety
    margin on top (control-plane jitter). A clip the player still sees inside its pre-roll
    fades shorter (counted), never later: see :mod:`engine.live.player`."""

    lookahead: int = 2
    margin_s: float = 0.05
    lead_s: float = 0.0
    max_retries: int = 3
    backoff_s: float = 0.25
    backoff_max_s: float = 4.0
    cooldown_s: float = 2.0
    max_tick_s: float = 0.02
    cache_clips: int = DEFAULT_CLIPS
    #: Alphas of the lattice (0: off; else 2..33, see the module docstring) and how many
    #: alphas one batched call renders (3: nine alphas fill in three calls, and a batch
    #: cancelled by planned work loses at most three alphas' steps).
    lattice: int = 0
    lattice_batch: int = 3

    def __post_init__(self) -> None:
        if not (self.lattice == 0 or 2 <= self.lattice <= 33):
            raise InvalidRequest(f"lattice must be 0 (off) or 2..33 alphas, not {self.lattice}")
        if not 1 <= self.lattice_batch <= 33:
            raise InvalidRequest(f"lattice_batch must be 1..33, not {self.lattice_batch}")
        if self.lattice > self.cache_clips:
            raise InvalidRequest(f"a lattice of {self.lattice} alphas needs a clip cache of "
                                 f"at least as many clips, not {self.cache_clips}")
        if not 1 <= self.lookahead <= 8:
            raise InvalidRequest(f"lookahead must be 1..8 clips, not {self.lookahead}")
        if not 0 <= self.cache_clips <= 4096:
            raise InvalidRequest(f"cache_clips must be 0..4096, not {self.cache_clips}")
        if self.max_retries < 0:
            raise InvalidRequest("max_retries must not be negative")
        for name in ("margin_s", "lead_s", "backoff_s", "backoff_max_s", "cooldown_s",
                     "max_tick_s"):
            value = getattr(self, name)
            if not 0.0 <= value <= 60.0:
                raise InvalidRequest(f"{name} must be between 0 and 60 seconds, not {value}")
        if self.max_tick_s <= 0.0:
            raise InvalidRequest("max_tick_s must be positive")

    def deadline_samples(self, sample_rate: int) -> int:
        """Samples before a bar line by which its clip is decided: lead plus margin."""
        return round((self.lead_s + self.margin_s) * sample_rate)


@dataclasses.dataclass
class Counters:
    """What the scheduler did since the engine started.

    ``generated``: clips the generators returned for planned slots; ``cached``: planned clips
    answered by the clip cache; ``reconformed``: jobs re-targeted to a new grid (same request,
    new spec: a conform, no diffusion, where the worker kept the image) and re-conforms of the
    playing clip; ``renumbered``: planned clips moved to new bar numbers by a relocation;
    ``late``: clips that missed their bar line (each counted once); ``repeated``: bar lines
    where the playing clip played again; ``lattice``: lattice clips rendered;
    ``lattice_jumps``: knob moves heard at a beat line from a lattice clip;
    ``lattice_dropped``: lattices dropped because what they depend on changed.
    """

    generated: int = 0
    late: int = 0
    repeated: int = 0
    preempted: int = 0
    failed: int = 0
    retried: int = 0
    abandoned: int = 0
    cached: int = 0
    reconformed: int = 0
    renumbered: int = 0
    lattice: int = 0
    lattice_jumps: int = 0
    lattice_dropped: int = 0


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
    """The clip the sink plays from bar ``start_bar`` until ``end_bar``; ``created``: when its
    request was planned."""

    clip: Clip
    start_bar: int
    end_bar: int
    repeating: bool = False
    created: float = 0.0


def lattice_alphas(points: int) -> list[float]:
    """The alphas of a lattice of ``points`` (2..33): 0, 1/(points-1) ... 1."""
    return [i / (points - 1) for i in range(points)]


@dataclasses.dataclass(eq=False)
class _Lattice:
    """The lattice of the current request without its alpha (see the module docstring).

    ``key``: what it depends on (the request at alpha 0 and the clip shape); ``spec``: the
    clip spec its jobs render; ``alpha``: the knob's latest value; ``pending``: alphas still
    to render, nearest to the knob first; ``tasks``: batches in flight by task, with their
    alphas; ``done``: alphas rendered (their clips are in the cache unless it evicted
    them)."""

    key: tuple[InferenceRequest, float, int, int, int]
    base: InferenceRequest
    spec: ClipSpec
    alpha: float
    pending: list[float]
    tasks: dict[asyncio.Future[list[Clip]], list[float]] = dataclasses.field(
        default_factory=dict)
    done: set[float] = dataclasses.field(default_factory=set)

    def request(self, alpha: float) -> InferenceRequest:
        """The lattice request at ``alpha``."""
        return self.base.replace(alpha=alpha)


@dataclasses.dataclass(eq=False)
class _Refit:
    """A re-conform of the playing clip for a new grid, running beside the planned work."""

    job: GenerationJob
    task: asyncio.Future[None] | None = None
    clip: Clip | None = None


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
        self._decided_line = 0
        self._grid_version = transport.version
        self._next_job_id = 0
        self._blocked = False
        self._blocked_until = 0.0
        self._work = asyncio.Event()
        self.cache = ClipCache(self.config.cache_clips)
        self._generators: list[ClipGenerator] = []
        self._refit: _Refit | None = None
        self._lattice: _Lattice | None = None

    # -- control (asyncio loop) ------------------------------------------------------------

    def start(self) -> None:
        """Begin playing from the transport's current bar (the transport is started first)."""
        self.stop()
        self.running = True
        self._set_decided(self.transport.bar())
        self._grid_version = self.transport.version
        self._fill(self.transport.now())
        self._sync_lattice()

    def stop(self) -> None:
        """Drop all planned work and forget the playing clip; the jam restarts on ``start``."""
        self.running = False
        self._drop_all(count=False)
        self._drop_refit()
        self._drop_lattice(count=False)
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
        self._drop_refit()
        if self._playing is not None:
            self._playing_stale = True
        now = self.transport.now()
        self._fill(now)
        self._sync_lattice()
        self._jump_to_lattice(now)

    # -- the bar-line loop (asyncio loop) --------------------------------------------------

    def tick(self) -> float:
        """Make every decision that is due; returns seconds until the next one (for sleeping).

        Called by the engine's loop task; cheap and non-blocking.
        """
        cfg = self.config
        if not self.running:
            return cfg.max_tick_s
        now = self.transport.now()
        margin = cfg.deadline_samples(self.transport.sample_rate)
        if self.transport.version != self._grid_version:
            self._regrid(now)
            self._sync_lattice()
        if self._playing is None:
            head = self._slots[0] if self._slots else None
            if head is not None and head.clip is not None:
                bar, line = self.transport.next_bar_line(now + margin)
                if self._fits(head.job.spec, bar):
                    self._play(head, bar, line)
                    self._set_decided(bar)
                else:
                    self._retarget(head, bar)
        else:
            if self.transport.bar_start(self._decided_bar + 1) - margin < now - 4 * margin:
                # The loop stalled past whole bar lines: decide from the current bar on.
                self._set_decided(max(self._decided_bar, self.transport.bar_at(now) - 1))
            while self.transport.bar_start(self._decided_bar + 1) - margin <= now:
                bar = self._decided_bar + 1
                self._decide(bar, self.transport.bar_start(bar))
                self._set_decided(bar)
        self._fill(now)
        wait = self.transport.bar_start(self._decided_bar + 1) - margin - now
        return min(cfg.max_tick_s, max(wait / self.transport.sample_rate, 0.001))

    def _set_decided(self, bar: int) -> None:
        """Bar ``bar``'s line has been decided; remember where it was (to tell a relocation
        from a tempo change when the grid changes)."""
        self._decided_bar = bar
        self._decided_line = self.transport.bar_start(bar)

    def _spec(self, start_bar: int, bars: int) -> ClipSpec:
        tempo, meter = self.transport.tempo_at_bar(start_bar)
        return ClipSpec(tempo, bars, meter, self.transport.sample_rate,
                        self.transport.clip_samples(start_bar, bars))

    def _fits(self, spec: ClipSpec, bar: int) -> bool:
        """Whether a clip of ``spec`` is on the grid from bar line ``bar``."""
        return (spec.tempo, spec.beats_per_bar) == self.transport.tempo_at_bar(bar)

    def _regrid(self, now: int) -> None:
        """The grid changed (tempo or meter change, external master re-anchored or relocated).

        Bar numbers stay continuous for a tempo change: planned clips keep their bars and are
        re-targeted to the new tempo. A relocation (the decided bar line moved by half a bar
        or more, or the bar numbers jumped) renumbers the playing and planned clips by the
        new number of the decided bar line (a DAW cycle loop jumps exactly onto a bar line);
        when that line is no bar line on the new grid, the playing clip becomes a repeat
        ending at the next bar line and the planned clips follow it. Either way no planned
        work is discarded, and the playing clip is re-conformed when its tempo no longer fits.
        """
        self._grid_version = self.transport.version
        bar = self.transport.bar_at(now)
        moved = abs(self.transport.bar_start(self._decided_bar) - self._decided_line)
        half_bar = (self.transport.bar_start(bar + 1) - self.transport.bar_start(bar)) / 2
        playing = self._playing
        if not bar - 1 <= self._decided_bar <= bar + 1 or moved >= half_bar:
            # Where did the bar line decided last go? On the master's grid it has a new number
            # (a DAW cycle loop: the loop start); everything planned moves with it.
            same = self.transport.bar_at(self._decided_line)
            shift: int | None = None
            if abs(self.transport.bar_start(same) - self._decided_line) <= max(
                    self.transport.follow_config.phase_tolerance, 1):
                shift = self._decided_bar - same
                if playing is not None:
                    playing.start_bar -= shift
                    playing.end_bar -= shift
            else:  # the decided line is not a line any more: go on from the next one
                same = bar
                if playing is not None:
                    playing = self._playing = _Playing(playing.clip, bar, bar + 1, True,
                                                       playing.created)
            log.info("transport relocated: bar %d is now bar %d; %d planned clip(s) renumbered",
                     self._decided_bar, same, len(self._slots))
            self._set_decided(same)
            start = same + 1
            for slot in tuple(self._slots):  # a re-target may drop a slot
                if shift is not None:
                    start = max(start, slot.job.start_bar - shift)
                self._retarget(slot, start)
                self.counters.renumbered += 1
                start += slot.job.spec.bars
        else:
            self._decided_line = self.transport.bar_start(self._decided_bar)
            for slot in tuple(self._slots):
                self._retarget(slot, slot.job.start_bar)
        if playing is not None and not playing.start_bar <= bar < playing.end_bar:
            self._playing = _Playing(playing.clip, bar, bar + 1, True, playing.created)
        self._refit_playing()

    def _retarget(self, slot: _Slot, start_bar: int) -> None:
        """Move a planned clip to ``start_bar`` on the current grid, keeping its request.

        The same spec keeps the job (and its clip or work in flight). Another spec makes a
        new job for the same request (created when the request was planned); a ready clip
        is replaced by the cache's or by a re-conform, work in flight finishes and is
        conformed again (see :meth:`_generate`).
        """
        job = slot.job
        spec = self._spec(start_bar, job.spec.bars)
        if spec == job.spec:
            if start_bar != job.start_bar:
                slot.job = dataclasses.replace(job, start_bar=start_bar)
            return
        try:  # another meter may need another seed image (never a cut bar)
            request = self.planner.fit(job.request, self.state.snapshot(), spec.bars,
                                       spec.beats_per_bar)
        except RiffError as exc:
            self._report(f"cannot re-target clip {job.job_id}: {exc}")
            self._drop(slot)
            return
        slot.job = GenerationJob(self._new_job_id(), request, spec, start_bar, job.created)
        self.counters.reconformed += 1
        slot.clip = None
        slot.late = False
        slot.progress = 0.0
        if not self._from_cache(slot) and not slot.busy:
            self._want_work()

    def _from_cache(self, slot: _Slot) -> bool:
        """Make ``slot`` ready from the clip cache when it holds its clip."""
        cached = self.cache.get(slot.job.request, slot.job.spec)
        if cached is None:
            return False
        slot.clip = Clip(slot.job.job_id, cached.audio, slot.job.spec, slot.job.request, 0.0)
        slot.progress = 1.0
        self.counters.cached += 1
        return True

    # -- the playing clip on a new grid ------------------------------------------------------

    def _refit_playing(self) -> None:
        """Re-conform the playing clip when the tempo or meter of the next bar line no longer
        fits it (beside the planned work: the worker serves it from its kept image)."""
        playing = self._playing
        bar = self._decided_bar + 1
        if playing is None or self._playing_stale or self._fits(playing.clip.spec, bar):
            self._drop_refit()
            return
        spec = self._spec(bar, playing.clip.spec.bars)
        try:
            request = self.planner.fit(playing.clip.request, self.state.snapshot(), spec.bars,
                                       spec.beats_per_bar)
        except RiffError as exc:
            self._report(f"cannot re-conform the playing clip: {exc}")
            self._drop_refit()
            return
        refit = self._refit
        if refit is not None and (refit.job.request, refit.job.spec) == (request, spec):
            return
        self._drop_refit()
        job = GenerationJob(self._new_job_id(), request, spec, bar, playing.created)
        refit = self._refit = _Refit(job)
        self.counters.reconformed += 1
        cached = self.cache.get(job.request, spec)
        if cached is not None:
            refit.clip = Clip(job.job_id, cached.audio, spec, job.request, 0.0)
            self.counters.cached += 1
        elif self._generators:
            refit.task = asyncio.ensure_future(self._run_refit(self._generators[0], refit))
        log.info("re-conforming clip %d for %.2f BPM, %d/bar (job %d)", playing.clip.job_id,
                 spec.tempo, spec.beats_per_bar, job.job_id)

    async def _run_refit(self, generator: ClipGenerator, refit: _Refit) -> None:
        """Generate a re-conform (its own task; failures are logged: the playing clip then
        restarts at each bar line until the next clip)."""
        try:
            clip = await generator.generate(refit.job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported; the audio goes on with the playing clip
            self.counters.failed += 1
            log.warning("re-conform job %d failed: %r", refit.job.job_id, exc)
            return
        if clip.job_id == refit.job.job_id and clip.spec == refit.job.spec:
            refit.clip = clip
            self.cache.put(clip)

    def _drop_refit(self) -> None:
        refit, self._refit = self._refit, None
        if refit is not None and refit.task is not None and not refit.task.done():
            refit.task.cancel()

    def _refit_for(self, bar: int) -> Clip | None:
        """The ready re-conform of the playing clip that fits bar line ``bar``, if any."""
        refit = self._refit
        if (refit is None or refit.clip is None or self._playing_stale
                or not self._fits(refit.clip.spec, bar)):
            return None
        return refit.clip

    def _decide(self, bar: int, line: int) -> None:
        playing = self._playing
        assert playing is not None
        off_grid = not self._fits(playing.clip.spec, bar)
        due = bar >= playing.end_bar or off_grid
        head = self._slots[0] if self._slots else None
        if head is not None and head.clip is not None and not self._fits(head.job.spec, bar):
            self._retarget(head, bar)  # made for another tempo: conform it again
            head = self._slots[0] if self._slots else None
        if head is not None and head.clip is not None and (
            due or playing.repeating or self._playing_stale
        ):
            self._play(head, bar, line)
            return
        if not due:
            return
        if head is not None and not head.late and bar >= playing.end_bar:
            head.late = True  # it should have started here (not merely a restart on a new grid)
            self.counters.late += 1
        refit = self._refit_for(bar) if off_grid else None
        if refit is not None:
            self.sink.schedule(refit, line)
            self._playing = _Playing(refit, bar, bar + refit.spec.bars, True, playing.created)
            self._refit = None
            log.info("bar %d: clip %d re-conformed to %.2f BPM (job %d) restarts on the grid",
                     bar, playing.clip.job_id, refit.spec.tempo, refit.job_id)
            return
        clip = playing.clip
        end = bar + clip.spec.bars
        if off_grid:
            # Not re-conformed yet: restart it at its sample 0 on this bar line (a new clip
            # object, so the sink does not take it for a plain repeat) and decide again at
            # the next one.
            clip = Clip(clip.job_id, clip.audio, clip.spec, clip.request, clip.seconds)
            end = bar + 1
        self.sink.schedule(clip, line)
        self.counters.repeated += 1
        self._playing = _Playing(clip, bar, end, True, playing.created)
        log.info("bar %d: clip %d not ready, repeating clip %d%s",
                 bar, head.job.job_id if head else -1, clip.job_id,
                 " (restarted on the new grid)" if off_grid else "")

    def _play(self, slot: _Slot, bar: int, line: int) -> None:
        clip = slot.clip
        assert clip is not None
        self.sink.schedule(clip, line)
        self._slots.remove(slot)
        self._playing = _Playing(clip, bar, bar + clip.spec.bars, created=slot.job.created)
        self._playing_stale = False
        self._drop_refit()
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
            slot = _Slot(job, position)
            self._slots.append(slot)
            if not self._from_cache(slot):
                self._want_work()

    def _make_job(self, prev: JamPosition | None, start_bar: int) -> tuple[GenerationJob,
                                                                           JamPosition]:
        snapshot = self.state.snapshot()
        spec = self._spec(start_bar, int(snapshot["bars"]))
        request, position = self.planner.plan(snapshot, prev, bars=spec.bars,
                                              meter=spec.beats_per_bar)
        job = GenerationJob(self._new_job_id(), request, spec, start_bar, self.clock.now())
        return job, position

    def _new_job_id(self) -> int:
        self._next_job_id += 1
        return self._next_job_id - 1

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

    def _want_work(self) -> None:
        """A planned clip wants work: wake a worker, and cancel lattice work in flight so the
        generator is free for it at once (the lattice is idle work only)."""
        self._work.set()
        lattice = self._lattice
        if lattice is not None:
            for task in lattice.tasks:
                task.cancel()

    # -- the lattice -----------------------------------------------------------------------

    def _sync_lattice(self) -> None:
        """Keep the lattice of the current request (see the module docstring): make one when
        the request without its alpha or the clip shape changed (dropping the old one), or
        note the knob's new alpha (the queue is re-ordered, nearest first)."""
        cfg = self.config
        snapshot = self.state.snapshot()
        if not cfg.lattice or not self.running or snapshot["alpha_auto"]:
            self._drop_lattice()
            return
        try:
            spec = self._spec(self._decided_bar + 1, int(snapshot["bars"]))
            request, _ = self.planner.plan(snapshot, None, bars=spec.bars,
                                           meter=spec.beats_per_bar)
        except RiffError:  # the planned slots report it
            self._drop_lattice()
            return
        base = request.replace(alpha=0.0)
        key = (base, spec.tempo, spec.bars, spec.beats_per_bar, spec.sample_rate)
        lattice = self._lattice
        if lattice is not None and lattice.key == key:
            lattice.alpha = request.alpha
            lattice.pending.sort(key=lambda a: (abs(a - request.alpha), a))
            return
        self._drop_lattice()
        alphas = sorted(lattice_alphas(cfg.lattice), key=lambda a: (abs(a - request.alpha), a))
        self._lattice = _Lattice(key, base, spec, request.alpha, alphas)
        self._work.set()

    def _drop_lattice(self, *, count: bool = True) -> None:
        """Forget the lattice: cancel its work in flight and, when what it depends on
        changed (``count``), remove its clips from the cache. A stop keeps them: the same
        lattice after the next play finds them there (see :meth:`_lattice_chunk`)."""
        lattice, self._lattice = self._lattice, None
        if lattice is None:
            return
        for task in lattice.tasks:
            task.cancel()
        if count:
            for alpha in lattice.done:
                self.cache.discard(lattice.request(alpha), lattice.spec)
            self.counters.lattice_dropped += 1
            log.debug("lattice dropped (%d of %d alphas rendered)", len(lattice.done),
                      self.config.lattice)

    def _lattice_chunk(self, generator: ClipGenerator) -> tuple[_Lattice, list[float]] | None:
        """The next alphas of the lattice for ``generator`` to render (``lattice_batch``
        with ``generate_batch``, else one), skipping alphas the cache already holds; None
        when nothing is left."""
        lattice = self._lattice
        if lattice is None or not self.running:
            return None
        size = self.config.lattice_batch if hasattr(generator, "generate_batch") else 1
        chunk: list[float] = []
        while lattice.pending and len(chunk) < size:
            alpha = lattice.pending.pop(0)
            if self.cache.get(lattice.request(alpha), lattice.spec) is not None:
                lattice.done.add(alpha)
            else:
                chunk.append(alpha)
        return (lattice, chunk) if chunk else None

    async def _render_lattice(self, generator: ClipGenerator, lattice: _Lattice,
                              alphas: list[float]) -> None:
        """Render ``alphas`` of ``lattice`` into the clip cache (one batched call, or one
        ``generate``). Cancelled by :meth:`_want_work` or a drop: the alphas go back to the
        front of the queue while the lattice is current. A failure is logged and those
        alphas are left out (no retry: the lattice is an extra)."""
        bar = self._decided_bar + 1
        jobs = [GenerationJob(self._new_job_id(), lattice.request(a), lattice.spec, bar,
                              self.clock.now()) for a in alphas]
        batch = getattr(generator, "generate_batch", None)
        task: asyncio.Future[list[Clip]]
        if batch is not None and len(jobs) > 1:
            task = asyncio.ensure_future(batch(jobs))
        else:
            task = asyncio.ensure_future(self._generate_one(generator, jobs[0]))
        lattice.tasks[task] = alphas
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:  # the worker itself is stopping
            task.cancel()
            raise
        finally:
            lattice.tasks.pop(task, None)
        current = self._lattice is lattice
        if task.cancelled():
            if current:
                lattice.pending[:0] = alphas
            return
        error = task.exception()
        if error is not None:
            self.counters.failed += 1
            log.warning("lattice alphas %s failed: %r", alphas, error)
            return
        clips = task.result()
        if not current:
            return  # dropped while rendering: its clips are never played
        for job, alpha, clip in zip(jobs, alphas, clips, strict=False):
            if clip.job_id != job.job_id or clip.spec != job.spec:
                log.warning("lattice job %d answered with clip %d", job.job_id, clip.job_id)
                continue
            self.cache.put(clip)
            lattice.done.add(alpha)
            self.counters.lattice += 1

    @staticmethod
    async def _generate_one(generator: ClipGenerator, job: GenerationJob) -> list[Clip]:
        return [await generator.generate(job)]

    def _jump_to_lattice(self, now: int) -> None:
        """A knob move (manual mode, lattice on): be heard at the next beat line.

        The exact clip when the head slot already has it (from the cache), else the lattice
        clip nearest to the knob, starts on the first beat line past the sink's deadline,
        read from the playing clip's first bar line so it continues at the same position in
        the loop. A lattice clip plays as stale: the exact clip replaces it on the first bar
        line after it is ready. Nothing happens when the nearest clip is the one playing, or
        when its shape (tempo, bars, meter) differs from the playing clip's."""
        lattice, playing = self._lattice, self._playing
        if lattice is None or playing is None:
            return
        head = self._slots[0] if self._slots else None
        exact = head is not None and head.clip is not None
        if exact:
            assert head is not None and head.clip is not None
            clip = head.clip
        else:
            nearest = sorted(lattice.done, key=lambda a: (abs(a - lattice.alpha), a))
            found = None
            for alpha in nearest:  # the cache may have evicted the nearest
                found = self.cache.get(lattice.request(alpha), lattice.spec)
                if found is not None:
                    break
            if found is None:
                return
            clip = found
        old = playing.clip
        if clip.request == old.request or (clip.spec.tempo, clip.spec.bars,
                                           clip.spec.beats_per_bar) != (
                old.spec.tempo, old.spec.bars, old.spec.beats_per_bar):
            return
        target = self.transport.next_beat_line(
            now + self.config.deadline_samples(self.transport.sample_rate))
        origin = self.transport.bar_start(playing.start_bar)
        if origin > target or not self._fits(clip.spec, self.transport.bar_at(target)):
            return
        self.sink.schedule(clip, target, origin=origin)
        self._playing = _Playing(clip, playing.start_bar, playing.end_bar,
                                 playing.repeating and not exact, self.clock.now())
        self._playing_stale = not exact
        self.counters.lattice_jumps += 1
        log.info("knob at %.3f: %s clip (alpha %.3f) from sample %d, %d into its loop",
                 lattice.alpha, "exact" if exact else "lattice", clip.request.alpha, target,
                 target - origin)

    def _report(self, message: str) -> None:
        self.last_error = message
        log.error("%s", message)

    # -- workers (one asyncio task per generator) ------------------------------------------

    async def run_worker(self, generator: ClipGenerator) -> None:
        """Generate planned clips with ``generator`` until cancelled (one task per generator)."""
        self._generators.append(generator)
        try:
            await self._serve(generator)
        finally:
            self._generators.remove(generator)

    async def _serve(self, generator: ClipGenerator) -> None:
        while True:
            item = await self._take(generator)
            if isinstance(item, _Slot):
                try:
                    await self._generate(generator, item)
                finally:
                    item.busy = False
            else:
                await self._render_lattice(generator, *item)

    async def _take(self, generator: ClipGenerator) -> _Slot | tuple[_Lattice, list[float]]:
        """The next work for ``generator``: the oldest planned slot without work, else (idle
        work) alphas of the lattice."""
        while True:
            for slot in self._slots:
                if not slot.busy and slot.clip is None:
                    slot.busy = True
                    return slot
            chunk = self._lattice_chunk(generator)
            if chunk is not None:
                return chunk
            self._work.clear()
            await self._work.wait()

    async def _generate(self, generator: ClipGenerator, slot: _Slot) -> None:
        cfg = self.config

        def progress(step: int, total: int) -> None:
            """Called by the generator on the loop thread after each step; stores a float."""
            slot.progress = step / total if total else 0.0

        while not slot.dropped:
            job = slot.job
            if self._from_cache(slot):
                return
            task = asyncio.ensure_future(generator.generate(job, progress))
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
                    log.warning("pre-empted job %d had failed: %r", job.job_id,
                                task.exception())
                return
            error: BaseException | None = None
            if task.cancelled():
                error = RuntimeError("the generator cancelled the job by itself")
            else:
                error = task.exception()
            if error is None:
                clip = task.result()
                if clip.job_id == job.job_id and clip.spec == job.spec:
                    self.cache.put(clip)
                    self.counters.generated += 1
                    if slot.job is not job:
                        # Re-targeted to a new grid while in flight: the same request again,
                        # a conform only where the worker kept the image.
                        continue
                    slot.clip = clip
                    slot.progress = 1.0
                    return
                error = RuntimeError(f"the generator returned clip {clip.job_id} "
                                     f"({clip.spec}) for job {job.job_id}")
            self.counters.failed += 1
            log.warning("job %d failed (attempt %d): %r", job.job_id, slot.attempts + 1,
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

    def timeline(self) -> dict[str, Any]:
        """What plays and what is planned, JSON-ready, for displays (the monitor page).

        ``playing``: the clip playing (or repeating) with its bars, prompts, alpha, seed and
        how long it took to generate against how long it lasts; ``None`` before the first.
        ``upcoming``: each planned clip in order with its start bar, whether it is ready and
        its progress. ``lattice``: see :meth:`_lattice_view`. Read-only. Thread: the control
        plane (asyncio loop)."""
        def describe(job_id: int, request: Any, spec: ClipSpec) -> dict[str, Any]:
            end = request.end or request.start
            return {"job": job_id, "prompt": request.start.prompt, "prompt_b": end.prompt,
                    "alpha": request.alpha, "seed": request.start.seed, "seed_b": end.seed,
                    "bars": spec.bars,
                    "duration_s": spec.num_samples / float(spec.sample_rate)}

        playing = None
        if self._playing is not None:
            clip = self._playing.clip
            playing = {**describe(clip.job_id, clip.request, clip.spec),
                       "start_bar": self._playing.start_bar, "end_bar": self._playing.end_bar,
                       "repeating": self._playing.repeating, "generation_s": clip.seconds}
        upcoming = [{**describe(slot.job.job_id, slot.job.request, slot.job.spec),
                     "start_bar": slot.job.start_bar, "ready": slot.clip is not None,
                     "progress": round(slot.progress, 4), "attempts": slot.attempts,
                     "late": slot.late} for slot in self._slots]
        return {"playing": playing, "upcoming": upcoming, "lattice": self._lattice_view()}

    def _lattice_view(self) -> dict[str, Any] | None:
        """The lattice for displays: each of its alphas with whether its clip is rendered
        (in the cache), being rendered, or waiting; the knob's alpha. None without one."""
        lattice = self._lattice
        if lattice is None:
            return None
        rendering = {a for alphas in lattice.tasks.values() for a in alphas}
        points = []
        for alpha in lattice_alphas(self.config.lattice):
            ready = self.cache.holds(lattice.request(alpha), lattice.spec)
            points.append({"alpha": round(alpha, 4),
                           "state": "ready" if ready else
                           "rendering" if alpha in rendering else "waiting"})
        return {"alpha": lattice.alpha, "points": points}

    @property
    def decided_bar(self) -> int | None:
        """The last bar line whose clip has been handed to the player (its length is fixed
        now); None while stopped. A tempo change lands after it (see ``Transport.set_tempo``)."""
        return self._decided_bar if self.running else None

    def clip(self, job_id: int) -> Clip | None:
        """The finished clip of job ``job_id`` while it plays or waits ready in the queue
        (None otherwise), for displays that draw it (the monitor page's spectrograms).
        Read-only: nobody may write to its audio. Thread: the control plane (asyncio loop)."""
        if self._playing is not None and self._playing.clip.job_id == job_id:
            return self._playing.clip
        for slot in self._slots:
            if slot.clip is not None and slot.clip.job_id == job_id:
                return slot.clip
        return None

    @property
    def playing_job(self) -> int:
        """Job id of the clip playing (or repeating), -1 before the first."""
        return self._playing.clip.job_id if self._playing is not None else -1
