"""A private ``jackd -d dummy`` that a test can kill and start again under the same name."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from typing import Any

import jack
import pytest


class PrivateJack:
    """A dummy-backend JACK server of this test's own (48 kHz, 256 frames), a child of this
    process so that a kill is reaped and the name can be reused at once."""

    def __init__(self, prefix: str = "riff-own") -> None:
        if shutil.which("jackd") is None:
            pytest.skip("jackd is not installed")
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until a client can open on it."""
        self.killed = False
        self.proc = subprocess.Popen(
            ["jackd", "-n", self.name, "-d", "dummy", "-r", "48000", "-p", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"jackd {self.name} did not start (exit {self.proc.poll()})")
            time.sleep(0.05)

    def answers(self) -> bool:
        """Whether a client can open on the server now."""
        try:
            client = jack.Client(f"probe-{uuid.uuid4().hex[:6]}", no_start_server=True,
                                 servername=self.name)
        except jack.JackOpenError:
            return False
        client.close()
        return True

    def kill(self) -> None:
        """SIGKILL the server (no goodbye to its clients) and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
            self.killed = True

    def stop(self) -> None:
        """Terminate the server and reap it (safe when it is not running). A server that was
        killed and not started again is started and terminated once more: a killed jackd
        leaves its entry in libjack's registry of (at most 8) servers, which only a server
        of the same name reclaims."""
        if self.proc is None and self.killed:
            self.start()
        self.killed = False
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


def timebase_master(server: str, bpm: float = 150.0) -> jack.Client:
    """A JACK client that will be the timebase master (as a DAW is) at ``bpm`` in 4/4 once
    activated: its callback derives bar, beat and tick from the transport frame. Not yet
    activated; the caller activates, rolls and closes it."""
    master = jack.Client(f"master-{uuid.uuid4().hex[:6]}", no_start_server=True,
                         servername=server)
    spb = 60.0 / bpm * master.samplerate  # samples per beat

    def timebase(state: int, blocksize: int, pos: Any, new_pos: bool) -> None:
        beats = pos.frame / spb
        pos.valid = jack._lib.JackPositionBBT
        pos.bar, pos.beat = int(beats // 4) + 1, int(beats % 4) + 1
        pos.ticks_per_beat, pos.tick = 1920.0, int((beats % 1) * 1920)
        pos.beats_per_bar, pos.beat_type, pos.beats_per_minute = 4.0, 4.0, bpm

    master.set_timebase_callback(timebase)
    return master
