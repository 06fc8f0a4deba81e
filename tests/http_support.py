"""Helpers for the HTTP tests: a real uvicorn server on a loopback port, and a gated backend.

The gate wraps the real renderer (the tiny model) so a test can hold a generation at its
start and observe ordering, queueing and cancellation deterministically; the work itself is
the real pipeline.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from engine.dsp.spectrogram import SpectrogramParams, audio_to_mel, mel_to_image
from engine.live.jobs import Clip, GenerationJob
from engine.takes.render import Renderer
from protocols.http.guard import bind


def write_seed_image(folder: Path, name: str = "og_beat", width: int = 512) -> Path:
    """A seed image made here from a decaying 220 Hz pulse at 4 per second (Riffusion's format)."""
    params = SpectrogramParams()
    n = (width - 1) * params.hop_length
    t = np.arange(n) / params.sample_rate
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-((t * 4) % 1) * 8)
    image = mel_to_image(audio_to_mel(audio.astype(np.float32)[None], params), params)
    path = folder / f"{name}.png"
    image.save(path, exif=image.getexif())
    return path


@functools.cache
def shared_seed_folder() -> Path:
    """A folder holding this module's og_beat seed image (made once per test process)."""
    folder = Path(tempfile.mkdtemp(prefix="riff-seeds-"))
    write_seed_image(folder)
    return folder


@functools.cache
def shared_renderer() -> Renderer:
    """The tiny model with :func:`shared_seed_folder`, loaded once per test process."""
    return Renderer.load("tiny", device="cpu", seed_image_dirs=[shared_seed_folder()])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1:<free port> in a thread; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_for(cond: Any, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class GatedBackend:
    """The real renderer behind a gate: each generation waits for :meth:`release`.

    ``started`` lists the start seeds of generations in the order they began; ``cancelled``
    the seeds whose cancel() poll answered True.
    """

    def __init__(self, inner: Renderer, gated: bool = True) -> None:
        self.inner = inner
        self.model = inner.model
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.calls = 0
        self._permits = threading.Semaphore(0)
        self.gated = gated

    def release(self, n: int = 1) -> None:
        """Let ``n`` more generations run."""
        for _ in range(n):
            self._permits.release()

    def check(self, request: Any) -> None:
        self.inner.check(request)

    def _enter(self, seed: int, cancel: Any) -> None:
        self.calls += 1
        self.started.append(seed)
        if self.gated:
            while not self._permits.acquire(timeout=0.01):
                if cancel is not None and cancel():
                    self.cancelled.append(seed)
                    break

    def _watch(self, seed: int, cancel: Any) -> Any:
        if cancel is None:
            return None

        def watched() -> bool:
            if cancel():
                if seed not in self.cancelled:
                    self.cancelled.append(seed)
                return True
            return False
        return watched

    def render(self, request: Any, *, cancel: Any = None, progress: Any = None) -> Any:
        seed = request.start.seed
        self._enter(seed, cancel)
        return self.inner.render(request, cancel=self._watch(seed, cancel), progress=progress)

    def render_clip(self, job: GenerationJob, *, cancel: Any = None, progress: Any = None
                    ) -> Clip:
        seed = job.request.start.seed
        self._enter(seed, cancel)
        return raw_clip(self.inner, job, cancel=self._watch(seed, cancel), progress=progress)


def raw_clip(renderer: Renderer, job: GenerationJob, *, cancel: Any = None,
             progress: Any = None) -> Clip:
    """The tiny model's raw output fitted to the job's clip spec, when conform is unavailable.

    Uses engine.live.clip.conform when it exists (the real path), else the plain reconstruction
    resampled in time to the spec's length, so the HTTP layer is tested either way.
    """
    try:
        return renderer.render_clip(job, cancel=cancel, progress=progress)
    except ImportError:
        pass
    rendered = renderer.render(job.request, cancel=cancel, progress=progress)
    mono = rendered.audio.mean(axis=0)
    src = np.linspace(0.0, 1.0, mono.shape[0])
    dst = np.linspace(0.0, 1.0, job.spec.num_samples)
    audio = np.interp(dst, src, mono).astype(np.float32)
    return Clip(job.job_id, np.repeat(audio[:, None], 2, axis=1), job.spec, job.request,
                rendered.seconds)
