"""Knob -> first audible sample of the final value, for one move and for a 60 Hz sweep; prints
JSON.

The whole control plane (engine, transport, planner, scheduler) runs on a real asyncio loop
against a real worker process (the ``test-tones`` model: ``--steps`` steps of ``--step-s``
seconds each, so every job takes the same fixed time and honours cancellation between steps).
The audio clock is the wall clock (no audio device needed): a clip is audible from the sample
the scheduler hands it over for.

Manual mode (``/riff/alpha/auto 0``). Each trial lets the jam play, then at a chosen point of
the bar moves alpha once, or 20 times at 60 Hz (a fader sweep), to values no trial used
before (so neither the clip cache nor the worker's kept images can answer). Measured from the
last move: ``ready_s`` (the clip of the final value came back from the worker) and
``audible_s`` (its first sample was played).

Baseline (same run, same worker): the job flow before per-job cancellation, where a cancelled
job's work was never stopped and every job sent ran to its end in order (the generator below
ignores cancellation and serialises jobs: what a cancel register overwritten by the next
cancel amounted to in a sweep).

Goal (issue 10): sweep ``audible_s`` <= 1.5 job times + 1 bar.

    python bench/bench_control.py [--repeat 3] [--steps 25] [--step-s 0.02] [--tempo 240]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.live.control import Engine
from engine.live.jobs import Clip, ClipGenerator, ClipSpec, GenerationJob, ProgressCallback
from engine.live.scheduler import SchedulerConfig
from engine.live.state import EngineState
from engine.live.worker import TEST_TONES, WorkerClient, WorkerConfig
from engine.model.request import InferenceRequest

SR = 48000
SWEEP_MOVES = 20
SWEEP_HZ = 60.0
PHASES = (0.1, 0.45, 0.8)  # where in the bar the last move lands, in turn


class WallSink:
    """The audio clock is the wall clock; records each clip handed over and its start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.scheduled: list[tuple[Clip, int]] = []

    def position(self) -> int:
        return round((time.monotonic() - self.t0) * SR)

    def seconds(self, sample: int) -> float:
        return self.t0 + sample / SR

    def schedule(self, clip: Clip, start_sample: int) -> None:
        self.scheduled.append((clip, start_sample))

    def stop(self) -> None:
        pass


class Timed:
    """Notes when each clip came back (wall clock)."""

    def __init__(self, inner: ClipGenerator) -> None:
        self.inner = inner
        self.ready: list[tuple[float, Clip]] = []

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        clip = await self.inner.generate(job, progress)
        self.ready.append((time.monotonic(), clip))
        return clip


class RunToTheEnd:
    """The baseline job flow: jobs run one after another to their end, cancelled or not."""

    def __init__(self, inner: ClipGenerator) -> None:
        self.inner = inner
        self.lock = asyncio.Lock()

    async def _one(self, job: GenerationJob, progress: ProgressCallback | None) -> Clip:
        async with self.lock:
            return await self.inner.generate(job, progress)

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        return await asyncio.shield(asyncio.ensure_future(self._one(job, progress)))


async def _until(cond: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"not done within {timeout} s")
        await asyncio.sleep(0.002)


async def trial(worker: WorkerClient, baseline: bool, moves: int, phase: float,
                values: list[float], args: argparse.Namespace) -> dict[str, float]:
    """One trial: play, move the knob ``moves`` times ending at ``phase`` of a bar."""
    runner = RunToTheEnd(worker)
    gen, sink = Timed(runner if baseline else worker), WallSink()
    state = EngineState({"alpha_auto": False, "alpha": values[0], "steps": args.steps,
                         "tempo": args.tempo, "bars": 1, "prompt_a": "bench a",
                         "prompt_b": "bench b"})
    engine = Engine(gen, sink, sample_rate=SR, state=state,
                    config=SchedulerConfig(lookahead=2, margin_s=0.05, max_tick_s=0.005))
    task = asyncio.ensure_future(engine.run())
    try:
        engine.play()
        await _until(lambda: len(sink.scheduled) >= 1, 60.0)
        bar = engine.transport
        sweep_s = (moves - 1) / SWEEP_HZ
        # Wait so that the last move lands at ``phase`` of a bar.
        line = bar.bar_start(bar.bar() + 2)
        target = line + round(phase * (bar.bar_start(bar.bar() + 3) - line))
        start = sink.seconds(target) - sweep_s
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        for i in range(moves):
            engine.state.set("alpha", values[1 + i])
            if i < moves - 1:
                await asyncio.sleep(1 / SWEEP_HZ)
        last_move = time.monotonic()
        final = values[moves]
        await _until(lambda: any(c.request.alpha == final for c, _ in sink.scheduled), 120.0)
        ready = min(t for t, c in gen.ready if c.request.alpha == final)
        audible = min(s for c, s in sink.scheduled if c.request.alpha == final)
    finally:
        await engine.close()
        task.cancel()
    async with runner.lock:
        pass  # the baseline's piled-up jobs drain before the next trial
    return {"ready_s": ready - last_move, "audible_s": sink.seconds(audible) - last_move}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    worker = WorkerClient(WorkerConfig(model=TEST_TONES, tone_step_s=args.step_s, nice=0))
    await worker.start()
    job_s = args.steps * args.step_s
    bar_s = 4 * 60.0 / args.tempo
    results: dict[str, Any] = {}
    counter = iter(range(1, 10**6))
    try:
        # The job time on this machine, measured: one undisturbed job.
        request = InferenceRequest.from_dict({
            "alpha": 0.0, "num_inference_steps": args.steps,
            "start": {"prompt": "probe", "seed": 1}, "end": {"prompt": "probe", "seed": 2}})
        spec = ClipSpec(tempo=args.tempo, bars=1, beats_per_bar=4, sample_rate=SR,
                        num_samples=round(bar_s * SR))
        t0 = time.monotonic()
        await worker.generate(GenerationJob(10**6, request, spec, 0, 0.0))
        measured_job_s = time.monotonic() - t0
        for name, moves in (("one_move", 1), ("sweep_60hz_20", SWEEP_MOVES)):
            for flow in ("engine", "baseline"):
                rows = []
                for k in range(args.repeat):
                    values = [next(counter) / 10**6 for _ in range(moves + 1)]
                    rows.append(await trial(worker, flow == "baseline", moves,
                                            PHASES[k % len(PHASES)], values, args))
                results[f"{name}/{flow}"] = {
                    key: {"median": statistics.median(r[key] for r in rows),
                          "max": max(r[key] for r in rows),
                          "in_job_times_median": statistics.median(r[key] for r in rows)
                          / measured_job_s}
                    for key in ("ready_s", "audible_s")}
    finally:
        await worker.close()
    sweep = results["sweep_60hz_20/engine"]["audible_s"]["max"]
    goal = 1.5 * measured_job_s + bar_s
    return {
        "config": {"steps": args.steps, "step_s": args.step_s, "job_s": job_s,
                   "measured_job_s": measured_job_s, "tempo": args.tempo, "bar_s": bar_s,
                   "repeat": args.repeat, "sweep": f"{SWEEP_MOVES} moves at {SWEEP_HZ:g} Hz"},
        "results": results,
        "goal": {"sweep_audible_max_s": sweep, "limit_s": goal, "met": sweep <= goal},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--step-s", type=float, default=0.02)
    parser.add_argument("--tempo", type=float, default=240.0)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
