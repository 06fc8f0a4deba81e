"""`riff run --generator URL` end to end: a real `riff serve --model tiny` subprocess on a
loopback port generates the clips; the daemon (a subprocess too) renders them into a file.

Offline: every clip arrives over HTTP and starts on its bar line, with no silent gap after the
first one. Real time: the server is killed mid-run; the current clip keeps repeating, the
failures are counted and logged, and the file has no gap."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.takes.control_log import read_control_log
from tests.riff_process import RiffProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RATE = 48000
BAR = RATE  # 1 bar at 240 BPM, 4/4
CLIP_START = re.compile(r"clip (\d+) started at sample (\d+)")


@pytest.fixture()
def server() -> Iterator[tuple[RiffProcess, str]]:
    proc = RiffProcess("serve", "--model", "tiny", "--port", "0")
    try:
        proc.wait_for(lambda t: "riff serve: tiny on http://" in t)
        match = re.search(r"on (http://[\d.]+:\d+)", proc.text())
        assert match is not None
        yield proc, match.group(1)
    finally:
        proc.finish(signal.SIGKILL)


def run_args(url: str, out: Path, *extra: str) -> list[str]:
    return ["run", "--generator", url, "--tempo", "240", "--bars", "1", "--steps", "2",
            "--crossfade-ms", "0", "--output", str(out), "--osc-port", "0", *extra]


def starts(text: str) -> list[tuple[int, int]]:
    return [(int(j), int(s)) for j, s in CLIP_START.findall(text)]


def assert_no_gap(audio: np.ndarray, begin: int, end: int) -> None:
    """Every 10 ms window in [begin, end) has signal."""
    window = RATE // 100
    part = np.abs(audio[begin:end]).max(axis=1)
    part = part[: len(part) // window * window].reshape(-1, window).max(axis=1)
    assert part.size > 0 and part.min() > 0, f"silent window at {int(part.argmin())}"


def test_offline_run_generates_every_clip_on_the_remote_server(
        server: tuple[RiffProcess, str], tmp_path: Path) -> None:
    _, url = server
    out = tmp_path / "remote.wav"
    takes = tmp_path / "takes"
    daemon = RiffProcess(*run_args(url, out, "--offline", "--duration-bars", "5", "--record",
                            str(takes)))
    assert daemon.proc.wait(120) == 0, daemon.text()[-3000:]
    log = daemon.text()
    assert "connecting to the generator at " + url in log
    audio, rate = sf.read(out, dtype="float32")
    assert rate == RATE and audio.shape == (5 * BAR, 2)
    assert [s for _, s in starts(log)] == [BAR, 2 * BAR, 3 * BAR, 4 * BAR], log
    assert len({j for j, _ in starts(log)}) == 4  # a new clip on every bar
    assert np.all(audio[:BAR] == 0.0)  # before the first clip
    assert_no_gap(audio, BAR, 5 * BAR)
    assert re.search(r"stopped: 4 clips started, 0 late", log), log
    assert re.search(r"remote generator: \d+ requests, 0 failed", log), log
    # Recorded from the start: the take is the output, and its log names the server's model
    # (what `riff rerender` loads).
    (take,) = takes.glob("*.wav")
    np.testing.assert_array_equal(sf.read(take, dtype="float32")[0], audio)
    control = read_control_log(take.with_suffix(".jsonl"))
    assert control.complete and control.header.info["model"] == "tiny"
    assert control.header.info["generator"] == url


def test_audio_goes_on_while_the_server_is_down(server: tuple[RiffProcess, str],
                                                tmp_path: Path) -> None:
    serve, url = server
    out = tmp_path / "live.wav"
    daemon = RiffProcess(*run_args(url, out))
    try:
        daemon.wait_for(lambda t: len(starts(t)) >= 2)
        first = starts(daemon.text())[0][1]
        serve.finish(signal.SIGKILL)  # the GPU box goes away mid-set
        # Attempts fail (counted in the per-bar line), the current clip repeats meanwhile.
        daemon.wait_for(lambda t: re.search(r"repeated [1-9]\d* \| failed [1-9]", t) is not None)
        bar_lines = len(re.findall(r"\| repeated ", daemon.text()))
        daemon.wait_for(lambda t: len(re.findall(r"\| repeated ", t)) >= bar_lines + 2)
    finally:
        rc = daemon.finish()
    log = daemon.text()
    assert rc == 0, log[-3000:]
    assert re.search(r"remote generator: \d+ requests, [1-9]\d* failed", log), log
    assert "retrying" in log or "abandoned" in log or "failed" in log
    audio, _ = sf.read(out, dtype="float32")
    last_bar = max(int(b) for b in re.findall(r"bar (\d+) \| clip", log))
    # The file ends with the stop's fade: check up to the start of the last logged bar.
    assert_no_gap(audio, first, min(last_bar * BAR, len(audio)))
