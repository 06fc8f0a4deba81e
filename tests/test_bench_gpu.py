"""bench/bench_gpu.py --small runs (so the GPU benchmark cannot rot between GPU sessions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_small_gpu_benchmark_runs_and_reports_every_timing() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--small",
                        "--steps", "2", "--repeat", "1"], capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["device"] == "cpu" and result["model"] == "tiny"
    row = result["project"]["2"]
    for key in ("generate_s", "generate_fast_path_off_s", "generate_and_audio_s",
                "batched_per_clip_s"):
        assert 0 < row[key] < 600, (key, row)
    assert result["baseline"]["2"]["diffusers_img2img_s"] > 0
    assert set(result["phase_s"]) == {"fast", "gpu", "quality", "riffusion"}
    lattice = result["lattice"]
    assert lattice["points"] == 3 and lattice["fill_s"] > 0
    # The knob move was heard from a lattice clip (on a beat line), before the exact clip;
    # how soon is the benchmark's number, not a test's.
    assert lattice["moves"] == lattice["jumps"] == 3
    for knob, exact in zip(lattice["knob_to_audible_s"], lattice["exact_to_audible_s"],
                           strict=True):
        assert 0 < knob < exact
    assert lattice["knob_to_audible_max_beats"] > 0
    fast = result["fast_path"]
    assert fast["graphs"].startswith("rerun") and fast["capture_s"] > 0
    assert fast["unet_eval_eager_ms"] > 0 and fast["unet_eval_graph_ms"] > 0
    assert "| 2 |" in r.stderr and "from its graph" in r.stderr  # the tables
    assert "| 3 alphas |" in r.stderr
