"""``riff serve --ray``: the same HTTP app, served by Ray Serve over a pool of generators.

Two deployments make one Ray Serve application:

- ``Generator``: each replica loads one model (:class:`engine.takes.render.Renderer`) on its
  own GPU share (``num_gpus`` per replica). Its ``render`` and ``render_clip`` methods go
  through ``@serve.batch``: requests from different callers that arrive within the batch
  wait form one batch. Inside a batch, requests equal but for alpha (same prompts, seeds,
  shape, steps) share their UNet calls (``generate_alphas``); the others run one after the
  other in the same batch call, because the pipeline cannot yet batch different prompts or
  seeds into one UNet call. Replicas are fixed (``num_replicas``) or autoscaled on
  ``target_ongoing_requests``.
- ``Ingress``: the unchanged FastAPI app of :func:`protocols.http.app.create_app` (validation,
  limits, bearer token, 503 with Retry-After, cancellation of requests whose client left),
  built in the replica (``__serve_build_asgi_app__``) around :class:`RayBackend`, which
  forwards the model work to ``Generator`` through a DeploymentHandle. The app's queue hands
  the pool as many requests at once as the pool can batch (``ServeConfig.concurrency``);
  more wait in that queue, and more than ``--queue`` waiting get 503.

Where things run: :func:`serve_with_ray` on the CLI's main thread (driver process); the
Ingress replica's event loop runs the app; :class:`RayBackend`'s ``render`` runs on the
app's generation threads and blocks there (never on the loop); a Generator replica's batch
runs in a worker thread of that replica (``asyncio.to_thread``), one batch at a time, so its
event loop stays free to receive new requests and cancellations.

Safe by default: a Ray started here (:func:`start_local_ray`) listens on 127.0.0.1 only, with
usage stats and the dashboard off (``dashboard=True`` turns the dashboard on, still on
loopback). ``address`` joins an existing cluster instead, started and secured by its owner.

For ``serve run``/``serve deploy`` and KubeRay (``serveConfigV2``), :func:`build_app` is the
import path: ``protocols.http.ray_serve:build_app`` with ``args`` (see
``examples/kuberay-rayservice.yaml``).

This module imports ray at the top: import it only when Ray is wanted (the CLI turns its
ImportError into a one-line install hint).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray._private import ray_constants
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle

from engine.errors import Cancelled, InvalidRequest, ModelUnavailable, RiffError
from engine.live.jobs import Clip, GenerationJob
from engine.model.request import InferenceRequest
from engine.takes.render import Rendered, Renderer
from protocols.http.app import ServeConfig, create_app

log = logging.getLogger(__name__)

#: Name of the Ray Serve application, and of its deployments.
APP_NAME = "riff"
GENERATOR = "Generator"
INGRESS = "Ingress"

#: How often a waiting RayBackend call checks whether its client left (seconds).
POLL_S = 0.1


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """What each Generator replica loads; validated on construction."""

    model: str = "riffusion/riffusion-model-v1"
    device: str = "auto"
    seed_image_dirs: tuple[str, ...] = ()
    phase: str = "fast"

    def __post_init__(self) -> None:
        if not self.model:
            raise InvalidRequest("model must not be empty")
        if self.phase not in ("riffusion", "fast", "quality"):
            raise InvalidRequest(f"phase must be riffusion, fast or quality, not {self.phase!r}")
        object.__setattr__(self, "seed_image_dirs", tuple(str(d) for d in self.seed_image_dirs))


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """How the generator pool is placed, scaled and batched; validated on construction.

    ``replicas`` is a fixed replica count; with ``autoscale`` the pool moves between
    ``min_replicas`` and ``max_replicas`` so that each replica has about
    ``target_ongoing_requests`` requests in hand. ``max_batch_size`` requests at most form one
    batch; a batch waits at most ``batch_wait_s`` for more requests after its first.
    """

    replicas: int = 1
    autoscale: bool = False
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 4.0
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch_size: int = 4
    batch_wait_s: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 1024:
            raise InvalidRequest(f"replicas must be between 1 and 1024, not {self.replicas}")
        if not 0 <= self.min_replicas <= self.max_replicas <= 1024 or self.max_replicas < 1:
            raise InvalidRequest("need 0 <= min_replicas <= max_replicas <= 1024, "
                                 "max_replicas >= 1")
        if not 0 < self.target_ongoing_requests <= 1000:
            raise InvalidRequest("target_ongoing_requests must be in (0, 1000]")
        if not 0 <= self.gpus_per_replica <= 64:
            raise InvalidRequest(f"gpus_per_replica must be between 0 and 64, "
                                 f"not {self.gpus_per_replica}")
        if not 0 <= self.cpus_per_replica <= 256:
            raise InvalidRequest("cpus_per_replica must be between 0 and 256")
        if not 1 <= self.max_batch_size <= 64:
            raise InvalidRequest(f"max_batch_size must be between 1 and 64, "
                                 f"not {self.max_batch_size}")
        if not 0 <= self.batch_wait_s <= 60:
            raise InvalidRequest(f"batch_wait_s must be between 0 and 60, not {self.batch_wait_s}")

    @property
    def peak_replicas(self) -> int:
        """The most replicas the pool may have."""
        return self.max_replicas if self.autoscale else self.replicas

    @property
    def capacity(self) -> int:
        """Requests the pool can hold at once at its largest (replicas x batch size)."""
        return min(1000, self.peak_replicas * self.max_batch_size)

    def deployment_options(self) -> dict[str, Any]:
        """Ray Serve options of the Generator deployment."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica,
                                  "num_gpus": self.gpus_per_replica},
            # A running batch plus the next one forming (and room for stats calls); the app
            # sends at most replicas x batch size at once.
            "max_ongoing_requests": 2 * self.max_batch_size,
            "user_config": {"max_batch_size": self.max_batch_size,
                            "batch_wait_s": self.batch_wait_s},
        }
        if self.autoscale:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


