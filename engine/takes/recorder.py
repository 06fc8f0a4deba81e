"""Lossless recording of the engine's output, safe against a crash.

The audio thread must never wait on a disk, so recording is split in two:

- :meth:`Recorder.write` (audio thread) copies frames into a ring buffer allocated once at
  construction and advances a frame counter. It takes no lock, allocates no buffer, logs
  nothing; when the ring is full the block is dropped and counted in :attr:`overflows`.
- A writer thread drains the ring into the file and flushes it every ``flush_s`` seconds
  (``SoundFile.flush``: data to the OS plus the WAV header's sizes updated), so after a crash,
  even SIGKILL, the file reads back up to the last flush.

The file on disk while recording is always a WAV (32-bit float by default: the engine's
samples exactly). libsndfile cannot reopen a FLAC stream cut short, so a ``.flac`` target is
recorded as ``NAME.recording.wav`` and encoded to ``NAME.flac`` when the recording stops
cleanly; after a crash the ``.recording.wav`` is the recording.

The ring is the engine's one :class:`~engine.live.ring.SpscRing` (audio thread produces,
writer thread consumes; no lock).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.errors import InvalidRequest
from engine.live.ring import SpscRing

log = logging.getLogger(__name__)

#: Output formats by file suffix: (libsndfile format, default subtype).
FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}


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
    """

    def __init__(self, config: RecorderConfig) -> None:
        self.config = config
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
        self._file = sf.SoundFile(
            cfg.live_path, "w", cfg.sample_rate, cfg.channels, subtype=subtype, format="WAV"
        )
        self._thread = threading.Thread(target=self._run, name="riff-recorder", daemon=True)
        self._thread.start()
        log.info("recording to %s", cfg.live_path)

    def stop(self) -> Path:
        """Drain the ring, close the file (encode FLAC if asked) and return the final path
        (the empty ``.recording.wav`` for a FLAC target that received no frames).

        Called by the control thread after the audio thread has stopped calling :meth:`write`
        (frames written later are not recorded). Raises the writer thread's error, if any.
        """
        if self._thread is None:
            raise RuntimeError("recorder not started")
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        cfg = self.config
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
        """Writer thread: drain the ring into the file, flush every ``flush_s``."""
        assert self._file is not None
        poll = min(0.05, self.config.flush_s / 4)
        last_flush = time.monotonic()
        dirty = False
        try:
            while True:
                stopping = self._stop.is_set()
                dirty |= self._drain()
                now = time.monotonic()
                if dirty and (stopping or now - last_flush >= self.config.flush_s):
                    self._file.flush()
                    self._flushed_frames = self._frames_on_disk
                    self._flushes += 1
                    last_flush = now
                    dirty = False
                if stopping:
                    break
                self._stop.wait(poll)
        except BaseException as exc:  # reported by stop(); the audio thread goes on
            log.exception("recording to %s failed", self.config.live_path)
            self._error = exc
        finally:
            self._file.close()

    def _drain(self) -> bool:
        """Write every frame now in the ring; True if any were written."""
        assert self._file is not None
        spans = self._ring.regions()
        for start, stop in spans:
            self._file.write(self._ring.buffer[start:stop])
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
