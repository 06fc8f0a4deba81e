"""A recording session: the engine's output as audio plus its control log, side by side.

``Recording.start("takes/")`` opens ``takes/set-YYYYmmdd-HHMMSS.wav`` and
``takes/set-YYYYmmdd-HHMMSS.jsonl``; a file path (``.wav`` or ``.flac``) names them exactly.
The audio side is a :class:`~engine.takes.recorder.Recorder` (the audio thread calls
:meth:`Recording.write`); the control side a :class:`~engine.takes.control_log.ControlLogWriter`
(the control thread logs commands, generation requests and clip starts through ``.log``).
``riff rerender`` replays the log.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import InvalidRequest
from engine.live.jobs import (
    Clip,
    ClipGenerator,
    ClipSink,
    ClipSpec,
    GenerationJob,
    ProgressCallback,
)
from engine.model.request import InferenceRequest, check_plain_id
from engine.takes.control_log import ControlLogWriter, LogHeader
from engine.takes.recorder import FORMATS, Recorder, RecorderConfig, RecordingError

log = logging.getLogger(__name__)

#: The command that marks the clock sample of a take's first recorded frame.
TAKE_START = "take_start"


def recording_paths(target: Path | str, now: datetime.datetime | None = None
                    ) -> tuple[Path, Path]:
    """(audio path, log path) for a target file or folder; a folder gets a timestamped name."""
    target = Path(target)
    if target.suffix.lower() in FORMATS:
        audio = target
    elif target.suffix:
        raise InvalidRequest(f"recording must be a folder or a .wav/.flac file, not {target}")
    else:
        stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
        audio = target / f"set-{stamp}.wav"
    return audio, audio.with_suffix(".jsonl")


class Recording:
    """Audio recorder and control log of one take. Create with :meth:`start`."""

    def __init__(self, recorder: Recorder, log: ControlLogWriter) -> None:
        self.recorder = recorder
        self.log = log
        #: Sample (on the engine's clock) of the first and after the last recorded frame;
        #: set by the audio thread when it knows the clock (:meth:`TakeController.write_channels`).
        self.first_sample = -1
        self.end_sample = -1

    @classmethod
    def start(cls, target: Path | str, *, sample_rate: int, channels: int = 2,
              state: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None,
              flush_s: float = 0.5,
              on_error: Callable[[BaseException], None] | None = None) -> Recording:
        """Open both files and start the writer thread. Called by the control thread.

        Refuses to overwrite an existing log (FileExistsError) or audio file. ``on_error``:
        see :class:`~engine.takes.recorder.Recorder` (called from the writer thread).
        """
        audio, log_path = recording_paths(target)
        config = RecorderConfig(audio, sample_rate=sample_rate, channels=channels,
                                flush_s=flush_s)
        if config.live_path.exists() or audio.exists():
            raise FileExistsError(f"{audio} already exists")
        header = LogHeader(sample_rate=sample_rate, channels=channels, audio=audio.name,
                           state=dict(state or {}), info=dict(info or {}))
        log = ControlLogWriter(log_path, header)
        recorder = Recorder(config, on_error=on_error)
        try:
            recorder.start()
        except BaseException:
            log.close()
            raise
        return cls(recorder, log)

    def write(self, frames: np.ndarray) -> bool:
        """Audio thread: copy ``frames`` (n, channels) into the recorder's ring (see
        :meth:`engine.takes.recorder.Recorder.write`; no lock, no allocation, no logging)."""
        return self.recorder.write(frames)

    def write_channels(self, channels: Sequence[np.ndarray]) -> bool:
        """Audio thread: the same for one array per channel (JACK port buffers)."""
        return self.recorder.write_channels(channels)

    def stop(self, *, sample: int, bar: float) -> tuple[Path, Path]:
        """Close the take at ``sample``/``bar``; returns (audio, log) paths. Any thread but the
        audio thread; it joins the writer and may encode FLAC, so the daemon runs it in an
        executor. Raises RecordingError when writing failed (the log is closed all the same)."""
        try:
            audio = self.recorder.stop()
        finally:
            self.log.close(sample=sample, bar=bar)
        return audio, self.log.path


class _Clock(Protocol):
    """What the taps need from :class:`engine.live.transport.Transport`."""

    def now(self) -> int: ...

    def bar_at(self, sample: int) -> int: ...

    def bar_start(self, bar: int) -> int: ...


def bar_position(transport: _Clock, sample: int) -> float:
    """``sample`` as a fractional bar number on the transport's grid (bar 2.5: half-way)."""
    bar = transport.bar_at(sample)
    start, end = transport.bar_start(bar), transport.bar_start(bar + 1)
    return bar + (sample - start) / max(end - start, 1)


