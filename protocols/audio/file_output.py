"""File output: render the player's stream into an audio file instead of JACK.

Two clocks: *real time* (a thread renders one block per block duration, as a sound card would
pull it) and *offline* (as fast as possible, for tests and machines without JACK). Offline,
the renderer never runs ahead of the control plane: it renders up to the end of the first pass
of the latest scheduled clip (:meth:`Player.horizon`) and then waits until a later clip (or an
explicit repeat) is scheduled, so a slow generator never makes a clip late and the file is the
same on every run. An optional ``gate(pos, frames) -> frames`` lets the control plane hold
the renderer back further (``riff run`` keeps it before a bar line's decision deadline until
the clips planned for it are ready). ``takes`` (a :class:`~engine.takes.recording.TakeController`)
gets every rendered block after the player, for ``--record`` / ``/riff/record/start``.

Threads: :meth:`FileOutput.start`, :meth:`FileOutput.stop` and :meth:`FileOutput.wait` run on
the control thread; the render loop runs on the output's own thread (it is the audio thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.live.player import Player
from engine.takes.recording import TakeController

log = logging.getLogger(__name__)


class FileOutput:
    """Renders ``player`` into ``path`` (format from the suffix; WAV is float32)."""

    def __init__(self, player: Player, path: Path, *, offline: bool = False, block: int = 1024,
                 end_sample: int | None = None, wait_timeout: float = 600.0,
                 gate: Callable[[int, int], int] | None = None,
                 takes: TakeController | None = None) -> None:
        self.player = player
        self.path = Path(path)
        self.offline = offline
        self.block = block
        self.end_sample = end_sample
        self.wait_timeout = wait_timeout
        self.gate = gate
        self.takes = takes
        self.sample_rate = player.config.sample_rate
        self.error: BaseException | None = None
        self.waits = 0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="riff-file-output", daemon=True)
        subtype = "FLOAT" if self.path.suffix.lower() in (".wav", ".w64") else None
        self._file = sf.SoundFile(str(self.path), "w", samplerate=self.sample_rate,
                                  channels=player.config.channels, subtype=subtype)

    def start(self) -> None:
        """Start the render thread (control thread)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop rendering and close the file (control thread); waits for the render thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if not self._file.closed:
            self._file.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until ``end_sample`` was reached (or the thread failed); True when done."""
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        """Whether rendering finished (end reached, stopped, or failed)."""
        return self._done.is_set()

    def _run(self) -> None:
        """The render loop. Thread: the file output's own thread (the audio thread here)."""
        try:
            self._loop()
        except BaseException as exc:  # reported to the control thread through .error
            log.exception("file output to %s failed", self.path)
            self.error = exc
        finally:
            self._done.set()

    def _loop(self) -> None:
        chans = self.player.config.channels
        buf = np.zeros((chans, self.block), np.float32)
        frames = np.zeros((self.block, chans), np.float32)
        next_at = time.monotonic()
        while not self._stop.is_set():
            pos = self.player.position()
            n = self.block
            if self.end_sample is not None:
                n = min(n, self.end_sample - pos)
                if n <= 0:
                    return
            if self.offline:
                n = self._offline_allowance(pos, n)
                if n <= 0:
                    continue
            else:
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                next_at += self.block / self.sample_rate
            if self.offline and self.takes is not None:
                self.takes.wait_room(n)  # faster than real time: let the take's writer keep up
            self.player.render(buf[:, :n])
            if self.takes is not None:
                self.takes.write_channels([buf[ch, :n] for ch in range(chans)],
                                          self.player.position())
            frames[:n] = buf[:, :n].T
            self._file.write(frames[:n])

    def _offline_allowance(self, pos: int, n: int) -> int:
        """Frames the offline renderer may render now: up to the horizon; waits
        (up to ``wait_timeout``) for the control plane to schedule further when there."""
        deadline = time.monotonic() + self.wait_timeout
        waited = False
        while not self._stop.is_set():
            horizon = self.player.horizon()
            if pos < horizon:
                n = min(n, horizon - pos)
                return self.gate(pos, n) if self.gate is not None else n
            if time.monotonic() > deadline:
                log.warning("offline render: nothing scheduled after sample %d for %.0f s; "
                            "going on with what plays", pos, self.wait_timeout)
                return n
            if not waited:
                self.waits += 1
                waited = True
            self.player.wait_scheduled(min(0.2, max(0.0, deadline - time.monotonic())))
        return 0
