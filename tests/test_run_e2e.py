"""End to end: `riff run` as a subprocess on a private dummy JACK server, recorded by a JACK
client. The generator is the test-tones stand-in (a distinct pure tone per clip, so every clip
can be recognised sample by sample); the tiny model runs in tests/test_worker.py."""

from __future__ import annotations

import dataclasses
import gc
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
    """Options that keep the control surfaces off shared ports."""
    return ["--osc-port", "0"]


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


XF = 480  # --crossfade-ms 10 at 48 kHz


@dataclasses.dataclass
class Take:
    """What one run of the scenario left behind: the daemon's exit status and log, the
    recording of its outputs and the xrun counts; the tests below each check one aspect."""

    code: int
    lines: list[str]
    starts_logged: list[tuple[int, int, int, int]]  # (job, sample, bar, JACK frame)
    pids: list[int]
    audio: np.ndarray  # left channel as recorded
    recorded: int
    first_frame: int  # JACK frame of the recording's first sample
    baseline: int  # xruns with only a recorder running, before and after
    engine_xruns_settled: int
    rec_xruns: int
    first_pid: int
    changed_at: int

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def heard(self) -> tuple[list[tuple[int, int, int, int]], list[int]]:
        """The clip starts inside the recording (the last 2 s left for the last clip) and
        their indices in the recording."""
        starts = [s for s in self.starts_logged
                  if 0 <= s[3] - self.first_frame < self.recorded - 2 * RATE]
        assert len(starts) >= 5
        return starts, [frame - self.first_frame for _, _, _, frame in starts]

    def tempo_line(self) -> int:
        """The sample the daemon logged for the 180 BPM tempo line."""
        tempo_change = TEMPO_CHANGE.search(self.log)
        assert tempo_change is not None, self.log[-2000:]
        return int(tempo_change.group(2))


@pytest.fixture(scope="module")
def take(jack_server: str) -> Take:
    """Play the scenario once for every test of this module (it takes about half a minute)."""
    return play_scenario(jack_server)


def play_scenario(server: str) -> Take:
    """`riff run` at 240 BPM, one bar per clip, recorded from its JACK ports: clips play, the
    worker is killed in the middle of a job, then the tempo changes to 180 BPM."""
    name = f"riff-e2e-{uuid.uuid4().hex[:6]}"
    daemon = Daemon(["--model", "test-tones", "--tempo", "240", "--bars", "1", "--steps", "8",
                     "--jack-server", server, "--client-name", name, "--no-connect",
                     "--crossfade-ms", "10", "--stdin"])
    rec = None
    switch = sys.getswitchinterval()
    try:
        baseline = baseline_xruns(server, seconds=2.0)
        daemon.wait_for(lambda ls: any("JACK: playing on" in s for s in ls))
        rec = start_recorder(server, name)
        daemon.wait_for(lambda ls: len(daemon.starts()) >= 3)
        # Xruns are counted from here on: the recorder is connected and clips play.
        engine_xruns_settled = daemon.settled_xruns()
        rec_xruns_settled = rec.xruns
        first_pid = kill_the_worker(daemon)
        changed_at = change_the_tempo(daemon)
        let_the_last_clip_play(daemon, rec)
        recorded = rec.count
        audio = rec.buf[0, :recorded].copy()
        rec_xruns = rec.xruns - rec_xruns_settled
        first_frame = rec.first_frame
    finally:
        code = shut_down(daemon, rec, switch)
    baseline += baseline_xruns(server, seconds=2.0)  # and once more after the run
    print("\n".join(daemon.lines))
    return Take(code, list(daemon.lines), daemon.starts(), daemon.pids(), audio, recorded,
                first_frame, baseline, engine_xruns_settled, rec_xruns, first_pid, changed_at)


def start_recorder(server: str, name: str) -> Recorder:
    """A recorder of the daemon's outputs, in this process."""
    # The recorder's callback needs this process's GIL: keep full GC passes and long
    # switch intervals from holding it (the daemon does the same for its own callback).
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.0005)
    rec = Recorder(server, seconds=40.0)
    assert rec.rate == RATE
    rec.start([f"{name}:out_L", f"{name}:out_R"])
    return rec


def kill_the_worker(daemon: Daemon) -> int:
    """Kill the worker in the middle of a job and wait for two clips from its successor; the
    killed worker's pid."""
    first_pid = daemon.pids()[0]
    os.kill(first_pid, signal.SIGKILL)
    daemon.wait_for(lambda ls: any("died" in s and "restarting" in s for s in ls))
    daemon.wait_for(lambda ls: len(daemon.pids()) >= 2)
    n_before = len(daemon.starts())
    daemon.wait_for(lambda ls: len(daemon.starts()) >= n_before + 2)
    return first_pid


def change_the_tempo(daemon: Daemon) -> int:
    """Set 180 BPM over stdin (it takes effect at the next bar line) and wait for three
    clips after it; the log line count when it was sent."""
    daemon.send("tempo 180")
    changed_at = len(daemon.lines)
    daemon.wait_for(lambda ls: any("tempo = 180" in s for s in ls))
    n_tempo = len(daemon.starts())
    daemon.wait_for(lambda ls: len(daemon.starts()) >= n_tempo + 3)
    return changed_at


def let_the_last_clip_play(daemon: Daemon, rec: Recorder) -> None:
    """Record until 2 s (and a block) after the last logged clip start, or 60 s."""
    need = daemon.starts()[-1][3] - rec.first_frame + 2 * RATE + 4096
    deadline = time.monotonic() + 60
    while rec.count < need and time.monotonic() < deadline:
        rec.full.wait(0.05)


