"""``riff serve --ray`` as a user runs it: a subprocess that starts its own loopback Ray."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.http_support import shared_seed_folder

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install '.[ray]')")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_serve_ray_answers_and_stops_on_sigterm() -> None:
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "protocols.cli", "-q", "serve", "--ray", "--model", "tiny",
             "--device", "cpu", "--port", "0", "--seed-images", str(shared_seed_folder()),
             "--queue", "3", "--ray-cpus", "2", "--ray-object-store-mb", "200",
             "--ray-batch-size", "1", "--ray-batch-wait-ms", "0", "--token", "cli-token-123"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"on (http://127\.0\.0\.1:\d+) via Ray Serve \(local Ray on "
                              r"127\.0\.0\.1; 1 replica\(s\) x batch 1, 0 GPU each\) "
                              r"\(token required\)", line)
            err.seek(0)
            assert match, (line, err.read()[-3000:])
            base = match.group(1)
            assert httpx.get(f"{base}/health", timeout=30).json()["queue_limit"] == 3
            body = {"alpha": 0.5, "num_inference_steps": 2, "width": 64,
                    "start": {"prompt": "funk", "seed": 1}, "end": {"prompt": "jazz", "seed": 2}}
            assert httpx.post(f"{base}/run_inference/", json=body, timeout=60).status_code == 401
            resp = httpx.post(f"{base}/run_inference/", json=body, timeout=300,
                              headers={"Authorization": "Bearer cli-token-123"})
            assert resp.status_code == 200, resp.text
            assert set(resp.json()) == {"image", "audio", "duration_s"}
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, rest
            assert "riff serve: stopped" in rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
