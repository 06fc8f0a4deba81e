"""A `riff` subprocess whose merged output is collected line by line, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class RiffProcess:
    """`python -m protocols.cli ARGS` in the repo root; a reader thread keeps its log lines.

    The environment never starts a JACK server, runs torch on one thread and drops
    ``RIFF_TOKEN`` (a test that wants a token passes it explicitly)."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "JACK_NO_START_SERVER": "1", "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": "1"}
        env.pop("RIFF_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "protocols.cli", *args], cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def text(self) -> str:
        """Everything logged so far."""
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pred: Callable[[str], bool], timeout: float = 120.0) -> None:
        """Wait until ``pred(log text)`` holds; fails with the log's tail if the process
        exits first or the time runs out."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: pred("\n".join(self.lines)) or self.proc.poll() is not None, timeout)
            if not ok or not pred("\n".join(self.lines)):
                raise AssertionError("condition not met; log:\n" + "\n".join(self.lines[-30:]))

    def finish(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` (if still running) and return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
