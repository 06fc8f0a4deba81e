"""The generator worker: a separate process holding the pipeline and clip conform, and the
asyncio client the control plane awaits (:class:`WorkerClient`, a ``ClipGenerator``).

Why a process: torch, the model and phase reconstruction stay out of the daemon (which must
keep the audio going and never imports torch); a crash or out-of-memory error in the worker
costs one job, not the performance. The client restarts a dead worker, says so in the log, and
fails the job it was doing (the scheduler retries it).

Protocol (plain data, so it can run over a network later), one duplex pipe per worker; jobs
use the one JSON wire format of :mod:`engine.live.wire`:

    daemon -> worker  {"op": "job", "job": wire.job_to_json(job), "slot": str | None}
                      {"op": "batch", "jobs": [job, ...], "slots": [str | None, ...]}
                          (one request at several alphas, one clip spec: the alphas share
                          their UNet calls; each job is answered on its own, as below)
                      {"op": "cancel", "job_id"}
                      {"op": "stop"}
    worker -> daemon  {"op": "ready", "model": str, "device": str, "pid": int}
                      {"op": "fatal", "error": str, "message": str}   (model failed to load)
                      {"op": "progress", "job_id", "step", "total"}
                      {"op": "clip", "job_id", "slot": str, "shape": [n, ch], "seconds",
                       "reused": bool}    (the audio is in the job's shared memory slot)
                      {"op": "clip", "job_id", "audio": bytes, "shape", "seconds", "reused"}
                                         (no slot, or it did not fit: the audio is inline)
                      {"op": "error", "job_id", "error": class name, "message": str}
                      {"op": "cancelled", "job_id"}

Clip audio travels through shared memory (:mod:`engine.live.shm`): the daemon gives each
job a slot from its pool, the worker copies the clip into it once and sends only the header;
the daemon copies it out in a thread (the loop never blocks on a big ``recv``) and recycles
the slot. Without a slot (``WorkerConfig.shm`` false, or ``/dev/shm`` full) the audio comes
inline, pickled.

Job flow. The worker runs one job at a time and reads the pipe between denoising steps, so a
``cancel`` for the running job stops it at the next step boundary, and a ``cancel`` for a job
still waiting removes it: a job that is stale when the worker reaches it never starts.
Cancellation is per job id (a message, never a shared register that the next cancel
overwrites). The scheduler gives each worker one job at a time and cancels before it sends the
next, so the pipe holds at most the running job plus the one latest wanted.

A batch (the scheduler's lattice, :meth:`WorkerClient.generate_batch`) runs like one job:
a ``cancel`` for any of its job ids stops the whole batch between steps, or removes it while
it waits.

Kept spectrograms. The worker keeps the last ``keep`` generated images (the model's output,
before conform) by request. A job whose request is kept skips diffusion and only conforms the
image to the job's clip spec (phase reconstruction at the new tempo): an identical request is
never diffused twice while kept, and a tempo change costs a conform, not a generation. Such a
conform-only job is served as soon as the worker reads it, even between the steps of a running
diffusion, so the clip playing when the tempo changes can be re-conformed in time for the new
bar line.

Model ``test-tones`` is a stand-in for the GPU in end-to-end tests: it skips the model and
returns a pure tone per job (frequency from the job id, a whole number of cycles per clip so
it loops exactly, so a recording tells which job's clip plays where), after
``num_inference_steps`` steps of ``tone_step_s`` that report progress and honour
cancellation; a job for a kept request skips the steps (a conform only).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine import errors
from engine.errors import InvalidRequest, ModelUnavailable, RiffError
from engine.live.jobs import Clip, ClipSpec, GenerationJob, ProgressCallback
from engine.live.shm import SlotPool, SlotWriter
from engine.live.wire import job_to_json, parse_job
from engine.model.request import InferenceRequest, PromptInput

log = logging.getLogger(__name__)

TEST_TONES = "test-tones"
#: Seconds a test-tones "denoising step" takes by default (so cancellation and kills can land
#: mid-job).
TONE_STEP_S = 0.02


class WorkerCrashed(RiffError):
    """The worker process died while doing a job (the job may be retried)."""


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What the worker process loads: model, device, phase method, seed image folders.

    ``keep``: generated images kept by request for re-conforming (0 turns keeping off).
    ``tone_step_s``: seconds per step of the test-tones model.
    """

    model: str = "riffusion/riffusion-model-v1"
    device: str = "auto"
    phase_method: str = "fast"
    seed_folders: tuple[str, ...] = ()
    channels: int = 2
    start_timeout_s: float = 600.0
    #: Niceness added to the worker process, so a CPU-bound generator (the tiny model, phase
    #: reconstruction on the CPU) never starves the daemon's audio thread.
    nice: int = 10
    keep: int = 16
    tone_step_s: float = TONE_STEP_S
    #: Clip audio through shared memory slots (False: pickled through the pipe).
    shm: bool = True
    #: A worker that sends nothing for this long while a job is pending is hung (a CUDA call
    #: that never returns): it is killed and restarted, and the job fails (and is retried).
    stall_timeout_s: float = 300.0
    #: A worker that dies while loading is restarted after 0.5 s, 1 s, 2 s ... (at most
    #: ``load_backoff_max_s``); after ``max_load_failures`` deaths in a row it is given up on
    #: and every job fails with the reason, instead of restarting in a tight loop.
    load_backoff_s: float = 0.5
    load_backoff_max_s: float = 30.0
    max_load_failures: int = 5
    #: Clip image widths whose UNet graphs the fast path (CUDA) captures before the worker
    #: reports ready; other widths are captured on their first clip (a one-off delay).
    warm_widths: tuple[int, ...] = (512,)

    def __post_init__(self) -> None:
        for name in ("stall_timeout_s", "load_backoff_s", "load_backoff_max_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 1e6:
                raise InvalidRequest(f"worker {name} must be a positive number of seconds")
        if not isinstance(self.max_load_failures, int) or self.max_load_failures < 1:
            raise InvalidRequest("worker max_load_failures must be at least 1")
        if not all(isinstance(w, int) and 8 <= w <= 8192 and w % 8 == 0
                   for w in self.warm_widths):
            raise InvalidRequest("warm_widths must be multiples of 8 px, 8..8192")
        if not 0 <= self.keep <= 1024:
            raise InvalidRequest(f"keep must be 0..1024 images, not {self.keep}")
        if not 0.0 <= self.tone_step_s <= 10.0:
            raise InvalidRequest(f"tone_step_s must be 0..10 s, not {self.tone_step_s}")


def tone_frequency(job_id: int, num_samples: int, sample_rate: int) -> float:
    """The test-tones frequency of ``job_id``: near 220 Hz * 2^(k/12) for k = job_id % 12,
    rounded to a whole number of cycles per clip so the clip loops seamlessly."""
    f = 220.0 * 2 ** ((job_id % 12) / 12)
    cycles = max(1, round(f * num_samples / sample_rate))
    return cycles * sample_rate / num_samples


def tone_clip_audio(job_id: int, spec: ClipSpec, channels: int = 2) -> np.ndarray:
    """The test-tones audio of a job: ``0.25 * sin(2 pi f n / rate)``, (samples, channels)."""
    n = np.arange(spec.num_samples, dtype=np.float64)
    f = tone_frequency(job_id, spec.num_samples, spec.sample_rate)
    one = (0.25 * np.sin(2 * np.pi * f * n / spec.sample_rate)).astype(np.float32)
    return np.ascontiguousarray(np.repeat(one[:, None], channels, axis=1))


# ---- the worker process ---------------------------------------------------------------------


class _Model:
    """What runs inside the worker: the pipeline plus conform, or the test-tones stand-in,
    and the images kept by request (worker main thread only)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.generator: Any = None
        self.device = "cpu"
        #: request -> what conform needs: the generated PIL image (test-tones: the job id).
        self.kept: collections.OrderedDict[InferenceRequest, Any] = collections.OrderedDict()
        if config.model != TEST_TONES:
            from engine.model.pipeline import RiffusionGenerator

            self.generator = RiffusionGenerator.load(config.model, device=config.device,
                                                     seed_images=list(config.seed_folders))
            self.device = str(self.generator.device)
            self._warm_up()

    def _warm_up(self) -> None:
        """Capture the fast path's graphs for the live engine's requests (seamless loops,
        guidance on) at ``warm_widths``, so the first clip does not pay for it."""
        requests = [InferenceRequest(start=PromptInput("warm up"), width=width, seamless=True)
                    for width in self.config.warm_widths]
        seconds = self.generator.warm_up(requests)
        if seconds:
            log.info("fast path warmed for widths %s in %.2f s",
                     ", ".join(map(str, self.config.warm_widths)), seconds)

    def has(self, request: InferenceRequest) -> bool:
        """Whether ``request``'s image is kept (a job for it is a conform only)."""
        return request in self.kept

    def make(self, job: GenerationJob, progress: Callable[[int, int], None],
             cancel: Callable[[], bool]) -> tuple[np.ndarray, bool]:
        """The job's clip audio and whether a kept image was reused (no diffusion)."""
        kept = self.kept.get(job.request)
        reused = kept is not None
        if kept is None:
            kept = self._diffuse(job, progress, cancel)
            if self.config.keep:
                self.kept[job.request] = kept
                while len(self.kept) > self.config.keep:
                    self.kept.popitem(last=False)
        else:
            self.kept.move_to_end(job.request)
        return self._conform(job, kept), reused

    def make_batch(self, jobs: Sequence[GenerationJob], progress: Callable[[int, int], None],
                   cancel: Callable[[], bool]) -> list[tuple[np.ndarray, bool]]:
        """Each job's clip audio and whether a kept image was reused: the jobs (one request
        at several alphas) whose images are not kept are diffused in one batched call."""
        made: dict[InferenceRequest, Any] = {}
        todo = [job for job in jobs if job.request not in self.kept]
        if todo:
            if self.generator is None:
                self._diffuse(todo[0], progress, cancel)  # one job's steps for the batch
                images: list[Any] = [job.job_id for job in todo]
            else:
                results = self.generator.generate_alphas(
                    todo[0].request, [job.request.alpha for job in todo], progress=progress,
                    cancel=cancel)
                images = [result.image for result in results]
            made = {job.request: image for job, image in zip(todo, images, strict=True)}
        out = []
        for job in jobs:
            reused = job.request not in made
            kept = self.kept[job.request] if reused else made[job.request]
            out.append((self._conform(job, kept), reused))
        if self.config.keep:
            for request, image in made.items():
                self.kept[request] = image
            while len(self.kept) > self.config.keep:
                self.kept.popitem(last=False)
        return out

    def _diffuse(self, job: GenerationJob, progress: Callable[[int, int], None],
                 cancel: Callable[[], bool]) -> Any:
        if self.generator is None:
            total = job.request.num_inference_steps
            for step in range(total):
                if cancel():
                    raise errors.Cancelled(f"job {job.job_id} cancelled")
                time.sleep(self.config.tone_step_s)
                progress(step + 1, total)
            if cancel():
                raise errors.Cancelled(f"job {job.job_id} cancelled")
            return job.job_id
        result = self.generator.generate(job.request, progress=progress, cancel=cancel)
        return result.image

    def _conform(self, job: GenerationJob, kept: Any) -> np.ndarray:
        if self.generator is None:  # the tone of the job producing the clip (see above)
            return tone_clip_audio(job.job_id, job.spec, self.config.channels)
        from engine.live.clip import conform_image

        return conform_image(kept, job.spec, job.request,
                             seed_images=self.generator.seed_images,
                             method=self.config.phase_method, device=self.device,
                             channels=self.config.channels)


class _WorkerLoop:
    """The worker process's job loop: one job running, the others waiting in arrival order,
    the pipe read between denoising steps (see the module docstring). Thread: the worker
    process's main thread only."""

    def __init__(self, conn: multiprocessing.connection.Connection, model: _Model) -> None:
        self.conn = conn
        self.model = model
        self.slots = SlotWriter()
        self.waiting: collections.deque[dict[str, Any]] = collections.deque()
        self.running = -1
        self.running_batch: frozenset[int] = frozenset()
        self.running_cancelled = False
        self.stopping = False
        self._serving_kept = False

    def read(self, block: bool) -> None:
        """Read every message waiting on the pipe (the first one blocking when ``block``)."""
        timeout: float | None = None if block else 0.0
        while not self.stopping:
            try:
                if not self.conn.poll(timeout):
                    return
                msg = self.conn.recv()
            except (EOFError, OSError):  # the daemon went away
                self.stopping = True
                return
            timeout = 0.0
            op = msg.get("op")
            if op in ("job", "batch"):
                self.waiting.append(msg)
            elif op == "cancel":
                self._cancel(int(msg.get("job_id", -1)))
            elif op == "stop":
                self.stopping = True
            else:
                log.error("unknown message %r", op)

    def _cancel(self, job_id: int) -> None:
        if job_id == self.running or job_id in self.running_batch:
            self.running_cancelled = True
            return
        for msg in self.waiting:
            ids = _job_ids(msg)
            if job_id in ids:
                self.waiting.remove(msg)  # stale before it started: it never starts
                for one in ids:
                    self.conn.send({"op": "cancelled", "job_id": one})
                return
        # Otherwise the job already ended (its result is on the way): nothing to do.

    def between_steps(self) -> bool:
        """The diffusion's cancel callback: read the pipe, serve conform-only jobs, and say
        whether the running job was cancelled (or the worker is stopping)."""
        self.read(block=False)
        if not self._serving_kept:
            self._serving_kept = True
            try:
                for msg in [m for m in self.waiting if self._kept_job(m)]:
                    self.waiting.remove(msg)
                    self._serve(msg, nested=True)
            finally:
                self._serving_kept = False
        return self.running_cancelled or self.stopping

    def _kept_job(self, msg: dict[str, Any]) -> bool:
        if msg.get("op") != "job":
            return False  # a batch is served in order
        try:
            return self.model.has(parse_job(msg["job"]).request)
        except RiffError:
            return False  # served (and reported) in order

    def run(self) -> None:
        """Serve jobs until told to stop or the daemon goes away."""
        while not self.stopping:
            if not self.waiting:
                self.read(block=True)
                continue
            msg = self.waiting.popleft()
            if msg.get("op") == "batch":
                self._serve_batch(msg)
            else:
                self._serve(msg, nested=False)

    def _serve_batch(self, msg: dict[str, Any]) -> None:
        """Serve a batch: diffuse its alphas together, then answer each job with its clip
        (or every job with the batch's error or cancellation)."""
        ids = _job_ids(msg)
        datas = msg.get("jobs")
        slots = msg.get("slots")
        self.running_batch, self.running_cancelled = frozenset(ids), False
        t0 = time.monotonic()
        try:
            if not isinstance(datas, list) or not datas or len(ids) != len(datas):
                raise InvalidRequest("a batch needs a non-empty list of jobs")
            jobs = [parse_job(data) for data in datas]

            def progress(step: int, total: int) -> None:
                for job_id in ids:
                    self.conn.send({"op": "progress", "job_id": job_id, "step": step,
                                    "total": total})

            results = self.model.make_batch(jobs, progress, self.between_steps)
        except errors.Cancelled:
            for job_id in ids:
                self.conn.send({"op": "cancelled", "job_id": job_id})
            return
        except Exception as exc:  # every failure goes back as each job's result
            if not isinstance(exc, RiffError):
                log.exception("batch %s failed", ids)
            for job_id in ids:
                self.conn.send({"op": "error", "job_id": job_id, "error": type(exc).__name__,
                                "message": str(exc)})
            return
        finally:
            self.running_batch, self.running_cancelled = frozenset(), False
        seconds = time.monotonic() - t0
        if not isinstance(slots, list) or len(slots) != len(ids):
            slots = [None] * len(ids)
        for job_id, slot, (audio, reused) in zip(ids, slots, results, strict=True):
            self._send_clip(job_id, slot, audio, reused, seconds)

    def _serve(self, msg: dict[str, Any], nested: bool) -> None:
        data = msg.get("job")
        job_id = int(data.get("job_id", -1)) if isinstance(data, dict) else -1
        if not nested:
            self.running, self.running_cancelled = job_id, False
        t0 = time.monotonic()
        try:
            job = parse_job(data)

            def progress(step: int, total: int) -> None:
                self.conn.send({"op": "progress", "job_id": job_id, "step": step,
                                "total": total})

            audio, reused = self.model.make(job, progress, self.between_steps)
        except errors.Cancelled:
            self.conn.send({"op": "cancelled", "job_id": job_id})
            return
        except Exception as exc:  # every failure goes back to the daemon as the job's result
            if not isinstance(exc, RiffError):
                log.exception("job %d failed", job_id)
            self.conn.send({"op": "error", "job_id": job_id, "error": type(exc).__name__,
                            "message": str(exc)})
            return
        finally:
            if not nested:
                self.running, self.running_cancelled = -1, False
        self._send_clip(job_id, msg.get("slot"), audio, reused, time.monotonic() - t0)

    def _send_clip(self, job_id: int, slot: Any, audio: np.ndarray, reused: bool,
                   seconds: float) -> None:
        """Answer ``job_id`` with its clip: into its shared memory slot, else inline."""
        header = {"op": "clip", "job_id": job_id, "shape": list(audio.shape),
                  "seconds": seconds, "reused": reused}
        if isinstance(slot, str) and self.slots.write(slot, np.ascontiguousarray(audio)):
            header["slot"] = slot  # one copy, into the daemon's slot
        else:
            header["audio"] = audio.tobytes()
        self.conn.send(header)


def _job_ids(msg: dict[str, Any]) -> list[int]:
    """The job ids of a ``job`` or ``batch`` message (-1 for a malformed one)."""
    datas = msg.get("jobs") if msg.get("op") == "batch" else [msg.get("job")]
    if not isinstance(datas, list):
        return []
    return [int(d.get("job_id", -1)) if isinstance(d, dict) else -1 for d in datas]


def worker_main(conn: multiprocessing.connection.Connection, config: WorkerConfig) -> None:
    """Entry point of the worker process: load, then serve jobs until told to stop.

    SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and the daemon
    stops its worker itself (a ``stop`` message, then a kill), so the worker prints no
    KeyboardInterrupt traceback.

    Thread: the worker process's main thread (the only one that touches the model).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s worker %(name)s: %(message)s")
    if config.nice:
        os.nice(config.nice)
    try:
        model = _Model(config)
    except RiffError as exc:
        conn.send({"op": "fatal", "error": type(exc).__name__, "message": str(exc)})
        return
    conn.send({"op": "ready", "model": config.model, "device": model.device,
               "pid": os.getpid()})
    worker = _WorkerLoop(conn, model)
    try:
        worker.run()
    finally:
        worker.slots.close()

# ---- the daemon side --------------------------------------------------------------------------


def _error_from_wire(name: str, message: str) -> Exception:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, RiffError):
        return cls(message)
    return RuntimeError(f"worker: {name}: {message}")


class WorkerClient:
    """The control plane's handle on one worker process; a :class:`ClipGenerator`.

    ``generate`` sends the job at once; cancelling it sends ``cancel`` for that job id (the
    worker stops it between steps, or drops it unstarted). ``generated`` counts jobs the worker
    diffused, ``reconformed`` jobs it served from a kept image (see the module docstring).

    Thread: every method runs on the daemon's asyncio loop. The process is started with the
    ``spawn`` method (no inherited threads or JACK state), watched through its sentinel, and
    restarted when it dies.
    """

    def __init__(self, config: WorkerConfig, name: str = "worker") -> None:
        self.config = config
        self.name = name
        self.restarts = 0
        self.generated = 0
        self.reconformed = 0
        self.pid = -1
        self.device = ""
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[np.ndarray]] = {}
        self._progress: dict[int, ProgressCallback] = {}
        self._seconds: dict[int, float] = {}
        self._lock = asyncio.Lock()
        self._closing = False
        self._fatal: Exception | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._last_heard = 0.0  # loop time of the worker's last message
        self._load_failures = 0  # deaths while loading, in a row
        #: Shared memory slots for clip audio (None: audio over the pipe).
        self.slots = SlotPool() if config.shm else None
        self._slot_of: dict[int, str] = {}  # job id -> its slot while the job runs
        self._copies: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the process and wait until the model is loaded (raises ModelUnavailable or
        the worker's own error when it cannot load)."""
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(target=worker_main, args=(child, self.config),
                                       name=f"riff-{self.name}", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self._ready = loop.create_future()
        loop.add_reader(parent.fileno(), self._on_readable, parent)
        loop.add_reader(self._proc.sentinel, self._on_exit, self._proc)
        log.info("%s: process %d started (model %s)", self.name, self._proc.pid,
                 self.config.model)
        self._last_heard = loop.time()
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = loop.create_task(self._watch())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.config.start_timeout_s)
        except TimeoutError:
            raise ModelUnavailable(f"{self.name} did not load the model within "
                                   f"{self.config.start_timeout_s:.0f} s") from None

    async def _started(self, job_id: int) -> multiprocessing.connection.Connection:
        """The worker's pipe once it is loaded (started or restarted here when needed)."""
        if self._fatal is not None:
            raise self._fatal
        if self._ready is None:
            async with self._lock:  # one start at a time (a restart may be under way)
                if self._ready is None:
                    await self.start()
        assert self._ready is not None
        await asyncio.shield(self._ready)
        if self._conn is None:
            raise WorkerCrashed(f"{self.name}: the worker exited before job {job_id}")
        return self._conn

    async def generate_batch(self, jobs: Sequence[GenerationJob]) -> list[Clip]:
        """Generate ``jobs`` (one request at several alphas, one clip spec) in one batched
        call: their alphas share the UNet calls. Cancelling it cancels the whole batch.
        Raises InvalidRequest for jobs that differ in more than their alpha. Loop thread."""
        if not jobs:
            raise InvalidRequest("an empty batch")
        base, spec = jobs[0].request.replace(alpha=0.0), jobs[0].spec
        if any(job.request.replace(alpha=0.0) != base or job.spec != spec for job in jobs):
            raise InvalidRequest("a batch renders one request at several alphas for one "
                                 "clip spec")
        conn = await self._started(jobs[0].job_id)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[np.ndarray]] = []
        slots: list[str | None] = []
        for job in jobs:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._pending[job.job_id] = future
            futures.append(future)
            slot = None
            if self.slots is not None:
                slot = self.slots.acquire(job.spec.num_samples * self.config.channels * 4)
                if slot is not None:
                    self._slot_of[job.job_id] = slot
            slots.append(slot)
        try:
            try:
                conn.send({"op": "batch", "jobs": [job_to_json(job) for job in jobs],
                           "slots": slots})
            except OSError as exc:
                for job in jobs:
                    self._release_slot(job.job_id)
                raise WorkerCrashed(f"{self.name}: cannot send batch "
                                    f"{[job.job_id for job in jobs]}: {exc}") from exc
            try:
                results = await asyncio.gather(*futures, return_exceptions=True)
            except asyncio.CancelledError:
                for job in jobs:
                    self._send_cancel(job.job_id)
                raise
        finally:
            seconds = [self._seconds.pop(job.job_id, 0.0) for job in jobs]
            for job in jobs:
                self._forget(job.job_id)
        clips = []
        for job, result, took in zip(jobs, results, seconds, strict=True):
            if isinstance(result, BaseException):
                raise result
            clips.append(Clip(job.job_id, result, job.spec, job.request, took))
        return clips

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        """Generate ``job`` in the worker (see :class:`~engine.live.jobs.ClipGenerator`)."""
        await self._started(job.job_id)
        assert self._conn is not None
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending[job.job_id] = future
        if progress is not None:
            self._progress[job.job_id] = progress
        slot = None
        if self.slots is not None:
            slot = self.slots.acquire(job.spec.num_samples * self.config.channels * 4)
            if slot is not None:
                self._slot_of[job.job_id] = slot
        try:
            self._conn.send({"op": "job", "job": job_to_json(job), "slot": slot})
        except OSError as exc:
            self._forget(job.job_id)
            raise WorkerCrashed(f"{self.name}: cannot send job {job.job_id}: {exc}") from exc
        try:
            audio = await future
        except asyncio.CancelledError:
            self._send_cancel(job.job_id)
            raise
        finally:
            self._forget(job.job_id)
        return Clip(job.job_id, audio, job.spec, job.request, self._seconds.pop(job.job_id, 0.0))

    def _send_cancel(self, job_id: int) -> None:
        """Tell the worker to stop (or never start) ``job_id`` (loop thread)."""
        if self._conn is None:
            return
        try:
            self._conn.send({"op": "cancel", "job_id": job_id})
        except OSError as exc:  # the worker is gone: its sentinel reports it
            log.warning("%s: cannot cancel job %d: %s", self.name, job_id, exc)

    def _forget(self, job_id: int) -> None:
        self._pending.pop(job_id, None)
        self._progress.pop(job_id, None)

    def _release_slot(self, job_id: int) -> None:
        """The job's slot is free again: the job ended (error, cancelled, crash) or its clip
        was copied out. Loop thread."""
        slot = self._slot_of.pop(job_id, None)
        if slot is not None and self.slots is not None:
            self.slots.release(slot)

    def _on_readable(self, conn: multiprocessing.connection.Connection) -> None:
        """Dispatch every message waiting on the pipe (loop thread; must not block)."""
        while conn is self._conn:
            try:
                if not conn.poll():
                    return
                msg = conn.recv()
            except (EOFError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
                return  # the sentinel reports the exit
            self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        self._last_heard = asyncio.get_running_loop().time()
        if op == "ready":
            self._load_failures = 0
            self.pid, self.device = int(msg["pid"]), str(msg["device"])
            log.info("%s: ready (pid %d, model %s on %s)", self.name, self.pid,
                     msg["model"], self.device)
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        if op == "fatal":
            error = _error_from_wire(msg["error"], msg["message"])
            self._fatal = error  # loading fails the same way again: do not restart
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(error)
            return
        job_id = int(msg.get("job_id", -1))
        if op == "progress":
            cb = self._progress.get(job_id)
            if cb is not None:
                cb(int(msg["step"]), int(msg["total"]))
            return
        if op == "clip":  # counted whether or not anybody still waits for it
            if msg.get("reused"):
                self.reconformed += 1
            else:
                self.generated += 1
        future = self._pending.get(job_id)
        if future is None or future.done():
            self._release_slot(job_id)
            return  # a cancelled job finishing or dropped; nobody waits for it
        if op == "clip":
            self._seconds[job_id] = float(msg["seconds"])
            shape = tuple(int(n) for n in msg["shape"])
            slot = msg.get("slot")
            if slot is None:
                self._release_slot(job_id)
                audio = np.frombuffer(msg["audio"], np.float32).reshape(shape).copy()
                future.set_result(audio)
            elif self._slot_of.pop(job_id, None) != slot:
                self._release_slot(job_id)
                future.set_exception(WorkerCrashed(f"{self.name}: job {job_id} answered in "
                                                   f"slot {slot}, not its own"))
            else:
                task = asyncio.get_running_loop().create_task(
                    self._copy_out(job_id, str(slot), shape, future))
                self._copies.add(task)
                task.add_done_callback(self._copies.discard)
            return
        self._release_slot(job_id)
        if op == "error":
            future.set_exception(_error_from_wire(msg["error"], msg["message"]))
        elif op == "cancelled":
            future.set_exception(errors.Cancelled(f"job {job_id} was cancelled"))

    async def _copy_out(self, job_id: int, slot: str, shape: tuple[int, ...],
                        future: asyncio.Future[np.ndarray]) -> None:
        """Copy the clip out of its slot (in a thread: the loop goes on; the slot is free
        afterwards) and hand it to the waiting ``generate``. Loop thread."""
        assert self.slots is not None
        try:
            audio = await self.slots.copy_out(slot, shape)
        except ValueError as exc:  # a header that does not fit its slot: retried
            log.error("%s: job %d: %s", self.name, job_id, exc)
            if not future.done():
                future.set_exception(WorkerCrashed(f"{self.name}: job {job_id}: {exc}"))
            return
        if not future.done():
            future.set_result(audio)

    def _on_exit(self, proc: Any) -> None:
        """The worker process ended (loop thread): fail its job and start a new one."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(proc.sentinel)
        if proc is not self._proc:
            return
        proc.join(1.0)  # it has exited (its sentinel fired): this only reaps it
        code = proc.exitcode
        if self._conn is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None
        crashed = WorkerCrashed(f"{self.name} (pid {proc.pid}) exited with code {code}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(crashed)
        for job_id in list(self._slot_of):  # nothing will come in them any more
            self._release_slot(job_id)
        loading = self._ready is not None and not self._ready.done()
        if loading:
            assert self._ready is not None
            self._ready.set_exception(crashed)
            self._ready.exception()  # reported here; a cancelled start() will not read it
        self._ready = None
        self._proc = None
        if self._closing or self._fatal is not None:
            return
        delay = 0.0
        if loading:
            self._load_failures += 1
            if self._load_failures >= self.config.max_load_failures:
                self._fatal = WorkerCrashed(
                    f"{self.name} died {self._load_failures} times in a row while loading "
                    f"the model (last exit code {code}); not restarting it")
                log.error("%s", self._fatal)
                return
            delay = min(self.config.load_backoff_s * 2 ** (self._load_failures - 1),
                        self.config.load_backoff_max_s)
        self.restarts += 1
        log.error("%s (pid %d) died with exit code %s%s; restarting it%s (restart %d)",
                  self.name, proc.pid, code, " while loading" if loading else "",
                  f" in {delay:.1f} s" if delay else "", self.restarts)
        self._restart_task = loop.create_task(self._restart(delay))

    async def _restart(self, delay: float = 0.0) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            async with self._lock:
                if self._ready is None and not self._closing and self._fatal is None:
                    await self.start()
        except Exception as exc:  # logged and counted; the next generate() tries again
            log.error("%s: restart failed: %s", self.name, exc)

    async def _watch(self) -> None:
        """Kill a hung worker: one that has a job and has said nothing (no progress, no
        clip) for ``stall_timeout_s``. Its exit then fails the job and restarts it. Loop
        thread; ends with :meth:`close`."""
        loop = asyncio.get_running_loop()
        timeout = self.config.stall_timeout_s
        while not self._closing:
            await asyncio.sleep(min(1.0, timeout / 4))
            proc = self._proc
            if (proc is None or not self._pending or self._ready is None
                    or not self._ready.done()):
                continue
            silent = loop.time() - self._last_heard
            if silent > timeout:
                log.error("%s (pid %d) has not answered for %.1f s with a job pending: hung; "
                          "killing it", self.name, proc.pid, silent)
                self._last_heard = loop.time()
                proc.kill()

    async def close(self) -> None:
        """Stop the worker process (waits up to 5 s, then kills it)."""
        self._closing = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        proc, conn = self._proc, self._conn
        if proc is None:
            await self._close_slots()
            return
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send({"op": "stop"})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, proc.join, 5.0)
        if proc.is_alive():
            proc.kill()
            await loop.run_in_executor(None, proc.join, 5.0)
        if self._proc is proc:  # the sentinel callback did not run yet
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(proc.sentinel)
            if conn is not None:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(conn.fileno())
                conn.close()
            self._proc = self._conn = None
        await self._close_slots()
        log.info("%s stopped", self.name)

    async def _close_slots(self) -> None:
        """Let clip copies finish, then unlink every shared memory slot (loop thread)."""
        if self._copies:
            await asyncio.wait(list(self._copies))
        for job_id in list(self._slot_of):
            self._release_slot(job_id)
        if self.slots is not None:
            self.slots.close()
