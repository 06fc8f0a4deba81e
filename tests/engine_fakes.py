"""Fakes for control-plane tests: a hand-advanced clock, a recording sink, a GPU-less generator.

Only what cannot run here is faked (the GPU and wall-clock time). Everything runs on one
asyncio loop; :meth:`FakeClock.advance` wakes sleepers in time order and lets the loop settle
after each (a fixed number of loop turns, no wall-clock sleeping), so tests are deterministic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools

import numpy as np

from engine.live.jobs import Clip, GenerationJob, ProgressCallback

SETTLE_TURNS = 40


async def settle() -> None:
    """Let every runnable task run until it waits again."""
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


class FakeClock:
    """Seconds that pass only when the test calls :meth:`advance`."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(seconds, 0.0), next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        target = self.t + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self.t = max(self.t, when)
            fut.set_result(None)
            await settle()
        self.t = target
        await settle()

    async def run_until(self, condition: object, timeout: float, step: float = 0.01) -> None:
        """Advance in ``step``s until ``condition()`` holds (fake time; fails after timeout)."""
        end = self.t + timeout
        while not condition():  # type: ignore[operator]
            if self.t >= end:
                raise AssertionError(f"condition not met within {timeout} fake seconds")
            await self.advance(step)


@dataclasses.dataclass
class Scheduled:
    job_id: int
    start: int
    at: int
    clip: Clip


class FakeSink:
    """Records what would be played where; its position follows the fake clock."""

    def __init__(self, clock: FakeClock, sample_rate: int) -> None:
        self.clock = clock
        self.sample_rate = sample_rate
        self.scheduled: list[Scheduled] = []
        self.stops = 0

    def position(self) -> int:
        return round(self.clock.t * self.sample_rate)

    def schedule(self, clip: Clip, start_sample: int) -> None:
        self.scheduled.append(Scheduled(clip.job_id, start_sample, self.position(), clip))

    def stop(self) -> None:
        self.stops += 1


class FakeGenerator:
    """Takes ``step_s`` fake seconds per denoising step; cancellable between steps.

    ``extra[job_id]`` adds a delay to that job; ``failures`` are raised by the next attempts
    (one each, after the steps, like a worker dying at the end of a job).
    """

    def __init__(self, clock: FakeClock, step_s: float = 0.1) -> None:
        self.clock = clock
        self.step_s = step_s
        self.extra: dict[int, float] = {}
        self.failures: list[BaseException] = []
        self.calls: list[GenerationJob] = []
        self.cancelled: dict[int, int] = {}  # job id -> steps done when cancelled
        self.finished: dict[int, float] = {}  # job id -> fake time the clip was ready
        self.sample_rate = 48000

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        self.calls.append(job)
        total = job.request.num_inference_steps
        done = 0
        started = self.clock.now()
        try:
            for _ in range(total):
                await self.clock.sleep(self.step_s)
                done += 1
                if progress is not None:
                    progress(done, total)
            if job.job_id in self.extra:
                await self.clock.sleep(self.extra.pop(job.job_id))
        except asyncio.CancelledError:
            self.cancelled[job.job_id] = done
            raise
        if self.failures:
            raise self.failures.pop(0)
        audio = np.full((job.spec.num_samples, 2), job.job_id, dtype=np.float32)
        self.finished[job.job_id] = self.clock.now()
        return Clip(job.job_id, audio, job.spec, job.request, self.clock.now() - started)