class RecordingTaps:
    """Feeds a take's control log from the engine without changing the engine.

    - :meth:`on_state_change` is an :class:`engine.live.state.EngineState` listener (every
      accepted parameter change);
    - :meth:`command` logs other accepted commands (play, stop, preset load, ...);
    - :meth:`generator` wraps a ``ClipGenerator`` so every job is logged when it is issued;
    - :meth:`sink` wraps a ``ClipSink`` (the player) so every clip start and stop is logged.

    Thread: all of them run on the control plane (asyncio loop); each log line is one small
    buffered write, never an fsync. ``recording`` may be replaced or set to None at any time
    (record start/stop); nothing is logged while it is None.

    A log line that cannot be written (disk full) never reaches the engine: the error goes to
    ``on_log_error`` (the :class:`TakeController` ends the take) and the command, the job or
    the clip goes on as if nothing was recorded.
    """

    #: Called on the loop with the take and the error when its log cannot be written.
    on_log_error: Callable[[Recording, OSError], None] | None = None

    def __init__(self, transport: _Clock | None = None, recording: Recording | None = None
                 ) -> None:
        #: Set it once the engine's transport exists (the taps wrap the generator before).
        self.transport = transport
        self.recording = recording
        #: The last clips handed to the sink with their start samples, recording or not, so a
        #: take started mid-clip can log what is playing (:meth:`log_playing`).
        self.recent: collections.deque[tuple[Clip, int, int | None]] = collections.deque(
            maxlen=4)
        self.stopped_at: int | None = None
        self._logged: set[int] = set()  # job ids with a generation line in ``_logged_in``
        self._logged_in: Recording | None = None

    def log_generation(self, job_id: int, request: InferenceRequest, spec: ClipSpec, *,
                       sample: int, bar: float) -> None:
        """Log a generation line for ``job_id`` once per take (control plane). Clips from
        the scheduler's clip cache are never generated: their line is logged when they are
        scheduled, so the take can always be re-rendered."""
        recording = self.recording
        if recording is None:
            return
        if self._logged_in is not recording:
            self._logged_in, self._logged = recording, set()
        if job_id in self._logged:
            return
        self._logged.add(job_id)
        self._log(lambda take: take.log.generation(job_id, request, spec, sample=sample,
                                                   bar=bar))

    def _log(self, write: Callable[[Recording], None]) -> None:
        """Write to the running take's log, if any; a failed write goes to ``on_log_error``."""
        take = self.recording
        if take is None:
            return
        try:
            write(take)
        except OSError as exc:
            if self.on_log_error is None:
                raise
            self.on_log_error(take, exc)

    def log_playing(self) -> None:
        """Log the clip playing now and any scheduled after it (generation + clip start), so
        the take's log can re-render its first bars. Called when a take starts."""
        if self.recording is None or self.transport is None:
            return
        now = self.transport.now()
        recent = list(self.recent)
        current = [i for i, (_, start, _) in enumerate(recent) if start <= now]
        first = current[-1] if current else 0
        if self.stopped_at is not None and (not recent or self.stopped_at >= recent[-1][1]):
            return  # stopped after the last schedule: nothing plays
        for clip, start, origin in recent[first:]:
            sample, bar = self._at(start)
            self.log_generation(clip.job_id, clip.request, clip.spec, sample=sample, bar=bar)
            self._log(functools.partial(_log_clip_start, job_id=clip.job_id, sample=sample,
                                        bar=bar, origin=origin))

    def _at(self, sample: int | None = None) -> tuple[int, float]:
        if self.transport is None:
            raise RuntimeError("RecordingTaps.transport must be set before recording")
        sample = self.transport.now() if sample is None else sample
        return sample, bar_position(self.transport, sample)

    def on_state_change(self, name: str, value: object) -> None:
        """EngineState listener: log the parameter change at the current position."""
        self.command(name, [value], source="state")

    def command(self, name: str, args: Sequence[Any] = (), source: str | None = None) -> None:
        """Log an accepted command at the current position."""
        if self.recording is not None:
            sample, bar = self._at()
            self._log(lambda take: take.log.command(name, list(args), sample=sample, bar=bar,
                                                    source=source))

    def generator(self, inner: ClipGenerator) -> ClipGenerator:
        """``inner`` with every job logged (request and clip spec) before it is generated."""
        return _LoggedGenerator(inner, self)

    def sink(self, inner: ClipSink) -> ClipSink:
        """``inner`` with every scheduled clip and every stop logged."""
        return _LoggedSink(inner, self)


