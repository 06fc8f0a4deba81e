"""HTTP serving overhead against generation time, and the recorder's audio-thread cost; JSON.

1. ``http``: the same small request (tiny model, ``--steps`` steps, ``--width`` px) rendered
   ``--n`` times directly with ``Renderer.render`` on a worker thread (the baseline, same
   run) and ``--n`` times through ``POST /v1/render`` on a loopback uvicorn server with a
   real HTTP client. The difference per request is the server's cost (parsing, queue,
   thread hand-off, PNG/WAV encoding, base64, HTTP).
2. ``recorder``: ``Recorder.write`` of one JACK period (256 frames, stereo) timed ``--blocks``
   times while the writer thread drains to disk, as p50/p99 microseconds against the period's
   length; the baseline is a plain ``numpy`` copy of the same block into a preallocated array.

    python bench/bench_http.py [--n 10] [--steps 2] [--width 64] [--blocks 20000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.live.wire import parse_request
from engine.takes.recorder import Recorder, RecorderConfig
from engine.takes.render import Renderer


def bench_http(n: int, steps: int, width: int) -> dict[str, float]:
    import httpx

    from protocols.http.app import ServeConfig, create_app
    from tests.http_support import serving, shared_renderer

    renderer: Renderer = shared_renderer()
    body = {"alpha": 0.5, "num_inference_steps": steps, "width": width,
            "seed_image_id": "og_beat", "start": {"prompt": "funk", "seed": 1},
            "end": {"prompt": "jazz", "seed": 2}}
    request = parse_request(body)
    # The baseline runs on a plain worker thread, as the server's generation thread does
    # (renders on the main thread were measured several times slower here).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for _ in range(3):  # warm-up: the first calls compile kernels and fill caches
            pool.submit(renderer.render, request).result()
        direct = []
        for _ in range(n):
            t0 = time.perf_counter()
            pool.submit(renderer.render, request).result()
            direct.append(time.perf_counter() - t0)
    served = []
    with serving(create_app(renderer, ServeConfig())) as url, httpx.Client(timeout=300) as c:
        for _ in range(2):  # warm-up (the server's thread, encoders)
            c.post(f"{url}/v1/render", json=body).raise_for_status()
        for _ in range(n):
            t0 = time.perf_counter()
            c.post(f"{url}/v1/render", json=body).raise_for_status()
            served.append(time.perf_counter() - t0)
    base, http = statistics.median(direct), statistics.median(served)
    return {"requests": n, "direct_ms_p50": base * 1e3, "http_ms_p50": http * 1e3,
            "overhead_ms_p50": (http - base) * 1e3, "overhead_ratio": (http - base) / base}


def bench_recorder(blocks: int, frames: int = 256, rate: int = 48000) -> dict[str, float]:
    block = np.random.default_rng(0).standard_normal((frames, 2)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(RecorderConfig(Path(tmp) / "bench.wav", sample_rate=rate))
        rec.start()
        times = np.empty(blocks)
        for i in range(blocks):
            while rec.backlog + frames > rec.config.ring_frames:  # faster than real time
                time.sleep(0.001)
            t0 = time.perf_counter()
            rec.write(block)
            times[i] = time.perf_counter() - t0
        rec.stop()
    target = np.zeros((rate, 2), np.float32)
    copies = np.empty(blocks)
    for i in range(blocks):
        start = (i * frames) % (rate - frames)
        t0 = time.perf_counter()
        target[start:start + frames] = block
        copies[i] = time.perf_counter() - t0
    period_us = frames / rate * 1e6
    return {"blocks": blocks, "period_us": period_us,
            "write_us_p50": float(np.percentile(times, 50) * 1e6),
            "write_us_p99": float(np.percentile(times, 99) * 1e6),
            "baseline_copy_us_p50": float(np.percentile(copies, 50) * 1e6),
            "baseline_copy_us_p99": float(np.percentile(copies, 99) * 1e6),
            "write_p99_fraction_of_period": float(np.percentile(times, 99) * 1e6 / period_us),
            "overflows": rec.overflows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=20000)
    args = parser.parse_args()
    out = {"recorder": bench_recorder(args.blocks),
           "http": bench_http(args.n, args.steps, args.width)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
