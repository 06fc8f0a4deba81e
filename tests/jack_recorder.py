"""A JACK client that records what arrives on its input ports, with JACK frame times."""

from __future__ import annotations

import threading
import uuid

import jack
import numpy as np


class Recorder:
    """Records ``channels`` inputs into a preallocated buffer of ``seconds`` of audio.

    Sample ``i`` of the buffer is JACK frame ``first_frame + i``; frames lost to xruns stay
    NaN, so a gap in the recording is never mistaken for silence in the output.
    """

    def __init__(self, server: str, seconds: float, channels: int = 2) -> None:
        self.client = jack.Client(f"rec-{uuid.uuid4().hex[:6]}", no_start_server=True,
                                  servername=server)
        self.rate = self.client.samplerate
        self.ports = [self.client.inports.register(f"in_{i}") for i in range(channels)]
        self.buf = np.full((channels, int(seconds * self.rate)), np.nan, np.float32)
        self.count = 0
        self.first_frame = -1
        self.xruns = 0
        self.full = threading.Event()
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)

    def _process(self, frames: int) -> None:
        """Thread: JACK's process thread; only copies."""
        now = self.client.last_frame_time
        if self.first_frame < 0:
            self.first_frame = now
        i = min(now - self.first_frame, self.buf.shape[1])
        n = min(frames, self.buf.shape[1] - i)
        for ch, port in enumerate(self.ports):
            self.buf[ch, i:i + n] = port.get_array()[:n]
        self.count = i + n
        if self.count >= self.buf.shape[1]:
            self.full.set()

    def _xrun(self, delay: float) -> None:
        self.xruns += 1

    def start(self, sources: list[str]) -> None:
        self.client.activate()
        for port, src in zip(self.ports, sources, strict=False):
            self.client.connect(src, port)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()

    def frame_time(self, index: int) -> int:
        return self.first_frame + index
