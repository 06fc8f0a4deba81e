"""`riff serve` as a user runs it: a subprocess on a free port, its errors, a clean stop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def riff(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protocols.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_help_explains_the_endpoints() -> None:
    out = riff("serve", "--help")
    assert out.returncode == 0
    for word in ("/run_inference/", "--token", "--cors-origin", "--queue", "--seed-images"):
        assert word in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port"),
    (["--queue", "0"], "queue"),
    (["--token", "short"], "token"),
    (["--seed-images", "no/such/folder"], "no/such/folder"),
])
def test_bad_options_fail_in_one_line(args: list[str], message: str) -> None:
    out = riff("serve", "--model", "tiny", *args)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("riff serve: error:") and message in lines[0]


def test_serves_the_tiny_model_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocols.cli", "-q", "serve", "--model", "tiny", "--port", "0",
         "--token", "test-token-123", "--queue", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+) \(token required\)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        base = match.group(1)
        assert httpx.get(f"{base}/health", timeout=30).json()["queue_limit"] == 2
        body = {"alpha": 0.5, "num_inference_steps": 2, "width": 64,
                "start": {"prompt": "funk", "seed": 1}, "end": {"prompt": "jazz", "seed": 2}}
        auth = {"Authorization": "Bearer test-token-123"}
        assert httpx.post(f"{base}/run_inference/", json=body, timeout=120).status_code == 401
        resp = httpx.post(f"{base}/run_inference/", json=body, headers=auth, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.json()["duration_s"] == pytest.approx(63 * 441 / 44100, abs=0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
