"""The engine facade the front ends drive: state, transport, jam planner and scheduler in one.

``Engine`` owns the performer's :class:`~engine.live.state.EngineState`; OSC, MIDI, presets and the
CLI change it through ``engine.live.state.set``/``update``. A listener turns changes into transport
changes (tempo, meter: at the next bar line) and re-planning (latest wins). The generator, the
sink (player) and the wall clock are injected, so tests run the whole control plane with fakes
and a fake clock.

Thread: everything runs on one asyncio loop (the control plane). ``run`` is the engine's main
task; ``play``, ``stop``, ``status`` and state changes are called from that loop (a MIDI or
JACK thread hands over with ``loop.call_soon_threadsafe``). Nothing here blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from engine.errors import InvalidRequest, RiffError
from engine.live.capture import CaptureJob, Capturer, check_capture_bars
from engine.live.jobs import ClipGenerator, ClipSink
from engine.live.planner import JamPlanner, SeedLoops
from engine.live.scheduler import Clock, Scheduler, SchedulerConfig, SystemClock
from engine.live.state import PARAMETERS, EngineState, Value
from engine.live.sync import MasterSync, SyncConfig
from engine.live.transport import FollowConfig, Transport
from engine.takes.recording import TakeController

log = logging.getLogger(__name__)

#: Status keys filled from the player's counters: status key -> counter name.
SINK_STATUS = {"xruns": "xruns", "underruns": "underruns", "silent": "silent",
               "sink_late": "late", "sink_repeats": "repeats", "short_fades": "short_fades"}

#: Parameters that change the bar grid or the clip length.
TRANSPORT_PARAMS = frozenset({"tempo", "meter"})


class Engine:
    """The control plane: ``state``, ``transport``, ``planner``, ``scheduler``.

    ``generators``: one :class:`~engine.live.jobs.ClipGenerator` per worker (a single one is
    fine). ``sink``: the player; its ``position()`` is the audio clock the transport counts.
    ``sink_stats``: the player's counters (``Player.counters``), for :meth:`status`.
    ``sync``/``follow``: how an external master is followed (``engine.live.sync``: stop
    behaviour, master lost; ``engine.live.transport.FollowConfig``: hysteresis); the
    protocols drive ``self.sync``. While a master rules, the state refuses tempo and meter.
    """

    def __init__(
        self,
        generators: ClipGenerator | Sequence[ClipGenerator],
        sink: ClipSink,
        *,
        sample_rate: int,
        clock: Clock | None = None,
        state: EngineState | None = None,
        config: SchedulerConfig | None = None,
        walk_clips: int = 4,
        sink_stats: Callable[[], Mapping[str, int]] | None = None,
        sync: SyncConfig | None = None,
        follow: FollowConfig | None = None,
        scheduler: str | None = None,
        seed_loops: SeedLoops | None = None,
    ) -> None:
        self.generators: tuple[ClipGenerator, ...] = (
            tuple(generators) if isinstance(generators, Sequence) else (generators,)
        )
        if not self.generators:
            raise RiffError("the engine needs at least one generator")
        self.sink = sink
        #: The player's counters (``engine.live.player.Player.counters``), shown in :meth:`status`.
        self.sink_stats = sink_stats
        self.clock: Clock = clock or SystemClock()
        self.state = state or EngineState()
        self.transport = Transport(
            sink.position, sample_rate, float(self.state.get("tempo")),
            int(self.state.get("meter")), follow=follow,
        )
        #: The external master (JACK transport, MIDI clock), when one rules the transport.
        self.sync = MasterSync(self.transport, play=self.play, stop=self.stop,
                               playing=lambda: self.scheduler.running,
                               adopt=self._adopt_transport, config=sync)
        #: With ``seed_loops`` (the generator's seed image library) each clip is generated at
        #: the width of its bars in a seed image of its meter (see :mod:`engine.live.planner`).
        self.planner = JamPlanner(walk_clips, seed_loops, scheduler=scheduler)
        self.scheduler = Scheduler(self.state, self.transport, self.planner, sink, self.clock,
                                   config)
        self._seen = self.state.snapshot()  # last values acted on: repeats change nothing
        self.state.add_listener(self._changed)
        self.state.add_guard(self._refuse)
        if seed_loops is not None:
            # At start a seed image in another meter is no error: the meter's own seed plays.
            meter = int(self.state.get("meter"))
            reason = self.planner.check(self.state.snapshot(), meter, ("meter", "bars"))
            if reason is not None:
                raise InvalidRequest(reason)
            chosen = str(self.state.get("seed_image"))
            used = self.planner.seed_for(chosen, meter)
            if used is not None and used[0] != chosen:
                log.info("meter %d: seed image %s is in another meter; clips use %s",
                         meter, chosen, used[0])
            self.state.add_check(self._check_loops)
        self._run_task: asyncio.Task[None] | None = None
        self._closing = False
        #: Takes (``/riff/record/start``, ``/riff/record/stop``); set by the daemon when it
        #: was wired for recording (see :class:`engine.takes.recording.TakeController`).
        self.takes: TakeController | None = None
        #: Live input as seed (``/riff/capture``); set by the daemon when it runs with audio
        #: input (see :class:`engine.live.capture.Capturer`).
        self.capture: Capturer | None = None
        self._keeping: set[asyncio.Future[Path | None]] = set()

    # -- transport -------------------------------------------------------------------------

    def play(self) -> None:
        """Start the transport at bar 0 now and start the jam (a clip plays once ready)."""
        if self.scheduler.running:
            return
        if not self.transport.external:
            self.transport.start()
        self.scheduler.start()
        log.info("play: %.2f BPM, %d/bar, %d bar clips", self.transport.tempo,
                 self.transport.beats_per_bar, int(self.state.get("bars")))

    def stop(self) -> None:
        """Stop: pending work is dropped and the sink fades out."""
        if not self.scheduler.running:
            return
        self.scheduler.stop()
        self.transport.stop()
        self.sink.stop()
        log.info("stop")

    def _changed(self, name: str, value: Value) -> None:
        """State listener (asyncio loop): tempo/meter at the next bar line (planned work is
        kept and re-conformed); other relevant changes re-plan.

        A value equal to the last one (a controller resending its fader) changes nothing, so
        it never pre-empts work in flight.
        """
        if self._seen.get(name) == value:
            return
        self._seen[name] = value
        if name in TRANSPORT_PARAMS:
            if self.sync.forwards:  # a Link session: the grid follows its next position
                self.sync.forward(name, float(value))
            elif name == "tempo":
                self.transport.set_tempo(tempo=float(value), after_bar=self.scheduler.decided_bar)
            else:
                self.transport.set_tempo(beats_per_bar=int(value),
                                         after_bar=self.scheduler.decided_bar)
            # No re-planning: the scheduler sees the new grid at its next tick and
            # re-conforms what is planned and playing (the requests stay the same).
        elif name == "bars" or self.planner.relevant(name, self.state.snapshot()):
            self.scheduler.invalidate(f"{name} changed")

    def _check_loops(self, values: Mapping[str, Value], changed: Collection[str]) -> str | None:
        """State check (asyncio loop): a meter needs a seed image in it, a seed image must be
        in the meter, clips may not be wider than the maximum (see the planner)."""
        if not {"seed_image", "meter", "bars"}.intersection(changed):
            return None
        meter = (self.transport.beats_per_bar if self.transport.external
                 else int(values["meter"]))
        return self.planner.check(values, meter, changed)

    def _refuse(self, name: str) -> str | None:
        """State guard: tempo and meter belong to the master while one rules (so a surface
        gets an error and nothing is applied or echoed)."""
        if name in TRANSPORT_PARAMS and self.transport.external and not self.sync.forwards:
            return (f"{name} follows the {self.sync.source or 'external clock'}; change it "
                    "there (refused while an external master rules)")
        return None

    def _adopt_transport(self, tempo: float, meter: int) -> None:
        """Back on the internal clock (from :class:`MasterSync`): the tempo and meter
        parameters take the master's last values without moving the grid, and listeners
        (OSC/MIDI feedback) see them."""
        changes: dict[str, Value] = {}
        for name, value in (("tempo", tempo), ("meter", meter)):
            spec = PARAMETERS[name]
            lo, hi = float(spec.lo or 0), float(spec.hi or 1000)
            clamped = min(max(value, lo), hi)
            coerced = spec.coerce(round(clamped, 3) if name == "tempo" else int(clamped))
            if coerced != self.state.get(name):
                changes[name] = coerced
        if changes:
            self._seen.update(changes)  # the grid already runs at (about) these: no regrid
            self.state.update(changes)

    # -- recording -------------------------------------------------------------------------

    def record_start(self, name: str | None = None) -> Path:
        """Start a take (a plain file name, or timestamped); returns its audio path.

        Raises InvalidRequest when recording is not set up, a take is running, the name is
        not plain or already taken, or the files cannot be opened."""
        takes = self._takes()
        try:
            path = takes.start(name)
        except FileExistsError as exc:
            raise InvalidRequest(f"{exc}; pick another name") from None
        except OSError as exc:
            raise InvalidRequest(f"cannot start recording: {exc}") from None
        log.info("recording to %s", path)
        self._keep_seed_with_take()
        return path

    def _keep_seed_with_take(self) -> None:
        """A take that starts while a captured seed image plays keeps a copy of it (in an
        executor: file I/O), so ``riff rerender`` finds it."""
        if self.capture is None or self.takes is None:
            return
        path = self.capture.keep_current()
        if path is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (scripts, tests): a copy of one image, right here
            self.takes.keep_seed_image(path)
            return
        future = loop.run_in_executor(None, self.takes.keep_seed_image, path)
        self._keeping.add(future)

        def done(f: asyncio.Future[Path | None]) -> None:
            self._keeping.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.error("keeping seed image %s with the take failed: %s", path.stem,
                          f.exception())

        future.add_done_callback(done)

    # -- live input as seed ----------------------------------------------------------------

    def capture_start(self, bars: object, name: object = None
                      ) -> tuple[CaptureJob, asyncio.Future[str]]:
        """Capture ``bars`` bars of the audio input from the next bar line as seed image
        ``name`` (default ``capture-N``) and make it the current seed image; see
        :meth:`engine.live.capture.Capturer.start`. Raises InvalidRequest (nothing changed)
        for bad arguments or without audio input."""
        check_capture_bars(bars)
        if self.capture is None:
            raise InvalidRequest("capture needs audio input: start the engine with "
                                 "riff run --input")
        return self.capture.start(bars, name)

    def record_stop(self) -> asyncio.Future[tuple[Path, Path]]:
        """Stop the running take now; the future gives its (audio, control log) paths once
        both files are complete (or raises RecordingError when writing had failed).

        Returns at once (raising InvalidRequest when not recording): the audio thread stops
        feeding the take from its next period, and joining the writer, closing the files and
        encoding FLAC happen in an executor, so a long take never stalls the loop."""
        future = self._takes().stop_async()

        def done(f: asyncio.Future[tuple[Path, Path]]) -> None:
            if not f.cancelled() and f.exception() is None:
                log.info("recording stopped: %s, %s", *f.result())

        future.add_done_callback(done)
        return future

    def _takes(self) -> TakeController:
        if self.takes is None:
            raise InvalidRequest("recording is off: start the engine with --record DIR")
        return self.takes

    # -- main task -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the worker tasks and the bar-line loop until :meth:`close` (returns then) or
        until cancelled (raises CancelledError)."""
        self._run_task = asyncio.current_task()
        workers = [asyncio.ensure_future(self.scheduler.run_worker(g)) for g in self.generators]
        try:
            while True:
                await self.clock.sleep(self.scheduler.tick())
                self.sync.check()
                for worker in workers:
                    if worker.done():  # a worker must never end; say why and restart it
                        index = workers.index(worker)
                        self.scheduler.counters.failed += 1
                        log.error("worker %d stopped: %r; restarting it", index,
                                  worker.exception() if not worker.cancelled() else "cancelled")
                        workers[index] = asyncio.ensure_future(
                            self.scheduler.run_worker(self.generators[index])
                        )
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._run_task = None

    async def close(self) -> None:
        """Stop playing and end :meth:`run` (awaits its cleanup; ``run`` returns normally)."""
        self._closing = True
        if self.capture is not None:
            await self.capture.close()
        self.stop()
        self.state.remove_listener(self._changed)
        self.state.remove_guard(self._refuse)
        task = self._run_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, int | float | str]:
        """Bar, queue, lateness, progress, clip, tempo and every counter (JSON-ready).
        ``error``: the scheduler's last error, else a take's failure, else the last
        capture's failure (each stands until the next success of its kind)."""
        status = self._status()
        if not status["error"] and self.capture is not None and self.capture.last_error:
            status["error"] = self.capture.last_error
        return status

    def _status(self) -> dict[str, int | float | str]:
        c = self.scheduler.counters
        return {
            "playing": int(self.scheduler.running),
            "bar": self.transport.bar() if self.scheduler.running else -1,
            "tempo": self.transport.tempo,
            "meter": self.transport.beats_per_bar,
            "clock": "external" if self.transport.external else "internal",
            "queue": self.scheduler.queue,
            "progress": round(self.scheduler.progress, 4),
            "clip": self.scheduler.playing_job,
            "late": c.late,
            "generated": c.generated,
            "cached": c.cached,
            "reconformed": c.reconformed,
            "renumbered": c.renumbered,
            "lattice": c.lattice,
            "lattice_jumps": c.lattice_jumps,
            "repeated": c.repeated,
            "preempted": c.preempted,
            "failed": c.failed,
            "retried": c.retried,
            "abandoned": c.abandoned,
            # A failed take's reason stands until the next take starts (a full disk matters
            # more than the last clip given up).
            "error": self.scheduler.last_error,
            **self._sink_status(),
            **self._take_status(),
            **self._capture_status(),
        }

    def _capture_status(self) -> dict[str, int | str]:
        """With audio input: ``capturing`` (the name of the capture armed or encoding, else
        empty), ``capture_bar`` (the bar it starts on, -1 when none) and ``captures`` (how
        many were armed)."""
        capture = self.capture
        if capture is None:
            return {}
        job = capture.job
        status: dict[str, int | str] = {"capturing": job.name if job is not None else "",
                                        "capture_bar": job.bar if job is not None else -1,
                                        "captures": capture.captures}
        return status

    def _take_status(self) -> dict[str, int | str]:
        """``recording``, ``record_dropped``, ``record_error`` and, while a take's failure
        stands, that failure as ``error`` (empty without takes)."""
        if self.takes is None:
            return {}
        status: dict[str, int | str] = dict(self.takes.status())
        if status["record_error"]:
            status["error"] = status["record_error"]
        return status

    def _sink_status(self) -> dict[str, int]:
        """The player's xruns, underruns, silent blocks (by design), late starts, repeats and
        short fades (zeros without stats)."""
        stats = self.sink_stats() if self.sink_stats is not None else {}
        return {key: int(stats.get(name, 0)) for key, name in SINK_STATUS.items()}