def shut_down(daemon: Daemon, rec: Recorder | None, switch: float) -> int:
    """Undo this process's GC and switch interval settings, close the recorder, SIGTERM the
    daemon; its exit status (killed, and the timeout raised, after 60 s)."""
    sys.setswitchinterval(switch)
    gc.unfreeze()
    if rec is not None:
        rec.close()
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        return daemon.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        raise


def test_daemon_stops_cleanly_after_a_worker_kill(take: Take) -> None:
    log = take.log
    assert take.code == 0, log[-3000:]
    assert "stopped:" in log and "worker stopped" in log
    assert take.pids[1] != take.first_pid


def test_no_xruns_from_the_engine(take: Take) -> None:
    log = take.log
    xruns = re.search(r"stopped: \d+ clips started, \d+ late, (\d+) xruns", log)
    assert xruns is not None, log[-2000:]
    # Xruns depend on the whole machine, so they are asserted against a baseline taken in
    # the same run: a recorder alone for 2 s before and 2 s after. When the machine kept real
    # time then, the engine must not have caused a single xrun; on a machine too loaded to
    # keep real time even without the engine, the count is reported, not asserted
    # (bench/bench_jack.py measures it properly).
    # Counted from the settled point (recorder connected, clips playing) to the end, which
    # spans the worker kill, the restart and the tempo change.
    engine_xruns = int(xruns.group(1)) - take.engine_xruns_settled
    if take.baseline == 0:
        assert engine_xruns == 0 and take.rec_xruns == 0, log[-2000:]
    else:
        warnings.warn(f"this machine had {take.baseline} xruns in 4 s with only a recorder "
                      f"running, so the engine's {engine_xruns} xruns were not asserted",
                      stacklevel=1)


def test_no_silent_gap_after_the_first_clip(take: Take) -> None:
    """No silent gap after the first clip started (10 ms windows), across the kill too."""
    audio, recorded = take.audio, take.recorded
    first = take.starts_logged[0][3] - take.first_frame  # may precede the recording
    win = RATE // 100
    begin = max(first, 0) + XF
    tail = audio[begin: begin + (recorded - begin) // win * win]
    rms = np.sqrt(np.mean(tail.reshape(-1, win) ** 2, axis=1))  # NaN: lost to an xrun
    assert np.nanmin(rms) > 0.05, f"silent window at {int(np.nanargmin(rms)) * win + begin}"
    assert np.mean(np.isfinite(rms)) > 0.5


def test_each_clip_starts_on_its_bar_line_with_its_own_tone(take: Take) -> None:
    """From the logged start sample on (the crossfade ends there) the recording is the
    clip's own tone at full level, at its own sample index counted from that sample. Clips
    from the tempo line on (the sample the daemon logged for it) are 180 BPM bars."""
    starts, idx = take.heard()
    tempo_line = take.tempo_line()
    for k, (job, sample, _bar, _) in enumerate(starts):
        i = idx[k]
        end = idx[k + 1] if k + 1 < len(starts) else min(take.recorded, i + RATE)
        n_clip = RATE if sample < tempo_line else 64000
        f = tone_frequency(job, n_clip, RATE)
        n = np.arange(0, min(end - i - XF, 4000))  # up to the next clip's pre-roll
        expect = 0.25 * np.sin(2 * np.pi * f * n / RATE)
        got = take.audio[i + n]
        ok = np.isfinite(got)
        assert ok.sum() > 1000
        np.testing.assert_allclose(got[ok], expect[ok], atol=2e-4,
                                   err_msg=f"clip {job} at sample {sample}")


def test_bar_lines_follow_the_tempo_change(take: Take) -> None:
    """Bar lines are where the clips start: 48000 samples per bar at 240 BPM, then 64000
    after the tempo change, which took effect on a bar line of the old grid."""
    starts, _ = take.heard()
    tempo_line = take.tempo_line()
    samples = [s for _, s, _, _ in starts]
    bars = [b for _, _, b, _ in starts]
    steps = np.diff(samples) / np.maximum(np.diff(bars), 1)
    assert set(steps.tolist()) <= {48000.0, 64000.0}, steps
    assert 64000.0 in steps.tolist(), "the tempo change never took effect"
    change = steps.tolist().index(64000.0)
    assert all(s == 48000.0 for s in steps[:change]) and all(s == 64000.0 for s in steps[change:])
    assert samples[change] >= tempo_line and (tempo_line - samples[0]) % 48000 == 0
    assert take.changed_at > 0


def test_no_click_at_clip_changes_and_loop_seams(take: Take) -> None:
    """Around every bar line the sample-to-sample jump stays within what the loudest, highest
    tone (or an equal-power crossfade of two) makes anyway. (Away from bar lines an xrun of
    this loaded machine may drop a cycle.)"""
    starts, idx = take.heard()
    tempo_line = take.tempo_line()
    samples = [s for _, s, _, _ in starts]
    f_max = 220.0 * 2 ** (11 / 12) * 1.01
    limit = 0.25 * 2 * np.pi * f_max / RATE * np.sqrt(2) * 1.1
    seams = 0
    for k, i in enumerate(idx):
        nxt = idx[k + 1] if k + 1 < len(idx) else take.recorded - 64
        length = 64000 if samples[k] >= tempo_line else 48000
        for line in range(i, nxt, length):
            window = take.audio[line - 32:line + 32]
            if window.size == 64 and np.all(np.isfinite(window)):
                assert np.abs(np.diff(window)).max() <= limit, f"click at frame {line}"
                seams += 1
    assert seams >= 5
