"""Lossless recording of the engine's output, safe against a crash.

The audio thread must never wait on a disk, so recording is split in two:

- :meth:`Recorder.write` (audio thread) copies frames into a ring buffer allocated once at
  construction and advances a frame counter. It takes no lock, allocates no buffer, logs
  nothing; when the ring is full the block is dropped and counted in :attr:`overflows`.
- A writer thread drains the ring into the file and flushes it every ``flush_s`` seconds
  (``SoundFile.flush``: data to the OS plus the WAV header's sizes updated), so after a crash,
  even SIGKILL, the file reads back up to the last flush.

The file on disk while recording is always a WAV (32-bit float by default: the engine's
samples exactly), opened as RF64 with libsndfile's auto-downgrade: while it is under 4 GiB its
header is a plain RIFF/WAVE one (every reader opens it), and a take that passes the RIFF limit
(about 3 h 06 min of float stereo at 48 kHz) becomes RF64 in place, without a break (the header
reserves the room for RF64's ``ds64`` chunk from the start). libsndfile cannot reopen a FLAC
stream cut short, so a ``.flac`` target is recorded as ``NAME.recording.wav`` and encoded to
``NAME.flac`` when the recording stops cleanly; after a crash the ``.recording.wav`` is the
recording.

Failures are reported as they happen, not at stop: a write error (a full disk, a file size
limit) ends the writer thread, closes the file (everything written before stays readable),
logs once and calls ``on_error`` from the writer thread, so the owner can end the take and
tell the performer at once; :attr:`Recorder.failed` tells the audio thread to stop feeding it.
Ring overflows (the writer fell behind) are logged by the writer thread when they happen, at
most once per ``overflow_log_s``, and counted in :attr:`Recorder.overflows`.

The ring is the engine's one :class:`~engine.live.ring.SpscRing` (audio thread produces,
writer thread consumes; no lock).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.errors import InvalidRequest, RiffError
from engine.live.ring import SpscRing

log = logging.getLogger(__name__)

#: Output formats by file suffix: (libsndfile format, default subtype).
FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}

#: libsndfile's ``SFC_RF64_AUTO_DOWNGRADE`` command (sndfile.h; soundfile does not name it).
SFC_RF64_AUTO_DOWNGRADE = 0x1210


class RecordingError(RiffError):
    """Writing a take failed (disk full, file too large, I/O error); what was written before
    the failure stays readable."""


def open_take_file(path: Path, sample_rate: int, channels: int, subtype: str = "FLOAT"
                   ) -> sf.SoundFile:
    """Open ``path`` for writing as RF64 that stays a plain WAV until it passes 4 GiB.

    Why: a RIFF WAV cannot describe more than 4 GiB of data, so a long float take would
    break after about three hours; RF64 has 64-bit sizes, and with auto-downgrade libsndfile
    writes a RIFF header (with a JUNK chunk where RF64's ds64 goes) for as long as the file is
    small enough, so short takes stay readable by everything. Called by the control thread.
    """
    f = sf.SoundFile(path, "w", sample_rate, channels, subtype=subtype, format="RF64")
    sf._snd.sf_command(f._file, SFC_RF64_AUTO_DOWNGRADE, sf._ffi.NULL, 1)
    return f


@dataclasses.dataclass(frozen=True)
class RecorderConfig:
    """Where and how to record; validated on construction, derived sizes in frames."""

    path: Path
    sample_rate: int = 48000
    channels: int = 2
    ring_s: float = 4.0
    flush_s: float = 0.5
    subtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.path.suffix.lower() not in FORMATS:
            raise InvalidRequest(
                f"recording file must end in .wav or .flac, not {self.path.name!r}"
            )
        if not 8000 <= self.sample_rate <= 384000:
            raise InvalidRequest(f"sample rate {self.sample_rate} is out of range")
        if not 1 <= self.channels <= 32:
            raise InvalidRequest(f"channel count {self.channels} is out of range")
        if not 0.05 <= self.ring_s <= 600:
            raise InvalidRequest(f"ring length {self.ring_s} s is out of range (0.05..600)")
        if not 0.01 <= self.flush_s <= 60:
            raise InvalidRequest(f"flush interval {self.flush_s} s is out of range (0.01..60)")
        if self.subtype is not None and not sf.check_format(self.format, self.subtype):
            raise InvalidRequest(f"{self.format} cannot hold samples of type {self.subtype}")

    @property
    def format(self) -> str:
        """The final file's libsndfile format name (WAV or FLAC)."""
        return FORMATS[self.path.suffix.lower()][0]

    @property
    def ring_frames(self) -> int:
        """Capacity of the ring buffer in frames."""
        return max(1024, round(self.ring_s * self.sample_rate))

    @property
    def live_path(self) -> Path:
        """The WAV file written while recording (the target itself for .wav)."""
        if self.format == "WAV":
            return self.path
        return self.path.with_name(self.path.stem + ".recording.wav")


class Recorder:
    """Records frames handed to :meth:`write` into a file, via a writer thread.

    Lifecycle: construct (allocates the ring), :meth:`start` (opens the file, starts the
    thread), :meth:`write` from the audio thread any number of times, :meth:`stop`.
    ``on_error`` is called once, from the writer thread, when writing fails (the thread has
    then closed the file and ended); it must not block.
    """

    #: Seconds between two ring-overflow log lines (the count in between is summed).
    overflow_log_s = 5.0

    def __init__(self, config: RecorderConfig,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.on_error = on_error
        #: Set by the writer thread when writing failed: the audio thread stops feeding.
        self.failed = False
        self._ring = SpscRing(config.ring_frames, (config.channels,), np.float32)
        self._frames_on_disk = 0  # writer thread only
        self._flushes = 0
        self._flushed_frames = 0  # writer thread only
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: sf.SoundFile | None = None
        self._error: BaseException | None = None

    # -- audio thread -------------------------------------------------------------------------

    def write(self, frames: np.ndarray) -> bool:
        """Copy ``frames`` (shape (n, channels), float32) into the ring; True if it fitted.

        Called by the audio thread (e.g. the JACK process callback). Must not block, lock,
        allocate buffers or log. A block that does not fit whole is dropped and counted, never
        partly written.
        """
        return self._ring.write(frames)

    def write_channels(self, channels: Sequence[np.ndarray]) -> bool:
        """Like :meth:`write` for one array per channel (JACK's port buffers), so the audio
        thread need not interleave them first. Same rules: no lock, no allocation, no log."""
        return self._ring.write_columns(channels)

    # -- control thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Open the file and start the writer thread. Called by the control thread."""
        if self._thread is not None:
            raise RuntimeError("recorder already started")
        cfg = self.config
        cfg.live_path.parent.mkdir(parents=True, exist_ok=True)
        subtype = cfg.subtype if cfg.format == "WAV" and cfg.subtype else "FLOAT"
        self._file = open_take_file(cfg.live_path, cfg.sample_rate, cfg.channels, subtype)
        self._thread = threading.Thread(target=self._run, name="riff-recorder", daemon=True)
        self._thread.start()
        log.info("recording to %s", cfg.live_path)

    def stop(self) -> Path:
        """Drain the ring, close the file (encode FLAC if asked) and return the final path
        (the empty ``.recording.wav`` for a FLAC target that received no frames).

        Called after the audio thread has stopped calling :meth:`write` (frames written later
        are not recorded), from any thread but the audio thread: it joins the writer and may
        encode FLAC, so the daemon calls it in an executor, never on its loop. Raises
        :class:`RecordingError` when writing failed (the file then holds what was written
        before the failure, and a FLAC target is not encoded).
        """
        if self._thread is None:
            raise RuntimeError("recorder not started")
        self._stop.set()
        self._thread.join()
        cfg = self.config
        if self._error is not None:
            raise RecordingError(self.error) from self._error
        if cfg.format == "FLAC":
            if self._frames_on_disk == 0:  # libsndfile cannot write a FLAC without frames
                log.warning("nothing was recorded; kept the empty %s", cfg.live_path)
                return cfg.live_path
            _encode(cfg.live_path, cfg.path, cfg.subtype or "PCM_24")
            cfg.live_path.unlink()
        if self.overflows:
            log.warning("recording dropped %d frames (ring overflow)", self.overflows)
        log.info("recorded %d frames to %s", self._frames_on_disk, cfg.path)
        return cfg.path

    @property
    def error(self) -> str:
        """Why writing failed ("" while it has not): the file and the OS error."""
        if self._error is None:
            return ""
        return f"writing {self.config.live_path.name} failed: {self._error}"

    @property
    def frames_on_disk(self) -> int:
        """Frames handed to the file so far (writer thread's count; any thread may read)."""
        return self._frames_on_disk

    @property
    def overflows(self) -> int:
        """Frames dropped because the ring was full (the writer thread fell behind)."""
        return self._ring.dropped_rows

    @property
    def overflow_blocks(self) -> int:
        """Blocks (calls of :meth:`write`) dropped because the ring was full."""
        return self._ring.dropped_writes

    @property
    def flushed_frames(self) -> int:
        """Frames safely in the file as of the last flush (what survives a crash)."""
        return self._flushed_frames

    @property
    def flushes(self) -> int:
        """How many times the writer flushed the file."""
        return self._flushes

    @property
    def backlog(self) -> int:
        """Frames in the ring waiting for the writer."""
        return self._ring.backlog

    # -- writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        """Writer thread: drain the ring into the file, flush every ``flush_s``, report ring
        overflows as they happen; on a write error close the file, log, call ``on_error``."""
        assert self._file is not None
        poll = min(0.05, self.config.flush_s / 4)
        last_flush = time.monotonic()
        dirty = False
        reported = 0  # dropped frames already logged
        last_report = -self.overflow_log_s
        try:
            while True:
                stopping = self._stop.is_set()
                dirty |= self._drain()
                now = time.monotonic()
                dropped = self._ring.dropped_rows
                if dropped > reported and now - last_report >= self.overflow_log_s:
                    log.warning("recording %s: ring overflow, %d frames dropped (%d in all): "
                                "the disk is not keeping up", self.config.live_path.name,
                                dropped - reported, dropped)
                    reported, last_report = dropped, now
                if dirty and (stopping or now - last_flush >= self.config.flush_s):
                    self._file.flush()
                    self._flushed_frames = self._frames_on_disk
                    self._flushes += 1
                    last_flush = now
                    dirty = False
                if stopping:
                    break
                self._stop.wait(poll)
        except Exception as exc:  # reported at once (log, on_error) and by stop()
            self._fail(exc)
        finally:
            try:
                self._file.close()  # rewrites the header's sizes in place: no new space
            except Exception as exc:
                if self._error is None:
                    self._fail(exc)
                else:
                    log.warning("closing %s after the failure: %s", self.config.live_path, exc)

    def _fail(self, exc: BaseException) -> None:
        """Writer thread: remember the error, stop the audio thread's feeding, tell the owner."""
        self._error = exc
        self.failed = True
        log.error("recording to %s failed: %s (%d frames were written before the failed "
                  "write)", self.config.live_path, exc, self._frames_on_disk)
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("the recording's error handler failed")

    def _drain(self) -> bool:
        """Write every frame now in the ring; True if any were written."""
        assert self._file is not None
        spans = self._ring.regions()
        for start, stop in spans:
            try:
                self._file.write(self._ring.buffer[start:stop])
            except sf.LibsndfileError as exc:
                # libsndfile says only "System error."; the OS's errno says which.
                errno = sf._ffi.errno
                if errno:
                    raise OSError(errno, f"{os.strerror(errno)} ({exc})") from exc
                raise
            self._ring.release(stop - start)  # frees ring space for the audio thread
            self._frames_on_disk += stop - start
        return bool(spans)


def _encode(source: Path, target: Path, subtype: str) -> None:
    """Encode a finished WAV as ``target`` (FLAC) block by block, without loading it whole."""
    partial = target.with_name(target.name + ".part")
    with sf.SoundFile(source) as src, sf.SoundFile(
        partial, "w", src.samplerate, src.channels, subtype=subtype, format="FLAC"
    ) as dst:
        for block in src.blocks(blocksize=65536, dtype="float32", always_2d=True):
            dst.write(np.clip(block, -1.0, 1.0))
    partial.replace(target)
