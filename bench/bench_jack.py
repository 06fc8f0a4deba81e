"""JACK callback duration (p50/p99) against the period, and xruns over a run with the generator
kept busy; prints JSON.

Runs ``riff run`` as a subprocess on a private ``jackd -d dummy`` (or the server named by
``--server``) with a generator that is always working (look-ahead 2, short clips), for
``--seconds`` (default 20; ``--minutes 5`` for the full soak), then stops it with SIGTERM and
reads its closing statistics.

Baseline (same run, same server, same duration, before the engine): a minimal Python JACK
client whose callback only zero-fills its two ports. Its xruns say how well this machine keeps
real time on its own; its callback time is the floor any Python client pays.

    python bench/bench_jack.py [--seconds 20 | --minutes 5] [--model test-tones|tiny]
        [--period 256] [--server NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE = 48000
TIMING = re.compile(r"JACK callback: (\d+) calls, duration p50 (\d+) us, p99 (\d+) us, "
                    r"max (\d+) us; finished within the cycle by at most (\d+) us")
STOPPED = re.compile(r"stopped: (\d+) clips started, (\d+) late, (\d+) xruns, (\d+) worker")


def start_server(period: int) -> tuple[str, subprocess.Popen[bytes]]:
    import jack

    name = f"riff-bench-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(["jackd", "-n", name, "-d", "dummy", "-r", str(RATE), "-p",
                             str(period)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            jack.Client("probe", no_start_server=True, servername=name).close()
            return name, proc
        except jack.JackOpenError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("jackd did not start") from None
            time.sleep(0.05)


def baseline(server: str, seconds: float) -> dict[str, float]:
    """A trivial Python client: zero-fill two ports per callback."""
    import jack

    client = jack.Client(f"bench-base-{uuid.uuid4().hex[:4]}", no_start_server=True,
                         servername=server)
    ports = [client.outports.register(n) for n in ("out_L", "out_R")]
    durations = np.zeros(1 << 20, np.int64)
    state = {"n": 0, "xruns": 0}

    def process(frames: int) -> None:
        t0 = time.perf_counter_ns()
        for port in ports:
            port.get_array()[:] = 0.0
        durations[state["n"] & ((1 << 20) - 1)] = time.perf_counter_ns() - t0
        state["n"] += 1

    def xrun(delay: float) -> None:
        state["xruns"] += 1

    client.set_process_callback(process)
    client.set_xrun_callback(xrun)
    client.activate()
    time.sleep(seconds)  # the measurement window itself
    client.deactivate()
    client.close()
    d = durations[: min(state["n"], 1 << 20)] / 1e3
    return {"callbacks": int(d.size), "duration_p50_us": float(np.percentile(d, 50)),
            "duration_p99_us": float(np.percentile(d, 99)), "duration_max_us": float(d.max()),
            "xruns": state["xruns"], "xruns_per_min": state["xruns"] * 60.0 / seconds}


def engine_run(server: str, seconds: float, model: str) -> dict[str, float]:
    env = {**os.environ, "JACK_NO_START_SERVER": "1", "PYTHONUNBUFFERED": "1"}
    surfaces_off = ["--osc-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocols.cli", "run", "--model", model, "--tempo", "240",
         "--bars", "1", "--steps", "30" if model == "test-tones" else "2",
         "--jack-server", server, "--client-name", f"riff-bench-{uuid.uuid4().hex[:4]}",
         "--no-connect", *surfaces_off], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    started = None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "JACK: playing on" in line:
            started = time.monotonic()
            break
    if started is None:
        raise SystemExit("riff run did not start:\n" + "".join(lines[-20:]))
    time.sleep(seconds)  # the measurement window itself
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    log = "".join(lines) + out
    timing, stopped = TIMING.search(log), STOPPED.search(log)
    if proc.returncode != 0 or timing is None or stopped is None:
        raise SystemExit(f"riff run failed ({proc.returncode}):\n{log[-3000:]}")
    calls, p50, p99, mx, finish = (int(x) for x in timing.groups())
    clips, late, xruns, restarts = (int(x) for x in stopped.groups())
    return {"callbacks": calls, "duration_p50_us": p50, "duration_p99_us": p99,
            "duration_max_us": mx, "finish_max_us": finish, "clips": clips, "late": late,
            "worker_restarts": restarts, "xruns": xruns, "xruns_per_min": xruns * 60.0 / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--minutes", type=float, help="soak length (overrides --seconds)")
    ap.add_argument("--model", default="test-tones", help="test-tones (default) or tiny")
    ap.add_argument("--period", type=int, default=256)
    ap.add_argument("--server", help="use this running JACK server instead of a private one")
    args = ap.parse_args()
    seconds = args.minutes * 60 if args.minutes else args.seconds
    server_proc = None
    if args.server:
        server = args.server
    else:
        if shutil.which("jackd") is None:
            raise SystemExit("jackd is not installed")
        server, server_proc = start_server(args.period)
    try:
        base = baseline(server, seconds)
        eng = engine_run(server, seconds, args.model)
    finally:
        if server_proc is not None:
            server_proc.terminate()
            server_proc.wait(10)
    period_us = args.period / RATE * 1e6
    print(json.dumps({
        "benchmark": "jack_callback",
        "seconds": seconds, "model": args.model, "period_frames": args.period,
        "period_us": round(period_us, 1),
        "engine": eng, "baseline_trivial_client": base,
        "engine_p99_fraction_of_period": round(eng["duration_p99_us"] / period_us, 4),
        "engine_p99_over_baseline_us": round(eng["duration_p99_us"]
                                             - base["duration_p99_us"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
