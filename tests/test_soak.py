"""A short soak of the real daemon in CI (bench/bench_soak.py for 30 s): OSC changes every
100 ms and a take recorded throughout; no errors, no clip off its bar line, the take as long
as the wall time, no growth in memory or open files, clip slots within the pool's bound.
The long version is the bench itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_soak import soak
from engine.live.shm import KEEP_FREE

pytestmark = pytest.mark.slow


def test_short_soak(tmp_path: Path) -> None:
    r = soak(30.0, tmp_path, warmup_s=5.0)
    assert r["exit_status"] == 0, r["log_tail"]
    assert r["osc_errors"] == 0 and r["status_errors"] == 0, r["osc_error_examples"]
    assert r["late_clips"] == 0 and r["worker_restarts"] == 0
    assert r["clips_started"] >= 3
    # The take holds the wall time between its start reply and the stop (a block of 21 ms
    # plus OSC latency in practice; generous here for a loaded CI machine).
    assert abs(r["take_minus_wall_ms"]) < 500, r
    assert r["samples"] >= 20
    assert r["rss_mb"]["growth"] < 30, r["rss_mb"]
    assert r["fds"]["growth"] <= 2 and r["fds"]["max"] - r["fds"]["after_warmup"] <= 4, r["fds"]
    # The clip slot pool keeps KEEP_FREE free segments and one per clip in flight (a planned
    # job and a re-conform at most).
    assert 1 <= r["clip_slots"]["max"] <= KEEP_FREE + 2, r["clip_slots"]
    assert r["ping_rtt_ms"]["answered"] >= r["osc_sent"] // 4  # the loop kept answering
