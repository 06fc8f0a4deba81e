"""Live input as seed: record the next N bars of the audio input and make them the seed image.

Why: the jam then riffs on what the performer just played. ``/riff/capture <bars> [name]``
arms a capture on the next bar line of the transport's grid (sample-exact: the window is a
span of the player's clock, the same clock the bar grid counts); the audio thread copies the
input frames of that window into a preallocated ring (:class:`CaptureTap`, reusing
:class:`~engine.live.ring.SpscRing`); when the window is complete an executor thread reads it
out, an encoder process (spawned by :meth:`Capturer.warm_up` or the first capture, so the
daemon never imports torch and the codec never holds its GIL) encodes it as a spectrogram
image in the engine's format with loop metadata (bars, beats per bar and the tempo that
fills the image exactly), an executor thread writes it into the capture folder, which the
seed image library searches first, and the loop makes it the current seed image, as
``/riff/seed_image NAME`` would. Frames of real time lost to xruns during the window (the
frame time ran on while the player's clock did not) are counted and logged.

The ring holds :data:`MAX_CAPTURE_SECONDS` of audio (the widest clip image, 4096 px = 40.96 s),
allocated once: a capture that would last longer at the current tempo is refused when it
arrives. Its length is fixed when it is armed (a tempo change that lands during the capture
does not stretch it).

Threads: :class:`Capturer` runs on the control plane (the asyncio loop); reading the ring and
writing the file run in the loop's default executor, encoding in the encoder process;
:meth:`CaptureTap.write` runs on the audio thread (JACK's process thread) and only copies into
the ring and stores a few integers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine import limits
from engine.dsp.spectrogram import SpectrogramParams
from engine.errors import InvalidRequest, RiffError, UnknownId
from engine.live.ring import SharedSpscRing
from engine.live.state import EngineState
from engine.live.transport import Transport
from engine.model.request import check_plain_id
from engine.model.seed_images import MAX_CLIP_WIDTH, SeedImageLibrary

log = logging.getLogger(__name__)

_PARAMS = SpectrogramParams()
#: The longest capture: the widest clip image (4096 px of 10 ms) in seconds.
MAX_CAPTURE_SECONDS = MAX_CLIP_WIDTH * _PARAMS.hop_length / _PARAMS.sample_rate
#: A captured window whose peak is below this is silence (nothing connected): refused.
SILENCE = 1e-5
#: Default names are this prefix and a number.
NAME_PREFIX = "capture-"


@dataclasses.dataclass(frozen=True)
class CaptureConfig:
    """Where captured seed images go and how much the ring holds.

    ``margin``: frames between the audio clock now and the earliest bar line a capture may
    start on, so the audio thread always sees the window armed before its first frame
    (two periods of 1024 frames and more). ``encode_process``: encode in a process of its own
    (the daemon: no torch, and the codec never holds its GIL), else in a thread (tests).
    """

    sample_rate: int
    folder: Path
    channels: int = 2
    max_seconds: float = MAX_CAPTURE_SECONDS
    margin: int = 2048
    encode_process: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) \
                or not 8000 <= self.sample_rate <= 384000:
            raise InvalidRequest(f"capture sample rate must be 8000..384000 Hz, not "
                                 f"{self.sample_rate!r}")
        if not isinstance(self.channels, int) or not 1 <= self.channels <= 8:
            raise InvalidRequest("capture channels must be 1..8")
        if not 0 < self.max_seconds <= MAX_CAPTURE_SECONDS:
            raise InvalidRequest(f"capture max_seconds must be 0..{MAX_CAPTURE_SECONDS:g}")
        if not isinstance(self.margin, int) or not 0 <= self.margin <= self.sample_rate:
            raise InvalidRequest("capture margin must be 0..1 s of frames")

    @property
    def capacity(self) -> int:
        """Frames the ring holds (the longest capture)."""
        return capacity_frames(self.sample_rate, self.max_seconds)


def capacity_frames(sample_rate: int, max_seconds: float = MAX_CAPTURE_SECONDS) -> int:
    """Frames a capture ring holds at ``sample_rate``: ``max_seconds`` and one more frame
    (1966081 at 48 kHz: 15.7 MB of stereo float32)."""
    return int(max_seconds * sample_rate) + 1


#: Indices of :attr:`CaptureTap.state` (int64), where the tap keeps its fields so that the
#: compiled JACK callback (:mod:`protocols.audio.jack_table`) can be its audio thread too.
ARMED, DONE, START, END, WRITTEN, MISSED, START_FRAME, LOST = range(8)


def _field(index: int, doc: str, kind: type = int) -> Any:
    """A :class:`CaptureTap` attribute stored in its ``state`` array."""

    def get(self: CaptureTap) -> Any:
        return kind(self.state[index])

    def put(self: CaptureTap, value: Any) -> None:
        self.state[index] = int(value)

    return property(get, put, doc=doc)


class CaptureTap:
    """The audio thread's half: the armed window ``[start, end)`` on the player's clock and a
    preallocated ring of ``capacity`` frames of ``channels``.

    The control plane arms a window (:meth:`arm`) only while no capture runs; the audio thread
    (:meth:`write`, or the compiled callback doing the same on :attr:`state` and the ring's
    shared counters) copies the part of each period inside the window and sets :attr:`done`
    once the clock has passed its end. Each field (an aligned int64 in :attr:`state`) is
    written by one thread only.
    """

    armed = _field(ARMED, "The control plane armed a window (written last when arming).", bool)
    done = _field(DONE, "Audio thread: the window is over (all of it written, or missed).",
                  bool)
    start = _field(START, "The window's first sample on the player's clock.")
    end = _field(END, "The sample after the window's last.")
    written = _field(WRITTEN, "Audio thread: frames of the window written so far.")
    missed = _field(MISSED, "Audio thread: frames at the window's start it never saw (armed "
                    "too late).")
    start_frame = _field(START_FRAME, "Audio thread: the JACK (or output) frame time of the "
                         "window's first frame; -1.")
    lost = _field(LOST, "Audio thread: frames of real time the window lost to skipped cycles "
                  "(xruns): the frame time ran on while the player's clock did not, so the "
                  "capture has a seam.")

    def __init__(self, channels: int, capacity: int) -> None:
        self.ring = SharedSpscRing(capacity, (channels,), np.float32)
        self.state = np.zeros(8, np.int64)
        self.start_frame = -1

    # ---- control plane ----------------------------------------------------------------------

    def arm(self, start: int, end: int) -> None:
        """Capture ``[start, end)`` of the player's clock from now on (control plane; no
        capture may be running). Fields first, ``armed`` last: the audio thread reads it
        first."""
        if self.armed:
            raise RiffError("a capture is already armed")
        if not 0 < end - start <= self.ring.capacity:
            raise InvalidRequest(f"a capture of {end - start} frames does not fit the ring")
        backlog = self.ring.readable()
        if backlog:
            self.ring.release(backlog)  # the consumer side: nothing is read from it now
        self.done = False
        self.written = 0
        self.missed = 0
        self.start_frame = -1
        self.lost = 0
        self.start, self.end = start, end
        self.armed = True

    def disarm(self) -> None:
        """Stop feeding the window (control plane); the audio thread sees it next period."""
        self.armed = False

    def read(self, frames: int) -> np.ndarray:
        """The window's ``frames`` frames as (channels, frames) float32, released from the
        ring. Thread: the consumer (an executor thread), after :attr:`done`."""
        out = np.empty((self.ring.buffer.shape[1], frames), np.float32)
        at = 0
        for lo, hi in self.ring.regions(frames):
            out[:, at:at + hi - lo] = self.ring.buffer[lo:hi].T
            at += hi - lo
        self.ring.release(at)
        return out[:, :at]

    # ---- audio thread -----------------------------------------------------------------------

    def write(self, channels: Sequence[np.ndarray], position: int, frame_time: int) -> None:
        """Copy the part of this period inside the window. ``position``: the player's clock
        at the period's first frame; ``frame_time``: the JACK frame time of the same frame.

        Thread: the audio thread. No locks, no waits, no buffer allocation: at most two slice
        copies into the preallocated ring and a few integer stores."""
        if not self.armed or self.done:
            return
        n = channels[0].shape[0]
        start, end = self.start, self.end
        lo = position if position > start else start
        hi = position + n if position + n < end else end
        if hi > lo:
            if self.written == 0 and self.start_frame < 0:
                self.missed = lo - start
                self.start_frame = frame_time + (start - position)
            else:
                self.lost = frame_time - position - (self.start_frame - start)
            self.ring.write_columns(channels, lo - position, hi - lo)
            self.written += hi - lo
        if position + n >= end:
            if self.written == 0:
                self.missed = end - start
            self.done = True


def check_capture_bars(bars: object) -> int:
    """``bars`` as a bar count within the ``/riff/bars`` range (1..16); an integral float (as
    many OSC controllers send) counts. InvalidRequest otherwise."""
    if isinstance(bars, float) and bars.is_integer():
        bars = int(bars)
    return limits.check_count(bars, "capture bars", limits.CONTROL_BARS)


@dataclasses.dataclass(frozen=True)
class CaptureJob:
    """One armed capture: ``name``, ``bars`` from bar ``bar`` (``start``..``end`` samples on
    the player's clock) in ``beats_per_bar``."""

    name: str
    bars: int
    bar: int
    start: int
    end: int
    beats_per_bar: int


def encode_capture(audio: np.ndarray, sample_rate: int, bars: int, beats_per_bar: int) -> Any:
    """A spectrogram image (PIL) of ``audio`` (channels, samples) as a seed loop: the codec's
    mono image at 44.1 kHz, frames taken circularly (a loop), and loop metadata of ``bars``
    bars of ``beats_per_bar`` at the tempo that fills the image exactly. Any thread but the
    audio thread (torch; allocates)."""
    from engine.dsp.audio_io import resample
    from engine.dsp.spectrogram import LoopMeta, audio_to_mel, mel_to_image, write_loop_meta

    params = SpectrogramParams()
    x = resample(np.asarray(audio, np.float32), sample_rate, params.sample_rate)
    mel = audio_to_mel(x, params, circular=True)
    image = mel_to_image(mel, params)
    seconds = image.width * params.hop_length / params.sample_rate
    write_loop_meta(image, LoopMeta(bars=bars, beats_per_bar=beats_per_bar,
                                    bpm=round(bars * beats_per_bar * 60.0 / seconds, 4)))
    return image


def encode_png(audio: np.ndarray, sample_rate: int, bars: int, beats_per_bar: int) -> bytes:
    """:func:`encode_capture` as PNG bytes (EXIF: spectrogram parameters and loop metadata):
    what the encoder process returns. Runs in the encoder process (or a thread in tests)."""
    import io

    from engine.dsp.spectrogram import save_image

    buffer = io.BytesIO()
    save_image(encode_capture(audio, sample_rate, bars, beats_per_bar), buffer)
    return buffer.getvalue()


def _encoder_init() -> None:
    """The encoder process starts at a lower priority (as the generator worker does), so the
    codec never competes with the audio thread for a CPU."""
    with contextlib.suppress(OSError):  # not permitted: it runs at normal priority
        os.nice(10)


class Capturer:
    """The control plane's half: validates ``/riff/capture`` requests, arms the tap on the
    next bar line, and finishes captures (encode, save, select) off the loop.

    ``tap`` is None when the engine runs without audio input: every capture is then refused
    with a clear error. ``folder`` (from ``config``) is searched first by ``library``; the
    worker's library must include it too. ``keep`` (optional) is called with the image's path
    when it is saved, on an executor thread (the take controller copies it into a running
    take).
    """

    #: Seconds past the window's end after which a capture whose audio clock stopped fails.
    STALL_S = 10.0

    def __init__(self, tap: CaptureTap | None, config: CaptureConfig, transport: Transport,
                 state: EngineState, library: SeedImageLibrary,
                 keep: Callable[[Path], None] | None = None) -> None:
        self.tap = tap
        self.config = config
        self.transport = transport
        self.state = state
        self.library = library
        self.keep = keep
        self.job: CaptureJob | None = None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.captures = 0
        self.last_error = ""
        self._task: asyncio.Task[str] | None = None

    @property
    def folder(self) -> Path:
        return self.config.folder

    def _check_name(self, name: object) -> str:
        if name is None or name == "":
            n = self.captures + 1
            while self._exists(f"{NAME_PREFIX}{n}"):
                n += 1
            return f"{NAME_PREFIX}{n}"
        if not isinstance(name, str):
            raise InvalidRequest(f"a capture name is a string, not {type(name).__name__}")
        check_plain_id(name, "capture name")
        if self._exists(name):
            raise InvalidRequest(f"a seed image named {name!r} exists; pick another name")
        return name

    def _exists(self, name: str) -> bool:
        try:
            self.library.resolve(name)
        except UnknownId:
            return False
        return True

    def start(self, bars: object, name: object = None) -> tuple[CaptureJob,
                                                                 asyncio.Future[str]]:
        """Arm a capture of ``bars`` bars from the next bar line under ``name`` (a plain
        name; default ``capture-N``). Returns the job and a future that gives the name once
        the image is the current seed image (or raises RiffError). Raises InvalidRequest,
        changing nothing, for bad arguments, without audio input, while stopped, or while
        another capture runs. Control plane."""
        count = check_capture_bars(bars)
        if self.tap is None:
            raise InvalidRequest("capture needs audio input: start the engine with "
                                 "riff run --input")
        if self.job is not None:
            raise InvalidRequest(f"a capture ({self.job.name}) is running; wait for it")
        if not self.transport.running:
            raise InvalidRequest("capture records on the bar grid: start the transport first "
                                 "(/riff/play)")
        label = self._check_name(name)
        bar, start = self.transport.next_bar_line(self.transport.now() + self.config.margin)
        end = self.transport.bar_start(bar + count)
        seconds = (end - start) / self.config.sample_rate
        if end - start > self.tap.ring.capacity:
            raise InvalidRequest(
                f"{count} bars at {self.transport.tempo:g} BPM last {seconds:.1f} s, over "
                f"the capture's {self.config.max_seconds:.2f} s maximum (the widest seed "
                f"image, {MAX_CLIP_WIDTH} px)")
        meter = self.transport.segment_for_bar(bar).beats_per_bar
        job = CaptureJob(label, count, bar, start, end, meter)
        self.tap.arm(start, end)
        self.job = job
        self.captures += 1
        log.info("capture %s: %d bar(s) from bar %d (samples %d..%d, %.2f s)", label, count,
                 bar, start, end, seconds)
        task = asyncio.ensure_future(self._finish(job))
        self._task = task
        return job, task

    async def _finish(self, job: CaptureJob) -> str:
        """Wait (without blocking the loop) for the window to pass, encode and save it in the
        executor, then select it. Loop."""
        tap = self.tap
        assert tap is not None
        loop = asyncio.get_running_loop()
        try:
            rate = self.config.sample_rate
            # The audio clock stands still while JACK is away: give up well after the end.
            deadline = loop.time() + (job.end - self.transport.now()) / rate + self.STALL_S
            while not tap.done:
                if loop.time() > deadline:
                    raise RiffError(f"capture {job.name}: the audio clock did not reach the "
                                    "end of the window (is the audio running?); nothing "
                                    "changed")
                left = job.end - self.transport.now()
                await asyncio.sleep(min(max(left / rate, 0.01), 0.25))
            tap.disarm()
            if tap.missed:
                raise RiffError(f"capture {job.name} missed {tap.missed} frames of its first "
                                "bar (the audio thread was late); nothing changed")
            audio = await loop.run_in_executor(None, self._read, job)
            png = await loop.run_in_executor(self._encoder(), encode_png, audio,
                                             self.config.sample_rate, job.bars,
                                             job.beats_per_bar)
            path = await loop.run_in_executor(None, self._save, job, png)
            try:  # the engine's checks, as for /riff/seed_image
                self.state.set("seed_image", job.name)
            except RiffError as exc:
                raise RiffError(f"capture {job.name} is saved ({path}) but cannot be the seed "
                                f"image: {exc}") from None
            frame = f", JACK frame {tap.start_frame}" if tap.start_frame >= 0 else ""
            if tap.lost:
                log.warning("capture %s: %d frames of real time were lost to xruns during it "
                            "(the image has a seam there)", job.name, tap.lost)
            log.info("capture %s: %d bar(s) at sample %d (bar %d%s, %d frames lost) saved to "
                     "%s; it is the seed image now", job.name, job.bars, job.start, job.bar,
                     frame, tap.lost, path)
            self.last_error = ""
            return job.name
        except RiffError as exc:
            self.last_error = str(exc)
            log.error("capture %s failed: %s", job.name, exc)
            raise
        finally:
            tap.disarm()
            self.job = None

    def _read(self, job: CaptureJob) -> np.ndarray:
        """The window out of the ring, as mono float32 (the codec's images are mono), after
        checking it is whole and not silent. Executor thread (the ring's consumer)."""
        tap = self.tap
        assert tap is not None
        audio = tap.read(job.end - job.start)
        if audio.shape[1] < job.end - job.start:
            raise RiffError(f"capture {job.name} holds {audio.shape[1]} of "
                            f"{job.end - job.start} frames; nothing changed")
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak < SILENCE:
            raise RiffError(f"capture {job.name} is silent (is anything connected to the "
                            "engine's inputs?); nothing changed")
        return np.ascontiguousarray(audio.mean(axis=0, dtype=np.float32)[None])

    def _save(self, job: CaptureJob, png: bytes) -> Path:
        """Write ``<folder>/<name>.png`` atomically (a temporary file renamed) and hand it to
        ``keep``. Executor thread."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{job.name}.png"
            tmp = self.folder / f".{job.name}.png.part"
            tmp.write_bytes(png)
            os.replace(tmp, path)
        except OSError as exc:
            raise RiffError(f"cannot save capture {job.name}: {exc}") from None
        if self.keep is not None:
            try:
                self.keep(path)
            except OSError as exc:  # the capture itself is fine: say so and go on
                log.error("capture %s: keeping it with the take failed: %s", job.name, exc)
        return path

    def warm_up(self) -> None:
        """Start the encoder process and load the codec (torch) in it now, at low priority,
        so the first capture does not pay for it while the jam plays (the daemon calls this
        at start). Loop; returns at once."""
        pool = self._encoder()
        if pool is None:
            return
        second = np.full((1, self.config.sample_rate), 0.1, np.float32)
        warm = pool.submit(encode_png, second, self.config.sample_rate, 1, 1)

        def done(f: concurrent.futures.Future[bytes]) -> None:
            """Thread: the pool's management thread; only logs."""
            if not f.cancelled() and f.exception() is not None:
                log.error("the capture encoder failed to start: %r", f.exception())

        warm.add_done_callback(done)

    def _encoder(self) -> concurrent.futures.Executor | None:
        """Where encoding runs: a process of its own (spawned on the first capture, kept for
        the next ones) with ``config.encode_process``, so the daemon never imports torch and
        its GIL is never held by the codec; else the loop's default thread pool (tests)."""
        if not self.config.encode_process:
            return None
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_encoder_init)
        return self._pool

    def keep_current(self) -> Path | None:
        """The current seed image's file when it is a capture (in the capture folder), so a
        take that starts can keep it too; None otherwise. Control plane (a few stat calls)."""
        name = str(self.state.get("seed_image"))
        path = self.folder / f"{name}.png"
        return path if path.is_file() else None

    async def close(self) -> None:
        """Cancel a running capture (shutdown). Loop."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            # Cancelled on purpose; a RiffError from the capture was logged by _finish.
            with contextlib.suppress(asyncio.CancelledError, RiffError):
                await task
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

