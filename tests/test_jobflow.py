"""Job flow with a real worker process (test-tones model, real per-step timing): a knob sweep
costs at most one extra job, a still knob costs nothing, a tempo change only re-conforms.

Timing bounds here are generous (this machine is shared); the latency goals are measured by
``bench/bench_control.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from engine.live.control import Engine
from engine.live.jobs import Clip, GenerationJob, ProgressCallback
from engine.live.scheduler import SchedulerConfig
from engine.live.state import EngineState
from engine.live.worker import TEST_TONES, WorkerClient, WorkerConfig

SR = 48000
STEP_S = 0.02
STEPS = 25  # a 0.5 s job


class WallSink:
    """The audio clock is the wall clock (no audio device needed); records what was
    scheduled where."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.scheduled: list[tuple[Clip, int]] = []

    def position(self) -> int:
        return round((time.monotonic() - self.t0) * SR)

    def schedule(self, clip: Clip, start_sample: int, origin: int | None = None) -> None:
        self.scheduled.append((clip, start_sample))

    def stop(self) -> None:
        pass


class Timed:
    """The worker client, noting when each clip came back (wall clock)."""

    def __init__(self, inner: WorkerClient) -> None:
        self.inner = inner
        self.ready: list[tuple[float, Clip]] = []
        self.sent: list[GenerationJob] = []

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        self.sent.append(job)
        clip = await self.inner.generate(job, progress)
        self.ready.append((time.monotonic(), clip))
        return clip


class TimedBatch(Timed):
    """:class:`Timed` with the worker's batched calls (the lattice uses them)."""

    def __init__(self, inner: WorkerClient) -> None:
        super().__init__(inner)
        self.batches: list[list[GenerationJob]] = []

    async def generate_batch(self, jobs: list[GenerationJob]) -> list[Clip]:
        self.batches.append(jobs)
        return await self.inner.generate_batch(jobs)


async def _wait_for(cond: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def _engine(gen: Timed, sink: WallSink, lattice: int = 0, **params: object) -> Engine:
    state = EngineState({"alpha_auto": False, "alpha": 0.0, "steps": STEPS, "tempo": 240.0,
                         "bars": 1, **params})
    return Engine(gen, sink, sample_rate=SR, state=state,
                  config=SchedulerConfig(lookahead=2, margin_s=0.05, lattice=lattice))


def test_a_60hz_sweep_of_20_moves_is_ready_within_one_and_a_half_jobs() -> None:
    async def main() -> tuple[float, float, int]:
        client = WorkerClient(WorkerConfig(model=TEST_TONES, tone_step_s=STEP_S, nice=0))
        gen, sink = Timed(client), WallSink()
        engine = _engine(gen, sink)
        await client.start()
        task = asyncio.ensure_future(engine.run())
        try:
            engine.play()
            # One undisturbed job: this run's job time on this (shared) machine.
            await _wait_for(lambda: len(gen.ready) >= 1, 30.0)
            job_s = gen.ready[0][1].seconds
            await _wait_for(lambda: len(sink.scheduled) >= 1, 30.0)
            diffused_before = client.generated
            for i in range(1, 21):
                engine.state.set("alpha", i / 20)
                await asyncio.sleep(1 / 60)
            last_move = time.monotonic()
            await _wait_for(lambda: any(c.request.alpha == 1.0 for _, c in gen.ready), 30.0)
            ready = min(t for t, c in gen.ready if c.request.alpha == 1.0)
            await asyncio.sleep(3 * job_s)  # anything still queued would run now
            extra = client.generated - diffused_before
        finally:
            await engine.close()
            task.cancel()
            await client.close()
        return ready - last_move, job_s, extra

    latency, job_s, diffused = asyncio.run(main())
    # Before per-job cancellation every queued job ran to its end: about 20 jobs late.
    assert latency <= 1.5 * job_s + 0.25, (latency, job_s)
    # The final value, plus at most the one job running when the sweep began.
    assert diffused <= 2, diffused


def test_a_60hz_sweep_with_the_lattice_is_ready_within_one_and_a_half_jobs() -> None:
    """With a full lattice (rendered in batches by the real worker), a sweep's final value
    is still generated promptly: lattice work never stands in front of the exact job."""

    async def main() -> tuple[float, float, int, int]:
        client = WorkerClient(WorkerConfig(model=TEST_TONES, tone_step_s=STEP_S, nice=0))
        gen, sink = TimedBatch(client), WallSink()
        engine = _engine(gen, sink, lattice=5)
        await client.start()
        task = asyncio.ensure_future(engine.run())
        try:
            engine.play()
            await _wait_for(lambda: len(gen.ready) >= 1, 30.0)
            job_s = gen.ready[0][1].seconds
            lattice = engine.scheduler._lattice
            await _wait_for(lambda: lattice is not None and len(lattice.done) == 5, 30.0)
            diffused_before = client.generated
            for i in range(1, 21):
                engine.state.set("alpha", i / 20 * 0.9)
                await asyncio.sleep(1 / 60)
            last_move = time.monotonic()
            await _wait_for(lambda: any(c.request.alpha == 0.9 for _, c in gen.ready), 30.0)
            ready = min(t for t, c in gen.ready if c.request.alpha == 0.9)
            await asyncio.sleep(3 * job_s)
            extra = client.generated - diffused_before
            jumps = int(engine.status()["lattice_jumps"])
        finally:
            await engine.close()
            task.cancel()
            await client.close()
        assert gen.batches, "the lattice was not batched"
        return ready - last_move, job_s, extra, jumps

    latency, job_s, diffused, jumps = asyncio.run(main())
    assert latency <= 1.5 * job_s + 0.25, (latency, job_s)
    assert diffused <= 2, diffused
    assert jumps >= 1


def test_manual_mode_with_a_still_knob_generates_nothing_new() -> None:
    """Before the clip cache: the same request was generated for every clip (31 in 60 s)."""

    async def main() -> tuple[int, int, int, dict[str, object]]:
        client = WorkerClient(WorkerConfig(model=TEST_TONES, tone_step_s=0.01, nice=0))
        gen, sink = Timed(client), WallSink()
        engine = _engine(gen, sink, steps=10, tempo=240.0)  # 1 s clips, 0.1 s jobs
        await client.start()
        task = asyncio.ensure_future(engine.run())
        try:
            engine.play()
            await _wait_for(lambda: len(sink.scheduled) >= 6, 30.0)  # 6 bar lines
            status = engine.status()
        finally:
            await engine.close()
            task.cancel()
            await client.close()
        return client.generated, client.reconformed, len(gen.sent), status

    diffused, reconformed, sent, status = asyncio.run(main())
    assert diffused == 1 and reconformed == 0 and sent == 1
    assert status["generated"] == 1 and int(status["cached"]) >= 5  # type: ignore[call-overload]
