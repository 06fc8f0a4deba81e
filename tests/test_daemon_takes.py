"""The real daemon on a dummy JACK server with a take that hits a real write limit
(RLIMIT_FSIZE set on the running daemon: EFBIG, as a full disk gives ENOSPC): the take ends
at once, the reason reaches OSC feedback (/riff/status/error) and the log while it plays on,
what was written reads back, and the next take (once there is room) records normally."""

from __future__ import annotations

import resource
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from engine.takes.control_log import read_control_log
from tests.test_daemon_osc import CLIP_START, Daemon

pytestmark = pytest.mark.slow

LIMIT = 1_500_000  # bytes: about 4 s of float stereo at 48 kHz


def status_error(daemon: Daemon, pred: Any, timeout: float = 60.0) -> str:
    """The first /riff/status/error feedback value for which ``pred`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in daemon.osc.recv():
            if m.address == "/riff/status/error" and pred(m.params[0]):
                return str(m.params[0])
    raise AssertionError("no such /riff/status/error")


def test_write_error_ends_the_take_and_is_reported_at_once(tmp_path: Path,
                                                           jack_server: str) -> None:
    takes = tmp_path / "takes"
    daemon = Daemon("--model", "test-tones", "--tempo", "240", "--bars", "1", "--steps", "2",
                    "--jack-server", jack_server, "--client-name", f"riff-{uuid.uuid4().hex[:6]}",
                    "--no-connect", "--takes-dir", str(takes))
    try:
        daemon.wait_for(lambda t: len(CLIP_START.findall(t)) >= 1)
        daemon.osc.send("/riff/subscribe")
        daemon.reply("/riff/ping", want="/riff/pong")
        hard = resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (LIMIT, hard))
        assert daemon.reply("/riff/record/start", "full", want="/riff/record/started") == [
            "full.wav"]
        error = status_error(daemon, lambda v: "File too large" in v)
        assert "full.wav" in error
        daemon.wait_for(lambda t: "status error: writing full.wav failed" in t
                        and "take " in t and "stopped: writing full.wav failed" in t)
        clips = len(daemon.starts())
        daemon.wait_for(lambda t: len(CLIP_START.findall(t)) >= clips + 2)  # plays on
        err = daemon.reply("/riff/record/stop", want="/riff/error")
        assert err[0] == "/riff/record/stop" and "the last take stopped: writing full.wav" \
            in err[1]
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))  # room again
        assert daemon.reply("/riff/record/start", "next", want="/riff/record/started") == [
            "next.wav"]
        status_error(daemon, lambda v: v == "")  # the failure no longer stands
        clips = len(daemon.starts())
        daemon.wait_for(lambda t: len(CLIP_START.findall(t)) >= clips + 1)
        assert daemon.reply("/riff/record/stop", want="/riff/record/stopped") == [
            "next.wav", "next.jsonl"]
    finally:
        rc = daemon.finish()
    assert rc == 0, daemon.text()[-3000:]
    data, rate = sf.read(takes / "full.wav", dtype="float32", always_2d=True)
    assert rate == 48000 and 0 < data.shape[0] <= LIMIT // 8
    assert abs(data).max() > 0.01
    assert read_control_log(takes / "full.jsonl").complete
    assert sf.info(takes / "next.wav").frames > 48000 // 2
    assert read_control_log(takes / "next.jsonl").complete
