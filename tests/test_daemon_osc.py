"""The real daemon (`riff run` subprocess) driven over real UDP OSC.

- test-tones generator, real-time file output: ping/pong, a tempo change that is fed back to
  a subscriber and applied at the next bar line, a bad message answered with /riff/error while
  the daemon keeps playing;
- tiny model, offline file output with --record: takes stopped and started over OSC, each
  re-rendered by `riff rerender` to the very same samples."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from engine.takes.control_log import read_control_log
from tests.control_surface_helpers import Client
from tests.riff_process import RiffProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RATE = 48000
CLIP_START = re.compile(r"clip (\d+) started at sample (\d+) \(bar (-?\d+)")
BAR_LINE = re.compile(r"bar (\d+) \| clip -?\d+ \| ([\d.]+) BPM")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon(RiffProcess):
    """`riff run` with OSC on a free loopback port; collects its log."""

    def __init__(self, *args: str) -> None:
        self.port = free_udp_port()
        super().__init__("run", *args, "--osc-host", "127.0.0.1", "--osc-port", str(self.port))
        self.wait_for(lambda t: "OSC listening" in t)
        self.osc = Client(("127.0.0.1", self.port))

    def starts(self) -> list[tuple[int, int, int]]:
        return [(int(j), int(s), int(b)) for j, s, b in CLIP_START.findall(self.text())]

    def reply(self, address: str, *args: Any, want: str) -> list[Any]:
        """Send a message and return the arguments of the first reply at ``want`` (or
        /riff/error, which fails unless it is what was wanted)."""
        self.osc.send(address, *args)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for m in self.osc.recv():
                if m.address == want:
                    return list(m.params)
                assert m.address != "/riff/error", (address, m.params)
        raise AssertionError(f"no {want} reply to {address}")

    def finish(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.osc.close()
        return super().finish(sig, timeout)


def test_ping_tempo_feedback_and_bad_messages(tmp_path: Path) -> None:
    daemon = Daemon("--model", "test-tones", "--tempo", "240", "--bars", "1", "--steps", "2",
                    "--crossfade-ms", "0", "--output", str(tmp_path / "live.wav"),
                    "--takes-dir", str(tmp_path / "takes"))
    try:
        assert daemon.reply("/riff/ping", want="/riff/pong") == []
        daemon.wait_for(lambda t: len(CLIP_START.findall(t)) >= 2)
        daemon.osc.send("/riff/subscribe")
        daemon.reply("/riff/ping", want="/riff/pong")  # the state burst is in before the pong
        bar_before = max(int(b) for b, _ in BAR_LINE.findall(daemon.text()))
        # Feedback: the sender moved tempo, so its copy comes when its hold (0.5 s) ends.
        assert daemon.reply("/riff/tempo", 180.0, want="/riff/tempo") == [180.0]
        daemon.wait_for(lambda t: "180.0 BPM" in t and len(
            [b for b, bpm in BAR_LINE.findall(t) if bpm == "180.0"]) >= 2)
        # Bad input: refused with a reason, nothing changes, the audio goes on.
        assert daemon.reply("/riff/tempo", "fast", want="/riff/error")[0] == "/riff/tempo"
        assert daemon.reply("/riff/tempo", 999.0, want="/riff/error")[0] == "/riff/tempo"
        assert daemon.reply("/riff/nope", want="/riff/error")[0] == "/riff/nope"
        # No audio input (no --input): a capture is refused with the option to use.
        assert daemon.reply("/riff/capture", 1, want="/riff/error") == [
            "/riff/capture", "capture needs audio input: start the engine with riff run --input"]
        daemon.osc.send_raw(b"garbage!")  # not OSC at all: an error about the datagram
        assert daemon.reply("/riff/ping", want="/riff/error")[0] == ""
        assert daemon.reply("/riff/ping", want="/riff/pong") == []
        count = len(daemon.starts())
        daemon.wait_for(lambda t: len(CLIP_START.findall(t)) >= count + 2)
        # Without --record, takes still start on request, into --takes-dir.
        assert not (tmp_path / "takes").exists()
        started = daemon.reply("/riff/record/start", "quick", want="/riff/record/started")
        assert started == ["quick.wav"]
        count = len(daemon.starts())
        daemon.wait_for(lambda t: len(CLIP_START.findall(t)) >= count + 1)
        stopped = daemon.reply("/riff/record/stop", want="/riff/record/stopped")
    finally:
        rc = daemon.finish()
    assert stopped == ["quick.wav", "quick.jsonl"]
    take, take_rate = sf.read(tmp_path / "takes" / "quick.wav", dtype="float32",
                              always_2d=True)
    assert take_rate == RATE and take.shape[0] >= RATE // 2 and np.abs(take).max() > 0.05
    assert read_control_log(tmp_path / "takes" / "quick.jsonl").complete
    log = daemon.text()
    assert rc == 0, log[-3000:]
    bars = [(int(b), float(bpm)) for b, bpm in BAR_LINE.findall(log)]
    changed = next(b for b, bpm in bars if bpm == 180.0)
    assert all(bpm == 240.0 for b, bpm in bars if b < changed)
    assert all(bpm == 180.0 for b, bpm in bars if b >= changed)
    assert bar_before < changed <= bar_before + 2  # at the next bar line (or the one after,
    # when the message landed in the last moments before the status line of a new bar)
    for _, sample, bar in daemon.starts():  # every clip on the bar grid, old and new tempo
        expected = bar * RATE if bar <= changed else changed * RATE + (bar - changed) * 64000
        assert sample == expected, (sample, bar, changed)
    assert re.search(r"refused: .*tempo", log)
    assert "180.0" in log


def osc_rerender(log_path: Path, out: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "protocols.cli", "rerender", str(log_path),
                        "--out", str(out), "--phase", "fast", "--device", "cpu"], cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_record_over_osc_and_rerender_the_takes(tmp_path: Path) -> None:
    takes = tmp_path / "takes"
    daemon = Daemon("--model", "tiny", "--device", "cpu", "--tempo", "240", "--bars", "1",
                    "--steps", "2", "--output", str(tmp_path / "set.wav"), "--offline",
                    "--duration-bars", "14", "--record", str(takes))
    try:
        daemon.wait_for(lambda t: len(CLIP_START.findall(t)) >= 2)
        first = daemon.reply("/riff/record/stop", want="/riff/record/stopped")
        assert first[0].endswith(".wav") and first[1].endswith(".jsonl")
        err = daemon.reply("/riff/record/stop", want="/riff/error")
        assert err[0] == "/riff/record/stop" and "not recording" in err[1]
        err = daemon.reply("/riff/record/start", "../escape", want="/riff/error")
        assert err[0] == "/riff/record/start"
        assert daemon.reply("/riff/record/start", "mid", want="/riff/record/started") == [
            "mid.wav"]
        err = daemon.reply("/riff/record/start", "again", want="/riff/error")
        assert "already recording" in err[1]
        count = len(daemon.starts())
        daemon.osc.send("/riff/prompt", "church bells")  # a command inside the take
        daemon.wait_for(lambda t: len(CLIP_START.findall(t)) >= count + 3)
        assert daemon.reply("/riff/record/stop", want="/riff/record/stopped") == [
            "mid.wav", "mid.jsonl"]
        daemon.wait_for(lambda t: "output finished" in t)
    finally:
        rc = daemon.finish()
    assert rc == 0, daemon.text()[-3000:]
    assert not (tmp_path / "escape.wav").exists() and not (takes / "again.wav").exists()
    log_text = (takes / "mid.jsonl").read_text()
    assert '"take_start"' in log_text and '"church bells"' in log_text
    # The take from the start (--record): whole, its log complete. (A take from sample 0
    # re-rendering exactly is tests/test_recording.py's case.)
    whole, rate = sf.read(takes / first[0], dtype="float32", always_2d=True)
    assert rate == RATE and whole.shape[0] > RATE
    assert read_control_log(takes / first[1]).complete
    # The take started mid-clip over OSC re-renders to the very same samples.
    recorded, rate = sf.read(takes / "mid.wav", dtype="float32", always_2d=True)
    # Three clip starts span two bars when every clip is on time; on a loaded machine a late
    # clip starts mid-bar (phase-locked), so only more than one bar is certain.
    assert rate == RATE and recorded.shape[0] > RATE
    assert np.abs(recorded).max(axis=1).min() > 0  # sound from its first frame, no gap
    again = tmp_path / "again.wav"
    osc_rerender(takes / "mid.jsonl", again)
    rerendered, _ = sf.read(again, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(rerendered, recorded)
