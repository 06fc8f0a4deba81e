"""riff doctor: one line per check, the fix in the line, exit 1 when a check fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JACK_NO_START_SERVER": "1"}
    return subprocess.run([sys.executable, "-m", "protocols.cli", "doctor", "--no-gpu", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _line(output: str, topic: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.split()[1:2] == [topic]]
    return line


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.jack
def test_a_running_jack_server_is_found_with_its_rate_and_period() -> None:
    r = doctor("--model", "tiny", "--osc-port", str(free_port()))
    line = _line(r.stdout, "jack")
    assert line.startswith("ok") and "48000 Hz" in line and "256 frames" in line, r.stdout
    assert _line(r.stdout, "model").startswith("ok")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_missing_server_a_taken_port_and_a_missing_model_fail_with_the_fix() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        r = doctor("--jack-server", "riff-no-such-server", "--osc-port", str(port),
                   "--model", "someone/not-downloaded")
    assert r.returncode == 1
    assert _line(r.stdout, "jack").startswith("fail") and "jackd" in r.stdout
    osc = _line(r.stdout, "osc")
    assert osc.startswith("fail") and str(port) in osc and "--osc-port" in osc
    model = _line(r.stdout, "model")
    assert model.startswith("fail") and "hf download someone/not-downloaded" in model
    for topic in ("pipewire", "limits", "numba"):
        assert _line(r.stdout, topic).split()[0] in ("ok", "warn")