#: Set in the environment of a local Ray started by :func:`start_ray` (its processes inherit
#: it): the replicas then keep their own servers on loopback too.
LOOPBACK_ENV = "RIFF_RAY_LOOPBACK"


def _loopback_replica_server() -> None:
    """In a replica of a loopback-only Ray: make Serve's inter-deployment gRPC server, which
    Ray Serve 2.60 binds to every interface (``[::]:0``), listen on 127.0.0.1 instead.

    Thread: the replica's constructor, before Serve starts that server. Private Ray API:
    when it moves, this logs a warning and changes nothing (Ray's token authentication,
    on by default, still guards that port).
    """
    if os.environ.get(LOOPBACK_ENV) != "1":
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        log.warning("cannot keep Serve's replica gRPC server on loopback (Ray moved it)")
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_riff_loopback", False):
        if original is None:
            log.warning("cannot keep Serve's replica gRPC server on loopback (Ray moved it)")
        return

    def loopback(server: Any, address: str) -> Any:
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    loopback._riff_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback


@dataclasses.dataclass(frozen=True)
class _Work:
    """One request inside a Generator replica: what to do, and its cancellation token."""

    token: int
    kind: str  # "render" or "clip"
    payload: Any


@serve.deployment(name=GENERATOR)
class Generator:
    """A Ray Serve replica holding one loaded model; batches concurrent requests.

    Thread: ``render``/``render_clip``/``stats``/``reconfigure`` run on the replica's event
    loop; :meth:`_run_batch` on one worker thread at a time (``max_concurrent_batches=1``).
    """

    def __init__(self, settings: ModelSettings) -> None:
        _loopback_replica_server()
        self.renderer = Renderer.load(settings.model, device=settings.device,
                                      seed_image_dirs=[Path(d) for d in settings.seed_image_dirs],
                                      phase=settings.phase)
        self._tokens = itertools.count()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self.batch_sizes: list[int] = []
        self.cancelled = 0
        self.stopped = 0
        log.info("generator replica %d ready: %s on %s", os.getpid(), settings.model,
                 self.renderer.device)

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Batch size and wait from the deployment's ``user_config`` (changeable live)."""
        size = int(user_config.get("max_batch_size", 4))
        wait = float(user_config.get("batch_wait_s", 0.05))
        self._batch.set_max_batch_size(size)  # type: ignore[attr-defined]
        self._batch.set_batch_wait_timeout_s(wait)  # type: ignore[attr-defined]

    async def render(self, request: InferenceRequest) -> Rendered:
        """Image and audio for ``request`` (Renderer.render), batched with its neighbours."""
        result: Rendered = await self._submit("render", request)
        return result

    async def render_clip(self, job: GenerationJob) -> Clip:
        """A conformed clip for ``job`` (Renderer.render_clip), batched with its neighbours."""
        result: Clip = await self._submit("clip", job)
        return result

    def stats(self) -> dict[str, Any]:
        """For tests and operators: the batch sizes formed so far, callers that went away
        (``cancelled``) and requests whose generation was stopped part-way (``stopped``)."""
        with self._lock:
            return {"pid": os.getpid(), "batch_sizes": list(self.batch_sizes),
                    "cancelled": self.cancelled, "stopped": self.stopped}

    async def _submit(self, kind: str, payload: Any) -> Any:
        """Queue one request for the next batch; a cancelled caller (its HTTP client left)
        marks its token so the batch stops working for it at the next denoising step."""
        work = _Work(next(self._tokens), kind, payload)
        try:
            outcome = await self._batch(work)
        except asyncio.CancelledError:
            with self._lock:
                self._cancelled.add(work.token)
                self.cancelled += 1
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def _batch(self, items: list[_Work]) -> list[Any]:
        """One batch: run it off the loop; one answer (or exception) per item."""
        with self._lock:
            self.batch_sizes.append(len(items))
        log.debug("batch of %d", len(items))
        try:
            return await asyncio.to_thread(self._run_batch, items)
        finally:
            with self._lock:
                self._cancelled.difference_update(w.token for w in items)

    def _run_batch(self, items: list[_Work]) -> list[Any]:
        """Worker thread: renders and clips of one batch, each kind in one Renderer call."""
        answers: dict[int, Any] = {}

        def poll(token: int) -> Callable[[], bool]:
            def cancelled() -> bool:
                with self._lock:
                    return token in self._cancelled
            return cancelled

        renders = [w for w in items if w.kind == "render"]
        clips = [w for w in items if w.kind == "clip"]
        if renders:
            out = self.renderer.render_batch([w.payload for w in renders],
                                             [poll(w.token) for w in renders])
            answers.update({w.token: o for w, o in zip(renders, out, strict=True)})
        if clips:
            clip_out = self.renderer.render_clip_batch([w.payload for w in clips],
                                                       [poll(w.token) for w in clips])
            answers.update({w.token: o for w, o in zip(clips, clip_out, strict=True)})
        stopped = sum(isinstance(a, Cancelled) for a in answers.values())
        with self._lock:
            self.stopped += stopped
        return [answers[w.token] for w in items]


