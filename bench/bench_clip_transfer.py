"""How long the daemon's asyncio loop stalls while a long clip arrives from the worker; JSON.

A test-tones worker (no model: a pure tone per job) answers ``--clips`` jobs of ``--bars``
bars at ``--tempo`` BPM (16 bars at 40 BPM: 37 MB of stereo float32). While each job runs the
loop ticks every 0.5 ms and records the gaps between ticks. Three cases in one run:

The worker runs at its default niceness (+10), as under ``riff run``.

- ``idle``: the loop alone for as long (what this machine does to a ticking loop anyway);
- ``pipe``: the clip pickled through the worker's pipe (``WorkerConfig(shm=False)``);
- ``shm``: the clip in a shared memory slot, header over the pipe, copied out in a thread.

``on_loop_max_ms`` is the longest single run of the client's pipe reader on the loop
(``WorkerClient._on_readable``: the ``recv`` and, for the pipe, the unpickling and copy), the
stall the transfer itself causes, apart from what the machine does to the loop. Goal: under
5 ms for ``shm``, and its longest tick gap within 5 ms of ``idle``'s. The daemon's switch
interval (0.5 ms, ``riff run`` sets it) is used.

    python bench/bench_clip_transfer.py [--clips 5] [--bars 16] [--tempo 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.live.jobs import ClipSpec, GenerationJob
from engine.live.worker import TEST_TONES, WorkerClient, WorkerConfig
from engine.model.request import InferenceRequest


def job(job_id: int, bars: int, tempo: float) -> GenerationJob:
    request = InferenceRequest.from_dict({
        "alpha": 0.25, "num_inference_steps": 1, "seed_image_id": "og_beat",
        "start": {"prompt": "x", "seed": job_id}, "end": {"prompt": "x", "seed": job_id + 1}})
    n = round(bars * 4 * 60.0 / tempo * 48000)
    spec = ClipSpec(tempo=tempo, bars=bars, beats_per_bar=4, sample_rate=48000, num_samples=n)
    return GenerationJob(job_id=job_id, request=request, spec=spec, start_bar=0, created=0.0)


async def tick_while(work: asyncio.Future[object] | float) -> list[float]:
    """Gaps (ms) between 0.5 ms ticks until ``work`` is done (or for ``work`` seconds)."""
    gaps = []
    last = start = time.perf_counter()
    while (not work.done()) if isinstance(work, asyncio.Future) else \
            (time.perf_counter() - start < work):
        await asyncio.sleep(0.0005)
        now = time.perf_counter()
        gaps.append((now - last) * 1e3)
        last = now
    return gaps


def summary(gaps: list[float], seconds: list[float]) -> dict[str, float]:
    g = np.asarray(gaps)
    return {"ticks": int(g.size), "gap_p50_ms": round(float(np.percentile(g, 50)), 3),
            "gap_p99_ms": round(float(np.percentile(g, 99)), 3),
            "gap_max_ms": round(float(g.max()), 3),
            "job_s_mean": round(float(np.mean(seconds)), 3) if seconds else 0.0}


async def case(shm: bool, clips: int, bars: int, tempo: float) -> dict[str, float]:
    client = WorkerClient(WorkerConfig(model=TEST_TONES, tone_step_s=0.0, shm=shm))
    gaps: list[float] = []
    seconds: list[float] = []
    on_loop: list[float] = []
    reader = client._on_readable

    def timed(conn: object) -> None:
        t0 = time.perf_counter()
        reader(conn)  # type: ignore[arg-type]
        on_loop.append((time.perf_counter() - t0) * 1e3)

    client._on_readable = timed  # type: ignore[method-assign]
    try:
        await client.start()
        await client.generate(job(0, bars, tempo))  # warm-up: allocator, slot, executor
        for i in range(clips):
            t0 = time.perf_counter()
            work = asyncio.ensure_future(client.generate(job(i + 1, bars, tempo)))
            gaps += await tick_while(work)
            work.result()
            seconds.append(time.perf_counter() - t0)
    finally:
        await client.close()
    return {**summary(gaps, seconds), "on_loop_max_ms": round(max(on_loop), 3)}


async def main(args: argparse.Namespace) -> dict[str, object]:
    sys.setswitchinterval(0.0005)
    results: dict[str, object] = {}
    results["pipe"] = await case(False, args.clips, args.bars, args.tempo)
    results["shm"] = await case(True, args.clips, args.bars, args.tempo)
    job_s = float(results["shm"]["job_s_mean"])  # type: ignore[index]
    results["idle"] = summary(await tick_while(job_s * args.clips), [])
    mb = round(args.bars * 4 * 60.0 / args.tempo * 48000) * 2 * 4 / 2**20
    return {"bench": "clip_transfer",
            "config": {"clips": args.clips, "bars": args.bars, "tempo": args.tempo,
                       "clip_mb": round(mb, 1)},
            "results": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--bars", type=int, default=16)
    parser.add_argument("--tempo", type=float, default=40.0)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
