"""bench/bench_serve_scale.py --quick runs (so the scaling benchmark cannot rot): both
servers, every level, every performer served, and the Ray pool's batches account for every
clip. It starts its own private Ray (loopback only), as ``riff serve --ray`` does; 45 to 60 s
on a 2-core machine loaded by other work, most of it Ray and the two servers starting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install '.[ray]')")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_quick_scaling_benchmark_runs_and_reports_both_servers() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_serve_scale.py"), "--quick"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["model"] == "tiny" and result["levels"] == [1, 2]
    for server in ("serve", "ray"):
        for n in (1, 2):
            row = result[server][str(n)]
            assert row["performers"] == n and row["failed"] == 0, row
            assert len(row["per_performer"]) == n
            assert all(p["clips"] >= 1 for p in row["per_performer"]), row
            assert row["clips"] == sum(p["clips"] for p in row["per_performer"])
            assert row["clips_per_s"] > 0 and 0 < row["latency_p50_s"] <= row["latency_p95_s"]
    for n in (1, 2):
        ray = result["ray"][str(n)]
        formed = sum(int(size) * count for size, count in ray["batches"].items())
        assert formed == ray["clips"] + ray["retried"], ray
        assert result["ray_vs_serve_clips_per_s"][str(n)] > 0
    assert "| 2 |" in r.stderr  # the table