def _log_clip_start(take: Recording, *, job_id: int, sample: int, bar: float,
                    origin: int | None = None) -> None:
    take.log.clip_start(job_id, sample=sample, bar=bar, origin=origin)


class _LoggedGenerator:
    def __init__(self, inner: ClipGenerator, taps: RecordingTaps) -> None:
        self.inner = inner
        self.taps = taps
        if hasattr(inner, "generate_batch"):  # the scheduler batches the lattice with it
            self.generate_batch = self._generate_batch

    async def _generate_batch(self, jobs: Sequence[GenerationJob]) -> list[Clip]:
        """Log each job, then generate them in one batched call (control plane)."""
        if self.taps.recording is not None:
            sample, bar = self.taps._at()
            for job in jobs:
                self.taps.log_generation(job.job_id, job.request, job.spec, sample=sample,
                                         bar=bar)
        clips: list[Clip] = await self.inner.generate_batch(jobs)  # type: ignore[attr-defined]
        return clips

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        """Log ``job``, then generate it with the wrapped generator (control plane)."""
        if self.taps.recording is not None:
            sample, bar = self.taps._at()
            self.taps.log_generation(job.job_id, job.request, job.spec, sample=sample, bar=bar)
        return await self.inner.generate(job, progress)


class _LoggedSink:
    def __init__(self, inner: ClipSink, taps: RecordingTaps) -> None:
        self.inner = inner
        self.taps = taps

    def schedule(self, clip: Clip, start_sample: int, origin: int | None = None) -> None:
        """Schedule on the wrapped sink, then log the clip start (control plane), with its
        ``origin`` when it is read from an earlier sample (a lattice jump on a beat)."""
        if origin is None:
            self.inner.schedule(clip, start_sample)
        else:
            self.inner.schedule(clip, start_sample, origin=origin)
        self.taps.recent.append((clip, start_sample, origin))
        self.taps.stopped_at = None
        if self.taps.recording is not None:
            sample, bar = self.taps._at(start_sample)
            self.taps.log_generation(clip.job_id, clip.request, clip.spec, sample=sample,
                                     bar=bar)
            self.taps._log(lambda take: take.log.clip_start(clip.job_id, sample=sample,
                                                            bar=bar, origin=origin))

    def position(self) -> int:
        """The wrapped sink's audio clock (any thread)."""
        return self.inner.position()

    def stop(self) -> None:
        """Stop the wrapped sink and log ``/riff/stop`` at its position (control plane)."""
        self.inner.stop()
        self.taps.stopped_at = self.inner.position()
        if self.taps.recording is not None:
            sample, bar = self.taps._at(self.inner.position())
            self.taps._log(lambda take: take.log.command("/riff/stop", [], sample=sample,
                                                         bar=bar, source="sink"))


