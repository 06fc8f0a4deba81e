"""End to end: `riff run` as a subprocess on a private dummy JACK server, recorded by a JACK
client. The generator is the test-tones stand-in (a distinct pure tone per clip, so every clip
can be recognised sample by sample); the tiny model runs in tests/test_worker.py."""

from __future__ import annotations

import gc
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine.live.worker import tone_frequency
from tests.jack_recorder import Recorder

pytestmark = [pytest.mark.jack, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
RATE = 48000
CLIP_START = re.compile(r"clip (\d+) started at sample (\d+) \(bar (-?\d+), JACK frame (\d+)\)")
READY = re.compile(r"ready \(pid (\d+)")
STATUS_XRUNS = re.compile(r"\| xruns (\d+) \|")
TEMPO_CHANGE = re.compile(r"tempo 180\.000 BPM, \d+/bar from bar (-?\d+) \(sample (\d+)\)")


def baseline_xruns(server: str, seconds: float) -> int:
    """Xruns the server reports while only a recorder runs: how well this machine keeps
    real time at the moment, measured in the same run."""
    gc.collect()
    rec = Recorder(server, seconds=seconds)
    rec.start([])
    try:
        assert rec.full.wait(seconds * 10 + 10)
    finally:
        rec.close()
    return rec.xruns


def no_surfaces() -> list[str]:
    """Options that keep control surfaces (when present) off shared ports."""
    return ["--osc-port", "0"] if importlib.util.find_spec("protocols.surfaces") else []


class Daemon:
    """`riff run` in a subprocess; collects its log lines."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "JACK_NO_START_SERVER": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "protocols.cli", "run", *args, *no_surfaces()], cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float = 90.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.lines) or self.proc.poll() is not None,
                                       timeout):
                raise AssertionError("timed out; log:\n" + "\n".join(self.lines[-30:]))
            if not pred(self.lines):
                raise AssertionError("daemon exited; log:\n" + "\n".join(self.lines[-30:]))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def starts(self) -> list[tuple[int, int, int, int]]:
        """(job id, sample, bar, JACK frame) of every clip start logged so far."""
        with self._cond:
            return [tuple(map(int, m.groups())) for line in self.lines  # type: ignore[misc]
                    if (m := CLIP_START.search(line))]

    def settled_xruns(self) -> int:
        """The xruns of the next per-bar status line: the count once the test's recorder is
        connected (JACK may miss a period while its graph changes; that is the test's doing)."""
        with self._cond:
            seen = len(self.lines)
        self.wait_for(lambda ls: any(STATUS_XRUNS.search(s) for s in ls[seen:]))
        with self._cond:
            return next(int(m.group(1)) for s in self.lines[seen:]
                        if (m := STATUS_XRUNS.search(s)))

    def pids(self) -> list[int]:
        with self._cond:
            return [int(m.group(1)) for line in self.lines if (m := READY.search(line))]


def test_daemon_plays_on_the_bar_grid_survives_a_worker_kill_and_follows_tempo(
        jack_server: str) -> None:
    name = f"riff-e2e-{uuid.uuid4().hex[:6]}"
    xf = 480  # --crossfade-ms 10 at 48 kHz
    daemon = Daemon(["--model", "test-tones", "--tempo", "240", "--bars", "1", "--steps", "8",
                     "--jack-server", jack_server, "--client-name", name, "--no-connect",
                     "--crossfade-ms", "10", "--stdin"])
    rec = None
    switch = sys.getswitchinterval()
    try:
        baseline = baseline_xruns(jack_server, seconds=2.0)
        daemon.wait_for(lambda ls: any("JACK: playing on" in s for s in ls))
        # The recorder's callback needs this process's GIL: keep full GC passes and long
        # switch intervals from holding it (the daemon does the same for its own callback).
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(0.0005)
        rec = Recorder(jack_server, seconds=40.0)
        assert rec.rate == RATE
        rec.start([f"{name}:out_L", f"{name}:out_R"])
        daemon.wait_for(lambda ls: len(daemon.starts()) >= 3)
        # Xruns are counted from here on: the recorder is connected and clips play.
        engine_xruns_settled = daemon.settled_xruns()
        rec_xruns_settled = rec.xruns
        # Kill the worker in the middle of a job: the audio must go on.
        first_pid = daemon.pids()[0]
        os.kill(first_pid, signal.SIGKILL)
        daemon.wait_for(lambda ls: any("died" in s and "restarting" in s for s in ls))
        daemon.wait_for(lambda ls: len(daemon.pids()) >= 2)
        n_before = len(daemon.starts())
        daemon.wait_for(lambda ls: len(daemon.starts()) >= n_before + 2)
        # Change the tempo: it takes effect at the next bar line.
        daemon.send("tempo 180")
        changed_at = len(daemon.lines)
        daemon.wait_for(lambda ls: any("tempo = 180" in s for s in ls))
        n_tempo = len(daemon.starts())
        daemon.wait_for(lambda ls: len(daemon.starts()) >= n_tempo + 3)
        need = daemon.starts()[-1][3] - rec.first_frame + 2 * RATE + 4096
        deadline = time.monotonic() + 60
        while rec.count < need and time.monotonic() < deadline:  # let the last clip play
            rec.full.wait(0.05)
        recorded = rec.count
        audio = rec.buf[0, :recorded].copy()
        rec_xruns = rec.xruns - rec_xruns_settled
        first_frame = rec.first_frame
    finally:
        sys.setswitchinterval(switch)
        gc.unfreeze()
        if rec is not None:
            rec.close()
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            code = daemon.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            raise
    baseline += baseline_xruns(jack_server, seconds=2.0)  # and once more after the run
    log = "\n".join(daemon.lines)
    print(log)
    assert code == 0, log[-3000:]
    assert "stopped:" in log and "worker stopped" in log
    xruns = re.search(r"stopped: \d+ clips started, \d+ late, (\d+) xruns", log)
    assert xruns is not None, log[-2000:]
    # Xruns depend on the whole machine, so they are asserted against a baseline taken in
    # the same run: a recorder alone for 2 s before and 2 s after. When the machine kept real
    # time then, the engine must not have caused a single xrun; on a machine too loaded to
    # keep real time even without the engine, the count is reported, not asserted
    # (bench/bench_jack.py measures it properly).
    # Counted from the settled point (recorder connected, clips playing) to the end, which
    # spans the worker kill, the restart and the tempo change.
    engine_xruns = int(xruns.group(1)) - engine_xruns_settled
    if baseline == 0:
        assert engine_xruns == 0 and rec_xruns == 0, log[-2000:]
    else:
        warnings.warn(f"this machine had {baseline} xruns in 4 s with only a recorder "
                      f"running, so the engine's {engine_xruns} xruns were not asserted",
                      stacklevel=1)
    assert daemon.pids()[1] != first_pid

    all_starts = daemon.starts()
    first = all_starts[0][3] - first_frame  # may precede the recording
    starts = [s for s in all_starts if 0 <= s[3] - first_frame < recorded - 2 * RATE]
    assert len(starts) >= 5
    idx = [frame - first_frame for _, _, _, frame in starts]

    # 1. No silent gap after the first clip started (10 ms windows), across the kill too.
    win = RATE // 100
    begin = max(first, 0) + xf
    tail = audio[begin: begin + (recorded - begin) // win * win]
    rms = np.sqrt(np.mean(tail.reshape(-1, win) ** 2, axis=1))  # NaN: lost to an xrun
    assert np.nanmin(rms) > 0.05, f"silent window at {int(np.nanargmin(rms)) * win + begin}"
    assert np.mean(np.isfinite(rms)) > 0.5

    # 2. Each clip starts exactly on its bar line: after the crossfade the recording is the
    #    clip's own tone, at its own sample index counted from the logged start sample.
    #    Clips from the tempo line on (the sample the daemon logged for it) are 180 BPM bars.
    tempo_change = TEMPO_CHANGE.search(log)
    assert tempo_change is not None, log[-2000:]
    tempo_line = int(tempo_change.group(2))
    for k, (job, sample, _bar, _) in enumerate(starts):
        i = idx[k]
        end = idx[k + 1] if k + 1 < len(starts) else min(recorded, i + RATE)
        n_clip = RATE if sample < tempo_line else 64000
        f = tone_frequency(job, n_clip, RATE)
        n = np.arange(xf, min(end - i, xf + 4000))
        expect = 0.25 * np.sin(2 * np.pi * f * n / RATE)
        got = audio[i + n]
        ok = np.isfinite(got)
        assert ok.sum() > 1000
        np.testing.assert_allclose(got[ok], expect[ok], atol=2e-4,
                                   err_msg=f"clip {job} at sample {sample}")

    # 3. Bar lines are where the clips start: 48000 samples per bar at 240 BPM, then 64000
    #    after the tempo change, which took effect on a bar line of the old grid.
    samples = [s for _, s, _, _ in starts]
    bars = [b for _, _, b, _ in starts]
    steps = np.diff(samples) / np.maximum(np.diff(bars), 1)
    assert set(steps.tolist()) <= {48000.0, 64000.0}, steps
    assert 64000.0 in steps.tolist(), "the tempo change never took effect"
    change = steps.tolist().index(64000.0)
    assert all(s == 48000.0 for s in steps[:change]) and all(s == 64000.0 for s in steps[change:])
    assert samples[change] >= tempo_line and (tempo_line - samples[0]) % 48000 == 0
    assert changed_at > 0

    # 4. No click at clip changes and loop seams: around every bar line the sample-to-sample
    #    jump stays within what the loudest, highest tone (or an equal-power crossfade of two)
    #    makes anyway. (Away from bar lines an xrun of this loaded machine may drop a cycle.)
    f_max = 220.0 * 2 ** (11 / 12) * 1.01
    limit = 0.25 * 2 * np.pi * f_max / RATE * np.sqrt(2) * 1.1
    seams = 0
    for k, i in enumerate(idx):
        nxt = idx[k + 1] if k + 1 < len(idx) else recorded - 64
        length = 64000 if samples[k] >= tempo_line else 48000
        for line in range(i, nxt, length):
            window = audio[line - 32:line + 32]
            if window.size == 64 and np.all(np.isfinite(window)):
                assert np.abs(np.diff(window)).max() <= limit, f"click at frame {line}"
                seams += 1
    assert seams >= 5