class RayBackend:
    """The app's Backend (see protocols.http.app.Backend), forwarding to the Generator pool.

    ``check`` looks seed and mask ids up in a local library (the same folders the replicas
    use), so a bad id is a 400 before anything travels. ``render``/``render_clip`` run on the
    app's generation threads and block there until the pool answers, checking every
    :data:`POLL_S` whether the request was cancelled (its client left): then the Ray request
    is cancelled too, and the replica stops working for it. A replica that dies under a
    request (or any other Ray failure) is :class:`ModelUnavailable`: 503 for the client, which
    retries (``riff run --generator`` does) while Serve starts a new replica.
    """

    def __init__(self, handle: DeploymentHandle, settings: ModelSettings) -> None:
        from engine.model.seed_images import SeedImageLibrary

        self.handle = handle
        self.model = settings.model
        self._library = SeedImageLibrary(tuple(Path(d) for d in settings.seed_image_dirs))

    def check(self, request: InferenceRequest) -> None:
        """Raise UnknownId for a missing seed/mask id. Thread: the event loop (cheap)."""
        if request.seed_image_id is not None:
            self._library.resolve(request.seed_image_id)
        if request.mask_image_id is not None:
            self._library.resolve(request.mask_image_id, "mask")

    def render(self, request: InferenceRequest, *, cancel: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> Rendered:
        """Renderer.render on a replica. Thread: a generation thread of the app."""
        result: Rendered = self._wait(self.handle.render.remote(request), cancel)
        _done(progress, request)
        return result

    def render_clip(self, job: GenerationJob, *, cancel: Callable[[], bool] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Clip:
        """Renderer.render_clip on a replica. Thread: a generation thread of the app.

        Per-step progress does not cross the pool (a batch steps for all its members):
        ``progress`` hears only the last step, when the clip is ready.
        """
        result: Clip = self._wait(self.handle.render_clip.remote(job), cancel)
        _done(progress, job.request)
        return result

    @staticmethod
    def _wait(response: Any, cancel: Callable[[], bool] | None) -> Any:
        while True:
            if cancel is not None and cancel():
                response.cancel()
                raise Cancelled("the client left; its request was cancelled in the pool")
            try:
                return response.result(timeout_s=POLL_S)
            except TimeoutError:
                continue
            except RiffError:  # the engine's own error, raised in the replica: as is
                raise
            except RayError as exc:  # the replica died, or Ray failed: the pool is at fault
                log.warning("generator pool failed a request: %s", type(exc).__name__)
                raise ModelUnavailable(
                    f"a generator replica failed ({type(exc).__name__}); Ray Serve replaces "
                    "it, retry the request") from exc


def _done(progress: Callable[[int, int], None] | None, request: InferenceRequest) -> None:
    if progress is not None:
        progress(request.num_inference_steps, request.num_inference_steps)


@serve.deployment(name=INGRESS, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    """The FastAPI app of ``riff serve``, built in the replica around :class:`RayBackend`.

    Thread: Ray Serve calls ``__serve_build_asgi_app__`` once after ``__init__``, on the
    replica's event loop; the app then serves there as under uvicorn.
    """

    def __init__(self, generator: DeploymentHandle, model: ModelSettings,
                 config: ServeConfig) -> None:
        _loopback_replica_server()
        self._generator = generator
        self._model = model
        self._config = config

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(RayBackend(self._generator, self._model), self._config)


def application(model: ModelSettings, pool: PoolSettings, config: ServeConfig) -> Any:
    """The bound Ray Serve application: Ingress -> Generator pool.

    The app's queue hands the pool up to its capacity at once (``config.concurrency`` is
    raised to ``pool.capacity`` when lower), so the pool, not the queue, decides batching.
    """
    if config.concurrency < pool.capacity:
        config = dataclasses.replace(config, concurrency=pool.capacity)
    generator = Generator.options(**pool.deployment_options()).bind(model)  # type: ignore[attr-defined]
    return Ingress.bind(generator, model, config)  # type: ignore[attr-defined]


def build_app(args: Mapping[str, Any]) -> Any:
    """Application builder for ``serve run``/``serve deploy``/KubeRay's ``serveConfigV2``.

    ``args`` (all optional): ``model``, ``device``, ``seed_image_dirs`` (list), ``phase``,
    ``replicas``, ``autoscale``, ``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests``, ``gpus_per_replica``, ``cpus_per_replica``,
    ``max_batch_size``, ``batch_wait_s``, ``queue``, ``max_width``; the bearer token comes
    from ``token`` or the ``RIFF_TOKEN`` environment variable (a Kubernetes secret).
    """
    known_model = {f.name for f in dataclasses.fields(ModelSettings)}
    known_pool = {f.name for f in dataclasses.fields(PoolSettings)}
    known_config = {"queue", "max_width", "token"}
    unknown = set(args) - known_model - known_pool - known_config
    if unknown:
        raise InvalidRequest(f"unknown args: {', '.join(sorted(unknown))}")
    model_args = {k: v for k, v in args.items() if k in known_model}
    if "seed_image_dirs" in model_args:
        model_args["seed_image_dirs"] = tuple(model_args["seed_image_dirs"])
    model = ModelSettings(**model_args)
    pool = PoolSettings(**{k: v for k, v in args.items() if k in known_pool})
    token = args.get("token") or os.environ.get("RIFF_TOKEN") or None
    config = ServeConfig(queue=int(args.get("queue", 4)), token=token,
                         max_width=int(args.get("max_width", 2048)))
    return application(model, pool, config)


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """Where the Ray cluster comes from; validated on construction.

    ``address`` None starts a private local Ray (loopback only, usage stats off, dashboard
    only with ``dashboard``); otherwise it is joined (``auto`` or ``ray://host:10001`` or
    ``host:6379``). ``num_cpus``/``num_gpus``/``object_store_mb`` size a local Ray (None:
    what the machine has, Ray's default store).
    """

    address: str | None = None
    dashboard: bool = False
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_mb: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and not self.address:
            raise InvalidRequest("the Ray address must not be empty")
        if self.num_cpus is not None and not 1 <= self.num_cpus <= 4096:
            raise InvalidRequest("num_cpus must be between 1 and 4096")
        if self.num_gpus is not None and not 0 <= self.num_gpus <= 1024:
            raise InvalidRequest("num_gpus must be between 0 and 1024")
        if self.object_store_mb is not None and not 75 <= self.object_store_mb <= 1 << 20:
            raise InvalidRequest("object_store_mb must be at least 75")


def start_ray(settings: RaySettings) -> None:
    """Start or join Ray. Thread: the driver's main thread, before :func:`serve_with_ray`.

    A local Ray: bound to 127.0.0.1, usage stats off, dashboard off unless asked, and this
    checkout on the workers' import path (so replicas run the same code as the driver).
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before ray.init; also inherited by workers
    if settings.address is not None:
        ray.init(address=settings.address, logging_level=logging.WARNING)
        return
    # ray.init turns _node_ip_address="127.0.0.1" into the machine's routable address unless
    # Ray is in its single-machine mode (the default on macOS and Windows): switch that mode on
    # for this process (the constant is read at call time) and for Ray's own processes (they
    # read the variable), so every Ray server listens on loopback.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ[LOOPBACK_ENV] = "1"
    ray_constants.ENABLE_RAY_CLUSTER = False
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, path) if p)
    kwargs: dict[str, Any] = {
        "include_dashboard": settings.dashboard,
        "_node_ip_address": "127.0.0.1",
        "logging_level": logging.WARNING,
        "num_cpus": settings.num_cpus,
        "num_gpus": settings.num_gpus,
    }
    if settings.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    if settings.object_store_mb is not None:
        kwargs["object_store_memory"] = settings.object_store_mb * 1024 * 1024
    ray.init(**kwargs)


def serve_with_ray(model: ModelSettings, pool: PoolSettings, config: ServeConfig, *,
                   host: str = "127.0.0.1", port: int = 3013, blocking: bool = False,
                   ) -> DeploymentHandle:
    """Deploy the application on the running Ray and route HTTP ``host:port`` to it.

    Thread: the driver's main thread, after :func:`start_ray`. Returns once every replica is
    up (the model loaded); ``blocking`` keeps the driver in ``serve.run`` as Ray's CLI does.
    """
    serve.start(http_options={"host": host, "port": port})
    started = time.perf_counter()
    handle: DeploymentHandle = serve.run(application(model, pool, config), name=APP_NAME,
                                         route_prefix="/", blocking=blocking)
    log.info("Ray Serve application up in %.1f s", time.perf_counter() - started)
    return handle


def generator_stats(app_name: str = APP_NAME) -> list[dict[str, Any]]:
    """:meth:`Generator.stats` of one Generator replica (whichever the router picks: with
    several replicas, call repeatedly and tell them apart by ``pid``). Thread: the driver,
    not an event loop."""
    handle = serve.get_deployment_handle(GENERATOR, app_name)
    return [handle.stats.remote().result(timeout_s=30)]


def shutdown() -> None:
    """Stop Serve and, when this process started or joined it, disconnect from Ray."""
    try:
        serve.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()


def seed_dirs(folders: Sequence[Path]) -> tuple[str, ...]:
    """Absolute folder paths, as strings the replicas can read."""
    return tuple(str(Path(f).resolve()) for f in folders)
