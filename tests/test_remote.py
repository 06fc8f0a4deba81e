"""Remote generation: RemoteClipGenerator against a real `riff serve` app over loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from engine.errors import InvalidRequest, UnknownId
from engine.live.jobs import ClipGenerator, ClipSpec, GenerationJob
from engine.live.wire import parse_request
from engine.takes.render import Renderer
from protocols.http.app import ServeConfig, create_app
from protocols.remote import (
    RemoteClipGenerator,
    RemoteConfig,
    RemoteUnavailable,
    make_remote_generator,
)
from tests.http_support import GatedBackend, serving, shared_renderer, wait_for

SPEC = ClipSpec(tempo=120.0, bars=1, beats_per_bar=4, sample_rate=48000, num_samples=96000)


def job(seed: int = 5, job_id: int = 1, **request: Any) -> GenerationJob:
    # 192 px: short enough to be cheap, long enough that its default loop metadata (2 bars of
    # 4/4 over the image) is a plausible tempo (250 BPM) for conform.
    body = {"alpha": 0.5, "num_inference_steps": 2, "width": 192, "seed_image_id": "og_beat",
            "start": {"prompt": "funk", "seed": seed}, "end": {"prompt": "jazz", "seed": seed + 1},
            **request}
    return GenerationJob(job_id=job_id, request=parse_request(body), spec=SPEC, start_bar=4,
                         created=0.0)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return shared_renderer()


@pytest.fixture()
def url(renderer: Renderer) -> Iterator[str]:
    with serving(create_app(GatedBackend(renderer, gated=False), ServeConfig())) as base:
        yield base


def fast(url: str, **kw: Any) -> RemoteClipGenerator:
    return RemoteClipGenerator(RemoteConfig(url, backoff_s=0.01, backoff_max_s=0.05, **kw))


async def _generate(gen: RemoteClipGenerator, j: GenerationJob, progress: Any = None) -> Any:
    try:
        return await gen.generate(j, progress)
    finally:
        await gen.aclose()


def test_remote_clip_equals_local_clip(url: str, renderer: Renderer) -> None:
    gen = make_remote_generator(url)
    assert isinstance(gen, ClipGenerator)
    steps: list[tuple[int, int]] = []
    clip = asyncio.run(_generate(gen, job(), lambda s, t: steps.append((s, t))))
    assert clip.job_id == 1 and clip.spec == SPEC and clip.audio.shape == (96000, 2)
    assert clip.audio.dtype == np.float32 and np.abs(clip.audio).max() > 0
    assert steps and steps[-1][0] == steps[-1][1]
    assert [s for s, _ in steps] == sorted(s for s, _ in steps)
    local = renderer.render_clip(job())
    np.testing.assert_array_equal(clip.audio, local.audio)  # WAV float carries it exactly


def test_start_checks_the_server_like_the_worker_client(url: str) -> None:
    gen = make_remote_generator(url)

    async def start_and_close() -> None:
        await gen.start()
        await gen.close()

    asyncio.run(start_and_close())
    assert gen.device == f"remote {url} (model tiny)" and gen.restarts == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteUnavailable):
        asyncio.run(make_remote_generator(f"http://127.0.0.1:{port}").start())


def test_bad_job_raises_the_engine_error_without_retry(url: str) -> None:
    gen = fast(url)
    with pytest.raises(UnknownId, match="nope"):
        asyncio.run(_generate(gen, job(seed_image_id="nope")))
    assert gen.attempts == 1


def test_server_limits_are_invalid_requests(renderer: Renderer) -> None:
    app = create_app(GatedBackend(renderer, gated=False), ServeConfig(max_clip_seconds=1.0))
    with serving(app) as base:
        gen = fast(base)
        with pytest.raises(InvalidRequest, match="at most 1 s"):
            asyncio.run(_generate(gen, job()))
    assert gen.attempts == 1


def test_unreachable_server_fails_after_bounded_retries() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = fast(f"http://127.0.0.1:{port}", retries=2)
    with pytest.raises(RemoteUnavailable, match="3 attempt"):
        asyncio.run(_generate(gen, job()))
    assert gen.attempts == 3 and gen.retried == 2


def test_busy_server_is_retried_until_it_has_room(renderer: Renderer) -> None:
    gated = GatedBackend(renderer)
    with serving(create_app(gated, ServeConfig(queue=1))) as base, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        def post(seed: int) -> int:
            body = job(seed=seed).request.to_dict()
            return httpx.post(f"{base}/run_inference/", json=body, timeout=120).status_code

        running = pool.submit(post, 100)
        wait_for(lambda: gated.started == [100], what="the first generation")
        waiting = pool.submit(post, 200)
        wait_for(lambda: httpx.get(f"{base}/health").json()["queue_depth"] == 1,
                 what="the queue to fill")
        gen = fast(base, retries=50)

        async def scenario() -> Any:
            task = asyncio.create_task(_generate(gen, job(seed=300)))
            while gen.retried < 2:  # refused (503) at least twice while the queue is full
                await asyncio.sleep(0.01)
            gated.release(3)
            return await task

        clip = asyncio.run(scenario())
        assert running.result() == 200 and waiting.result() == 200
    assert clip.audio.shape == (96000, 2)
    assert gated.started == [100, 200, 300]


def test_cancelling_the_task_cancels_the_server_job(renderer: Renderer) -> None:
    gated = GatedBackend(renderer)
    with serving(create_app(gated, ServeConfig())) as base:
        gen = fast(base)

        async def scenario() -> None:
            task = asyncio.create_task(_generate(gen, job(seed=7)))
            while gated.started != [7]:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(scenario())
        wait_for(lambda: gated.cancelled == [7], what="the server to see the cancellation")
        wait_for(lambda: httpx.get(f"{base}/health").json()["busy"] == 0,
                 what="the cancelled job to stop")
        gated.gated = False
        clip = asyncio.run(_generate(fast(base), job(seed=8)))  # the server goes on serving
    assert clip.audio.shape == (96000, 2)


@pytest.mark.parametrize("url", ["ftp://host:1", "http://", "localhost:3013",
                                 "http://h:99999", "http://h:1/?x=1"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest):
        make_remote_generator(url)


def test_the_clip_line_is_decoded_off_the_event_loop(url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip's audio arrives as one long base64 line; parsing and decoding it on the loop
    stalled the control plane (about 0.15 s for 8 bars at 60 BPM)."""
    import threading

    import protocols.remote as remote

    threads: list[str] = []
    real_clip = remote._clip

    def recording_clip(j: GenerationJob, event: dict[str, Any]) -> Any:
        threads.append(threading.current_thread().name)
        return real_clip(j, event)

    monkeypatch.setattr(remote, "_clip", recording_clip)

    async def run() -> tuple[Any, str]:
        loop_thread = threading.current_thread().name
        return await _generate(make_remote_generator(url), job()), loop_thread

    clip, loop_thread = asyncio.run(run())
    assert clip.audio.shape == (96000, 2)
    assert threads and all(name != loop_thread for name in threads), (threads, loop_thread)
