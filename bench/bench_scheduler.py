"""Scheduler overhead per clip against generation time; prints JSON.

The whole control plane (engine, transport, planner, scheduler, one worker task) runs on a real
asyncio loop with a fake generator that sleeps per denoising step. Time runs ``--speed`` times
faster than real time on a scaled clock (audio clock included), so the engine does the same
work per clip as in real time (ticks, deadlines, planning) in a fraction of the wall time.

Baseline (same run): the same generator awaited back to back for the same number of clips with
no engine around it. ``overhead_cpu_ms_per_clip`` is the engine's CPU time per clip minus the
baseline's; ``overhead_ratio`` divides it by the (unscaled) generation time per clip.

    python bench/bench_scheduler.py [--clips 100] [--speed 20] [--gen-s 1.0] [--steps 50]
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

from engine.live.control import Engine
from engine.live.jobs import Clip, ClipSpec, GenerationJob, ProgressCallback
from engine.live.planner import JamPlanner
from engine.live.scheduler import SchedulerConfig
from engine.live.state import EngineState
from engine.live.transport import Transport

SR = 48000


class ScaledClock:
    """Monotonic time running ``speed`` times faster than real time."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return (time.perf_counter() - self.t0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) / self.speed)


class Sink:
    """Counts schedules; the audio clock follows the scaled clock."""

    def __init__(self, clock: ScaledClock, clips: int) -> None:
        self.clock = clock
        self.scheduled: list[tuple[int, int]] = []
        self.clips = clips
        self.enough = asyncio.Event()

    def position(self) -> int:
        return int(self.clock.now() * SR)

    def schedule(self, clip: Clip, start_sample: int) -> None:
        self.scheduled.append((clip.job_id, start_sample))
        if len({job for job, _ in self.scheduled}) >= self.clips:
            self.enough.set()

    def stop(self) -> None:
        pass


class Generator:
    """Sleeps ``step_s`` (scaled) per denoising step; cancellable between steps."""

    def __init__(self, clock: ScaledClock, step_s: float) -> None:
        self.clock = clock
        self.step_s = step_s
        self.done = 0
        self._audio: dict[int, np.ndarray] = {}

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        total = job.request.num_inference_steps
        for step in range(total):
            await self.clock.sleep(self.step_s)
            if progress is not None:
                progress(step + 1, total)
        audio = self._audio.get(job.spec.num_samples)
        if audio is None:
            audio = self._audio[job.spec.num_samples] = np.zeros((job.spec.num_samples, 2),
                                                                   np.float32)
        self.done += 1
        return Clip(job.job_id, audio, job.spec, job.request, total * self.step_s)


def job_for(state: EngineState, transport: Transport, job_id: int) -> GenerationJob:
    request, _ = JamPlanner().plan(state.snapshot(), None)
    spec = ClipSpec(transport.tempo, 1, 4, SR, transport.clip_samples(0, 1))
    return GenerationJob(job_id, request, spec, 0, 0.0)


async def baseline(clips: int, speed: float, step_s: float, steps: int) -> float:
    clock = ScaledClock(speed)
    gen = Generator(clock, step_s)
    state = EngineState({"steps": steps, "bars": 1})
    transport = Transport(lambda: 0, SR, 120.0, 4)
    cpu = time.process_time()
    for i in range(clips):
        await gen.generate(job_for(state, transport, i), lambda s, t: None)
    return time.process_time() - cpu


async def engine_run(clips: int, speed: float, step_s: float, steps: int
                     ) -> tuple[float, dict[str, int | float | str], float]:
    clock = ScaledClock(speed)
    sink = Sink(clock, clips)
    gen = Generator(clock, step_s)
    state = EngineState({"steps": steps, "bars": 1, "tempo": 120.0})
    engine = Engine(gen, sink, sample_rate=SR, clock=clock, state=state,
                    config=SchedulerConfig(lookahead=2))
    cpu = time.process_time()
    wall = time.perf_counter()
    task = asyncio.ensure_future(engine.run())
    engine.play()
    await sink.enough.wait()
    status = engine.status()
    await engine.close()
    await asyncio.gather(task, return_exceptions=True)
    return time.process_time() - cpu, status, time.perf_counter() - wall


def micro(n: int = 2000) -> dict[str, float]:
    state = EngineState()
    planner = JamPlanner()
    transport = Transport(lambda: 10**9, SR, 93.7, 4)
    t0 = time.perf_counter()
    pos = None
    for _ in range(n):
        _, pos = planner.plan(state.snapshot(), pos)
    plan_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for bar in range(n):
        transport.bar_at(transport.bar_start(bar + 100_000))
    grid_us = (time.perf_counter() - t0) / n * 1e6
    return {"plan_us": round(plan_us, 2), "bar_start_and_bar_at_us": round(grid_us, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=60)
    ap.add_argument("--speed", type=float, default=20.0)
    ap.add_argument("--gen-s", type=float, default=1.0, help="generation time per clip (s)")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    step_s = args.gen_s / args.steps
    base_cpu = asyncio.run(baseline(args.clips, args.speed, step_s, args.steps))
    eng_cpu, status, wall = asyncio.run(engine_run(args.clips, args.speed, step_s, args.steps))
    generated = int(status["generated"])
    overhead_ms = (eng_cpu / generated - base_cpu / args.clips) * 1e3
    print(json.dumps({
        "clips": args.clips,
        "generated": generated,
        "speed": args.speed,
        "generation_s_per_clip": args.gen_s,
        "clip_s": 2.0,
        "baseline_cpu_ms_per_clip": round(base_cpu / args.clips * 1e3, 3),
        "engine_cpu_ms_per_clip": round(eng_cpu / generated * 1e3, 3),
        "overhead_cpu_ms_per_clip": round(overhead_ms, 3),
        "overhead_ratio": round(overhead_ms / 1e3 / args.gen_s, 6),
        "late": status["late"],
        "repeated": status["repeated"],
        "wall_s": round(wall, 2),
        **micro(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
