"""The generator worker process and its asyncio client: clips, progress, cancel, crash restart."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Callable

import numpy as np
import pytest

from engine.errors import InvalidRequest, ModelUnavailable
from engine.live.jobs import ClipGenerator, ClipSpec, GenerationJob
from engine.live.worker import (
    TEST_TONES,
    WorkerClient,
    WorkerConfig,
    WorkerCrashed,
    tone_clip_audio,
)
from engine.model.request import InferenceRequest


def make_job(job_id: int, steps: int = 5, width: int | None = None,
             tempo: float = 240.0) -> GenerationJob:
    request = InferenceRequest.from_dict({
        "alpha": 0.25, "num_inference_steps": steps, "seed_image_id": "og_beat",
        "width": width,
        "start": {"prompt": "lo-fi beat", "seed": 42}, "end": {"prompt": "lo-fi beat", "seed": 43},
    })
    n = round(4 * 60.0 / tempo * 48000)
    spec = ClipSpec(tempo=tempo, bars=1, beats_per_bar=4, sample_rate=48000, num_samples=n)
    return GenerationJob(job_id=job_id, request=request, spec=spec, start_bar=job_id, created=0.0)


async def _wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def test_tones_job_returns_exact_clip_with_progress() -> None:
    async def main() -> None:
        client = WorkerClient(WorkerConfig(model=TEST_TONES))
        assert isinstance(client, ClipGenerator)
        try:
            await client.start()
            steps: list[tuple[int, int]] = []
            job = make_job(3, steps=5)
            clip = await client.generate(job, lambda s, t: steps.append((s, t)))
            assert clip.job_id == 3 and clip.spec == job.spec
            assert clip.audio.shape == (job.spec.num_samples, 2)
            np.testing.assert_array_equal(clip.audio, tone_clip_audio(3, job.spec))
            assert steps == [(i, 5) for i in range(1, 6)]
        finally:
            await client.close()
        assert client.pid > 0

    asyncio.run(main())


def test_cancel_stops_the_job_and_the_next_one_is_served() -> None:
    async def main() -> None:
        client = WorkerClient(WorkerConfig(model=TEST_TONES))
        try:
            await client.start()
            steps: list[int] = []
            task = asyncio.ensure_future(client.generate(make_job(1, steps=150),
                                                         lambda s, t: steps.append(s)))
            await _wait_for(lambda: len(steps) >= 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            clip = await client.generate(make_job(2, steps=2))
            assert clip.job_id == 2
            np.testing.assert_array_equal(clip.audio, tone_clip_audio(2, clip.spec))
            assert max(steps) < 150  # the cancelled job stopped early
        finally:
            await client.close()

    asyncio.run(main())


def test_killed_worker_fails_its_job_then_restarts() -> None:
    async def main() -> None:
        client = WorkerClient(WorkerConfig(model=TEST_TONES))
        try:
            await client.start()
            first_pid = client.pid
            steps: list[int] = []
            task = asyncio.ensure_future(client.generate(make_job(1, steps=150),
                                                         lambda s, t: steps.append(s)))
            await _wait_for(lambda: len(steps) >= 1)
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(WorkerCrashed):
                await task
            clip = await client.generate(make_job(2, steps=2))  # served by the new process
            assert clip.audio.shape == (clip.spec.num_samples, 2)
            assert client.restarts == 1 and client.pid != first_pid
        finally:
            await client.close()

    asyncio.run(main())


def test_model_that_cannot_load_is_a_clear_error() -> None:
    async def main() -> None:
        client = WorkerClient(WorkerConfig(model="./no-such-model-folder", device="cpu"))
        try:
            with pytest.raises(ModelUnavailable):
                await client.start()
            with pytest.raises(ModelUnavailable):
                await client.generate(make_job(1))
        finally:
            await client.close()

    asyncio.run(main())


@pytest.mark.slow
def test_tiny_model_job_returns_the_renderers_clip_of_exact_length() -> None:
    async def main() -> None:
        client = WorkerClient(WorkerConfig(model="tiny", device="cpu"))
        try:
            await client.start()
            job = make_job(7, steps=2, width=128, tempo=200.0)
            clip = await client.generate(job)
            assert clip.audio.shape == (job.spec.num_samples, 2)
            assert np.all(np.isfinite(clip.audio)) and np.abs(clip.audio).max() <= 1.0
            assert float(np.sqrt(np.mean(clip.audio ** 2))) > 1e-3  # not silence
            # The server's renderer conforms through the same function: the same clip.
            from engine.takes.render import Renderer

            local = Renderer.load("tiny", device="cpu").render_clip(job)
            np.testing.assert_array_equal(clip.audio, local.audio)
            # A batch (the lattice's): alpha 0.25 is the kept image of the job above (a
            # conform, the same clip), alpha 1.0 is diffused; each job gets its own clip.
            jobs = _batch(20, [0.25, 1.0], steps=2, width=128, tempo=200.0)
            clips = await client.generate_batch(jobs)
            assert [c.job_id for c in clips] == [20, 21] and client.reconformed == 1
            np.testing.assert_array_equal(clips[0].audio, clip.audio)
            assert clips[1].audio.shape == clip.audio.shape
            assert np.all(np.isfinite(clips[1].audio))
            assert not np.array_equal(clips[1].audio, clip.audio)  # another alpha
        finally:
            await client.close()

    asyncio.run(main())


def test_a_kept_request_is_reconformed_between_the_steps_of_a_running_job() -> None:
    """A tempo change: the playing clip's request again at a new tempo is a conform only,
    served while another job is diffusing; a cancelled waiting job never starts."""

    async def main() -> None:
        client = WorkerClient(WorkerConfig(model=TEST_TONES, nice=0))
        try:
            await client.start()
            first = await client.generate(make_job(1, steps=3, tempo=240.0))
            other = make_job(2, steps=150)
            other = GenerationJob(2, other.request.replace(alpha=0.75), other.spec, 2, 0.0)
            steps: list[int] = []
            long = asyncio.ensure_future(client.generate(other, lambda s, t: steps.append(s)))
            await _wait_for(lambda: len(steps) >= 1)
            stale_job = GenerationJob(3, other.request.replace(alpha=0.5), other.spec, 3, 0.0)
            stale = asyncio.ensure_future(client.generate(stale_job))
            await asyncio.sleep(0)
            stale.cancel()  # waiting behind the long job: it must never start
            again = await client.generate(make_job(4, steps=3, tempo=180.0))
            assert not long.done() and max(steps) < 150  # served between its steps
            assert client.generated == 1 and client.reconformed == 1
            np.testing.assert_array_equal(again.audio, tone_clip_audio(4, again.spec))
            assert again.spec.num_samples != first.spec.num_samples
            long.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long
            with pytest.raises(asyncio.CancelledError):
                await stale
            await client.generate(make_job(5, steps=3, tempo=120.0))  # the pipe is in order
            assert (client.generated, client.reconformed) == (1, 2)
        finally:
            await client.close()

    asyncio.run(main())


def test_the_worker_ignores_sigint() -> None:
    """Ctrl-C reaches the whole process group; the daemon stops its worker itself."""

    async def main() -> None:
        client = WorkerClient(WorkerConfig(model=TEST_TONES, nice=0))
        try:
            await client.start()
            os.kill(client.pid, signal.SIGINT)
            clip = await client.generate(make_job(1, steps=3))
            assert clip.job_id == 1 and client.restarts == 0
        finally:
            await client.close()

    asyncio.run(main())


def test_a_hung_worker_is_killed_and_restarted_and_its_job_fails() -> None:
    """A worker that says nothing for longer than ``stall_timeout_s`` with a job pending (a
    CUDA call that never returns) is killed; its exit fails the job and restarts it."""

    async def main() -> None:
        client = WorkerClient(WorkerConfig(model=TEST_TONES, tone_step_s=4.0,
                                           stall_timeout_s=0.5))
        try:
            await client.start()
            first_pid = client.pid
            with pytest.raises(WorkerCrashed):
                await asyncio.wait_for(client.generate(make_job(1, steps=3)), 30)
            assert client.restarts == 1
            await _wait_for(lambda: client.pid not in (-1, first_pid))
        finally:
            await client.close()

    asyncio.run(main())


def test_a_worker_dying_while_loading_is_retried_with_backoff_then_given_up() -> None:
    """Deaths while loading (the OOM killer, a broken driver) restart the worker after a
    growing delay; after ``max_load_failures`` in a row every job fails with the reason."""

    async def main() -> None:
        client = WorkerClient(WorkerConfig(model="tiny", device="cpu", load_backoff_s=0.05,
                                           max_load_failures=3))
        start = asyncio.ensure_future(client.start())
        killed: set[int] = set()
        try:
            while len(killed) < 3:  # kill each process the moment it exists
                proc = client._proc
                if proc is not None and proc.pid not in killed and proc.is_alive():
                    proc.kill()
                    killed.add(proc.pid)
                await asyncio.sleep(0.005)
            with pytest.raises(WorkerCrashed):
                await start
            await _wait_for(lambda: client._fatal is not None, 30)
            await asyncio.sleep(0.5)  # no fourth process is started
            assert client._proc is None and client.restarts == 2
            with pytest.raises(WorkerCrashed, match="3 times in a row while loading"):
                await client.generate(make_job(2))
        finally:
            await client.close()

    asyncio.run(main())


@pytest.mark.parametrize("field", ["stall_timeout_s", "load_backoff_s", "load_backoff_max_s"])
def test_worker_supervision_settings_are_checked(field: str) -> None:
    from engine.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=field):
        WorkerConfig(**{field: 0})
    with pytest.raises(InvalidRequest, match="max_load_failures"):
        WorkerConfig(max_load_failures=0)


def _batch(first_id: int, alphas: list[float], steps: int = 5, width: int | None = None,
           tempo: float = 240.0) -> list[GenerationJob]:
    """Jobs for one request at ``alphas`` (the scheduler's lattice batches)."""
    base = make_job(first_id, steps=steps, width=width, tempo=tempo)
    return [dataclasses.replace(base, job_id=first_id + i,
                                request=base.request.replace(alpha=a))
            for i, a in enumerate(alphas)]


def test_a_batch_answers_each_job_and_a_cancelled_batch_never_finishes() -> None:
    async def main() -> None:
        client = WorkerClient(WorkerConfig(model=TEST_TONES))
        try:
            await client.start()
            jobs = _batch(10, [0.0, 0.5, 1.0])
            clips = await client.generate_batch(jobs)
            assert [c.job_id for c in clips] == [10, 11, 12]
            for job, clip in zip(jobs, clips, strict=True):
                assert clip.request == job.request and clip.spec == job.spec
                np.testing.assert_array_equal(clip.audio, tone_clip_audio(job.job_id, job.spec))
            assert client.generated == 3
            with pytest.raises(InvalidRequest):  # two requests are no batch
                await client.generate_batch([make_job(20), make_job(21, steps=3)])
            task = asyncio.ensure_future(client.generate_batch(_batch(30, [0.25, 0.75],
                                                                      steps=150)))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Served in order: a batch that ran on would answer before this job.
            clip = await client.generate(make_job(40, steps=2))
            assert clip.job_id == 40 and client.generated == 4
            # Kept images: the same batch again is conformed only.
            again = await client.generate_batch(_batch(50, [0.0, 0.5, 1.0]))
            assert len(again) == 3 and client.reconformed == 3
        finally:
            await client.close()

    asyncio.run(main())
