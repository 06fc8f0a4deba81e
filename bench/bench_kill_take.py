"""SIGKILL of the daemon during a take: the take survives up to its last flush, and
``riff rerender`` reproduces it from the control log.

Runs ``riff run --model tiny`` (real-time file output, so the kill lands mid-performance) with
``--record``, waits for ``--clips`` clips to start, kills the daemon with SIGKILL (no chance to
close anything), then checks in one run: the take's WAV opens and holds audio up to the last
flush; its control log reads back (marked incomplete); ``riff rerender`` of that log gives the
very same samples over the recorded length. Prints JSON.

    python bench/bench_kill_take.py [--clips 6] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.takes.control_log import read_control_log  # noqa: E402

CLIP_START = re.compile(r"clip \d+ started at sample \d+")


def _riff(*args: str) -> list[str]:
    return [sys.executable, "-m", "protocols.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "JACK_NO_START_SERVER": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1"}


def one_kill(folder: Path, clips: int) -> dict[str, Any]:
    """One run: play, record, SIGKILL after ``clips`` clip starts, check and re-render."""
    takes, log_path = folder / "takes", folder / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            _riff("run", "--model", "tiny", "--device", "cpu", "--tempo", "240", "--bars", "1",
                  "--steps", "2", "--osc-port", "0", "--output", str(folder / "set.wav"),
                  "--record", str(takes / "take.wav")),
            cwd=ROOT, env=_env(), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while len(CLIP_START.findall(log_path.read_text())) < clips:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not play:\n" + log_path.read_text()[-2000:])
                time.sleep(0.1)
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker process too, once it is done
    recorded, rate = sf.read(takes / "take.wav", dtype="float32", always_2d=True)
    control = read_control_log(takes / "take.jsonl")
    again = folder / "again.wav"
    start = time.monotonic()
    r = subprocess.run(_riff("-q", "rerender", str(takes / "take.jsonl"), "--out", str(again),
                             "--model", "tiny", "--device", "cpu", "--phase", "fast"),
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("rerender failed: " + r.stderr[-2000:])
    rerendered, _ = sf.read(again, dtype="float32", always_2d=True)
    n = min(len(recorded), len(rerendered))
    return {
        "recorded_s": len(recorded) / rate,
        "rerendered_s": len(rerendered) / rate,
        "log_events": len(control.events),
        "log_complete": control.complete,
        "identical_over_recorded": bool(n > 0 and np.array_equal(recorded[:n],
                                                                 rerendered[:n])),
        "max_abs_difference": float(np.abs(recorded[:n] - rerendered[:n]).max()) if n else None,
        "rerender_s": time.monotonic() - start,
        "kill_to_check_s": start - killed_at,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6, help="clip starts before the kill")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="riff-kill-") as tmp:
            runs.append(one_kill(Path(tmp), args.clips))
    print(json.dumps({"bench": "kill_take", "clips_before_kill": args.clips, "runs": runs,
                      "all_identical": all(r["identical_over_recorded"] for r in runs)},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