class TakeController:
    """Starts and stops takes on request: ``/riff/record/start [name]``, ``/riff/record/stop``,
    ``riff run --record DIR``. Owns the :class:`RecordingTaps` the engine was wired with.
    A take started mid-clip logs the clip playing (and any scheduled after it) first, and its
    log names the span of the engine's clock the audio holds (a ``take_start`` command and the
    ``end`` line), so ``riff rerender`` writes the same span.

    Takes go into ``folder``; a name from the network is a plain file name (``set1.wav``,
    ``set1.flac``, or ``set1`` for WAV), never a path.

    Threads: :meth:`start`, :meth:`detach` and :meth:`stop_async` run on the control plane
    (the asyncio loop) and never block it: the slow part of a stop (joining the writer,
    closing the files, encoding FLAC) runs in the loop's default executor, and the future
    :meth:`stop_async` returns completes when the files are complete. :meth:`stop` is the
    blocking form, for callers without a loop. :meth:`write_channels` runs on the audio
    thread. When the writer fails (disk full), the take is ended on the loop at once
    (``call_soon_threadsafe`` from the writer thread) and :attr:`error` says why until the
    next take starts.
    """

    def __init__(self, taps: RecordingTaps, folder: Path | str, *, sample_rate: int,
                 channels: int = 2, state: Callable[[], Mapping[str, Any]] | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        self.taps = taps
        self.folder = Path(folder)
        #: Longest wait in a stop for an audio-thread write in progress.
        self.settle_s = 0.5
        self.sample_rate = sample_rate
        self.channels = channels
        self._state = state
        self.info = dict(info or {})
        self.takes = 0
        #: Audio-thread calls of :meth:`write_channels` so far (recording or not): lets a stop
        #: wait until a write that began before the stop has finished.
        self.calls = 0
        #: Why the last take failed ("" when it did not); cleared when a take starts.
        self.error = ""
        #: The running or last take (for :meth:`status`).
        self._last: Recording | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finishing: set[asyncio.Future[tuple[Path, Path]]] = set()
        taps.on_log_error = self._log_failed

    @property
    def recording(self) -> bool:
        """Whether a take is being recorded."""
        return self.taps.recording is not None

    def status(self) -> dict[str, int | str]:
        """``recording`` (0/1), ``record_dropped`` (frames the running or last take lost to
        ring overflow), ``record_error`` (why the last take failed, or ""). Any thread."""
        last = self._last
        return {"recording": int(self.taps.recording is not None),
                "record_dropped": last.recorder.overflows if last is not None else 0,
                "record_error": self.error}

    def start(self, name: str | None = None) -> Path:
        """Start a take (named, or timestamped); returns its audio path.

        Raises InvalidRequest when a take is already running or the name is not plain,
        FileExistsError when the name is taken.
        """
        if self.taps.recording is not None:
            raise InvalidRequest("already recording; send /riff/record/stop first")
        target: Path = self.folder
        if name:
            stem, dot, suffix = name.rpartition(".")
            if not dot or f".{suffix.lower()}" not in FORMATS:
                stem, suffix = name, "wav"
            check_plain_id(stem, "recording name")
            target = self.folder / f"{stem}.{suffix.lower()}"
        state = dict(self._state()) if self._state is not None else {}
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # no loop (tests, scripts): a failed take ends at its stop
        holder: list[Recording] = []
        take = Recording.start(target, sample_rate=self.sample_rate, channels=self.channels,
                               state=state, info=self.info,
                               on_error=lambda exc: self._writer_failed(holder))
        holder.append(take)
        self.taps.recording = take
        self._last = take
        self.error = ""
        self.taps.log_playing()
        self.takes += 1
        return take.recorder.config.path

    def seeds_folder(self) -> Path | None:
        """Where the running take keeps the seed images it was played with that are not in
        the engine's own library (captured ones): ``<take>.seeds/`` beside its audio file,
        which ``riff rerender`` searches by itself. None when not recording. Any thread."""
        take = self.taps.recording
        if take is None:
            return None
        audio = take.recorder.config.path
        return audio.with_name(f"{audio.stem}.seeds")

    def keep_seed_image(self, path: Path) -> Path | None:
        """Copy seed image ``path`` into the running take's seeds folder; returns the copy,
        or None when not recording. Thread: an executor thread (file I/O), never the audio
        thread; raises OSError when the copy fails."""
        folder = self.seeds_folder()
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / path.name
        shutil.copyfile(path, target)
        log.info("seed image %s kept with the take in %s", path.stem, folder)
        return target

    def detach(self) -> tuple[Recording, int]:
        """Take the running take away from the audio thread (its next period no longer feeds
        it) and the taps; returns it with the audio-thread call count at this moment.
        Control plane; raises InvalidRequest when not recording."""
        take = self.taps.recording
        if take is None:
            why = f" (the last take stopped: {self.error})" if self.error else ""
            raise InvalidRequest(f"not recording{why}")
        self.taps.recording = None
        return take, self.calls

    def stop(self) -> tuple[Path, Path]:
        """Stop the take and wait for its files; returns (audio, log) paths. Blocking: for
        callers without a running loop (on the loop use :meth:`stop_async`).

        Waits until the audio thread has begun a later period (two periods in practice, at
        most ``settle_s`` when no audio thread runs), so the take ends on a whole block and
        its log's ``end`` is the sample after its last frame."""
        take, calls = self.detach()
        deadline = time.monotonic() + self.settle_s
        while self.calls < calls + 2 and time.monotonic() < deadline:
            time.sleep(0.0005)
        return self._close(take, *self._end_position(take))

    def stop_async(self) -> asyncio.Future[tuple[Path, Path]]:
        """Stop the take now (control plane, returns at once) and finish it off the loop;
        the future gives (audio, log) paths once both files are complete, or raises
        :class:`~engine.takes.recorder.RecordingError`. Raises InvalidRequest at once when
        not recording."""
        take, calls = self.detach()
        return self._finish(take, calls)

    def _finish(self, take: Recording, calls: int) -> asyncio.Future[tuple[Path, Path]]:
        future = asyncio.ensure_future(self._finish_async(take, calls))
        self._finishing.add(future)
        future.add_done_callback(self._finishing.discard)
        return future

    async def _finish_async(self, take: Recording, calls: int) -> tuple[Path, Path]:
        """Loop: wait (without blocking) for the audio thread to leave the take, fix its end
        on the clock, then close it in the executor."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_s
        while self.calls < calls + 2 and loop.time() < deadline:
            await asyncio.sleep(0.002)
        try:
            sample, bar = self._end_position(take)
        except OSError as exc:  # the log's take_start line: the log is failing; close anyway
            self.error = self.error or f"writing {take.log.path.name} failed: {exc}"
            sample, bar = max(take.end_sample, 0), 0.0
        return await loop.run_in_executor(None, self._close, take, sample, bar)

    async def drain(self) -> None:
        """Wait for every take still being finished (daemon shutdown). Loop."""
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    def _end_position(self, take: Recording) -> tuple[int, float]:
        """Control plane: log the take's first sample and return its end (sample, bar)."""
        transport = self.taps.transport
        if take.first_sample >= 0:
            # The take's audio covers [first_sample, end_sample) on the engine's clock: the
            # re-render writes exactly that span (see engine.takes.rerender).
            first_bar = bar_position(transport, take.first_sample) if transport else 0.0
            take.log.command(TAKE_START, [], sample=take.first_sample, bar=first_bar,
                             source="take")
            sample = take.end_sample
            return sample, bar_position(transport, sample) if transport else 0.0
        return self.taps._at()

    def _close(self, take: Recording, sample: int, bar: float) -> tuple[Path, Path]:
        """Close the take's files (executor thread, or the caller's for :meth:`stop`)."""
        try:
            return take.stop(sample=sample, bar=bar)
        except RecordingError as exc:
            self.error = str(exc)
            raise
        except OSError as exc:  # the control log's end line or close
            self.error = self.error or f"writing {take.log.path.name} failed: {exc}"
            raise RecordingError(self.error) from exc

    def _log_failed(self, take: Recording, exc: OSError) -> None:
        """Loop (RecordingTaps): the take's control log cannot be written: end the take,
        keeping what was written (the log reads back up to its last whole line)."""
        if self.taps.recording is not take:
            return
        self.error = f"writing {take.log.path.name} failed: {exc}"
        log.error("recording's control log %s failed: %s", take.log.path, exc)
        if self._loop is not None:
            self._end_failed(take)
            return
        self.taps.recording = None  # no loop (scripts, tests): close it here, blocking
        try:
            self._close(take, *self.taps._at())
        except RecordingError as exc:
            log.error("take %s stopped: %s", take.recorder.config.path, exc)

    def _writer_failed(self, holder: list[Recording]) -> None:
        """Writer thread: the take's file failed. Record why at once (status, OSC) and end the
        take on the loop (or at the next stop, without a loop)."""
        if not holder:
            return
        take = holder[0]
        self.error = take.recorder.error
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._end_failed, take)
        except RuntimeError:  # the loop has closed: the daemon is gone, nothing to end
            log.warning("recording failed after the loop closed: %s", self.error)

    def _end_failed(self, take: Recording) -> None:
        """Loop: end a take whose writer failed, keeping what was written."""
        if self.taps.recording is not take:
            return  # already being stopped
        self.taps.recording = None
        future = self._finish(take, self.calls)

        def done(f: asyncio.Future[tuple[Path, Path]]) -> None:
            exc = f.exception() if not f.cancelled() else None
            if exc is not None and not isinstance(exc, RecordingError):
                log.error("closing the failed take %s: %s", take.recorder.config.path, exc)
            log.error("take %s stopped: %s (what was written before stays readable)",
                      take.recorder.config.live_path, self.error)

        future.add_done_callback(done)

    def wait_room(self, frames: int, timeout: float = 10.0) -> bool:
        """Wait until the running take's ring has room for ``frames`` (True), or ``timeout``.

        For producers faster than real time (the offline file renderer), never for the JACK
        callback: a real-time thread must not wait."""
        take = self.taps.recording
        if take is None:
            return True
        recorder = take.recorder
        deadline = time.monotonic() + timeout
        while recorder.backlog + frames > recorder.config.ring_frames:
            if time.monotonic() > deadline or self.taps.recording is not take \
                    or recorder.failed:
                return False
            time.sleep(0.001)
        return True

    def write_channels(self, channels: Sequence[np.ndarray], end_sample: int = -1) -> None:
        """Audio thread, after the player filled ``channels``: feed the running take, if any.

        ``end_sample`` is the engine clock after these frames (``player.position()``); with
        it the take knows which span of the clock it holds. A take whose writer failed is not
        fed (its end stays where the file ends). No lock, no allocation, no logging (see
        Recorder.write)."""
        take = self.taps.recording
        if take is not None and not take.recorder.failed \
                and take.recorder.write_channels(channels) and end_sample >= 0:
            if take.first_sample < 0:
                take.first_sample = end_sample - channels[0].shape[0]
            take.end_sample = end_sample
        self.calls += 1
