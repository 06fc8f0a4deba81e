"""``riff serve``: the HTTP inference server (Riffusion-compatible, plus the engine's API)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocols.http.app import ServeConfig

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``riff serve``."""
    p = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP (Riffusion's /run_inference/ and the engine's API)",
        description=(
            "Serve the model over HTTP. POST /run_inference/ speaks Riffusion's API, so the "
            "riffusion web app can use this server; /v1/render answers lossless PNG/WAV; "
            "/v1/clip serves remote engines (riff run --generator http://HOST:PORT). "
            "GET /health, GET /metrics (Prometheus), /docs (OpenAPI)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=3013, help="TCP port (default 3013)")
    p.add_argument("--model", default="riffusion/riffusion-model-v1",
                   help="model id or folder; 'tiny' for the offline test model")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--seed-images", type=Path, action="append", default=[], metavar="DIR",
                   help="extra folder of seed/mask images (searched before the built-in one)")
    p.add_argument("--phase", default="fast", choices=("riffusion", "fast", "quality"),
                   help="phase reconstruction for /run_inference/ and /v1/render")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (default: $RIFF_TOKEN, if set)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser requests from ORIGIN (repeatable; '*' for any). "
                        "Off by default")
    p.add_argument("--queue", type=int, default=4,
                   help="requests that may wait for the model; more get 503 (default 4)")
    p.add_argument("--max-audio-seconds", type=float, default=120.0,
                   help="longest upload /v1/audio_to_audio accepts (default 120)")
    p.add_argument("--max-width", type=int, default=2048,
                   help="largest image width in pixels a request may ask for (default 2048)")
    _register_ray(p)
    p.set_defaults(func=run)


def _register_ray(p: argparse.ArgumentParser) -> None:
    """The ``--ray`` options (they need the optional extra ``riffusion-engine[ray]``)."""
    g = p.add_argument_group(
        "Ray Serve (pip install 'riffusion-engine[ray]')",
        "Serve the same API from a pool of generator replicas (one model each), batching "
        "concurrent requests. A local Ray listens on 127.0.0.1 only, usage stats off.")
    g.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve instead of one in-process model")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (auto, HOST:6379, ray://HOST:10001) instead "
                        "of starting a local one")
    g.add_argument("--ray-dashboard", action="store_true",
                   help="start the local Ray's dashboard (on 127.0.0.1:8265); off by default")
    g.add_argument("--ray-replicas", type=int, default=1, metavar="N",
                   help="generator replicas (default 1)")
    g.add_argument("--ray-autoscale", default=None, metavar="MIN:MAX",
                   help="autoscale between MIN and MAX replicas instead of --ray-replicas")
    g.add_argument("--ray-target-ongoing", type=float, default=4.0, metavar="N",
                   help="autoscaling target: requests in hand per replica (default 4)")
    g.add_argument("--ray-gpus-per-replica", type=float, default=None, metavar="G",
                   help="GPUs each replica reserves (default 1 when the cluster has GPUs, "
                        "else 0; 0.5 puts two replicas on one GPU)")
    g.add_argument("--ray-cpus-per-replica", type=float, default=1.0, metavar="C",
                   help="CPUs each replica reserves (default 1)")
    g.add_argument("--ray-batch-size", type=int, default=4, metavar="N",
                   help="most concurrent requests batched in one generation (default 4)")
    g.add_argument("--ray-batch-wait-ms", type=float, default=50.0, metavar="MS",
                   help="how long a batch waits for more requests after its first "
                        "(default 50)")
    g.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                   help="CPUs of a local Ray (default: all of this machine's)")
    g.add_argument("--ray-object-store-mb", type=int, default=None, metavar="MB",
                   help="object store of a local Ray (default: Ray's)")


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until SIGINT/SIGTERM."""
    import uvicorn

    from engine.errors import InvalidRequest
    from engine.takes.render import Renderer
    from protocols.http.app import ServeConfig, create_app
    from protocols.http.guard import bind

    if not 0 <= args.port <= 65535:
        raise InvalidRequest(f"--port must be between 0 and 65535, not {args.port}")
    token = args.token if args.token is not None else os.environ.get("RIFF_TOKEN") or None
    config = ServeConfig(queue=args.queue, token=token, cors_origins=tuple(args.cors_origin),
                         max_width=args.max_width, max_audio_seconds=args.max_audio_seconds)
    for folder in args.seed_images:
        if not folder.is_dir():
            raise InvalidRequest(f"--seed-images {folder} is not a folder")
    if args.ray:
        return _run_ray(args, config)
    renderer = Renderer.load(args.model, device=args.device, seed_image_dirs=args.seed_images,
                             phase=args.phase)
    app = create_app(renderer, config)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"riff serve: {args.model} on http://{host}:{port}"
          f"{' (token required)' if token else ''}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler that was installed before it: make that a no-op so a requested stop exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    server.run(sockets=[sock])
    print("riff serve: stopped", flush=True)
    return 0


def _run_ray(args: argparse.Namespace, config: ServeConfig) -> int:
    """``riff serve --ray``: start or join Ray, deploy, serve until SIGINT/SIGTERM.

    Thread: the main thread; the HTTP server is Ray Serve's proxy, the models live in the
    Generator replicas (protocols.http.ray_serve).
    """
    import threading

    from engine.errors import ModelUnavailable

    try:
        from protocols.http import ray_serve
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        raise ModelUnavailable(RAY_INSTALL_HINT) from None
    model = ray_serve.ModelSettings(model=args.model, device=args.device,
                                    seed_image_dirs=ray_serve.seed_dirs(args.seed_images),
                                    phase=args.phase)
    ray_settings = ray_serve.RaySettings(
        address=args.ray_address, dashboard=args.ray_dashboard, num_cpus=args.ray_cpus,
        object_store_mb=args.ray_object_store_mb)
    pool_args = _pool_args(args)
    ray_serve.PoolSettings(**pool_args, gpus_per_replica=args.ray_gpus_per_replica or 0)
    port = args.port or _free_port(args.host)
    ray_serve.start_ray(ray_settings)
    # After ray.init, which installs its own SIGTERM handler (sys.exit): a stop request now
    # ends the wait below, and Serve and Ray are shut down in order.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        gpus = args.ray_gpus_per_replica
        if gpus is None:
            import ray

            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        pool = ray_serve.PoolSettings(**pool_args, gpus_per_replica=gpus)
        ray_serve.serve_with_ray(model, pool, config, host=args.host, port=port)
        where = args.ray_address or "local Ray on 127.0.0.1"
        print(f"riff serve: {args.model} on http://{args.host}:{port} via Ray Serve "
              f"({where}; {pool.peak_replicas} replica(s) x batch {pool.max_batch_size}, "
              f"{gpus:g} GPU each){' (token required)' if config.token else ''}", flush=True)
        stop.wait()
    finally:
        ray_serve.shutdown()
    print("riff serve: stopped", flush=True)
    return 0


#: What ``riff serve --ray`` says when Ray Serve is not installed.
RAY_INSTALL_HINT = "--ray needs Ray Serve: pip install 'riffusion-engine[ray]'"


def _pool_args(args: argparse.Namespace) -> dict[str, Any]:
    """PoolSettings fields from the --ray-* options (validated by PoolSettings)."""
    from engine.errors import InvalidRequest

    pool: dict[str, Any] = {
        "replicas": args.ray_replicas, "target_ongoing_requests": args.ray_target_ongoing,
        "cpus_per_replica": args.ray_cpus_per_replica, "max_batch_size": args.ray_batch_size,
        "batch_wait_s": args.ray_batch_wait_ms / 1000.0,
    }
    if args.ray_autoscale is not None:
        low, sep, high = args.ray_autoscale.partition(":")
        if not sep or not low.isdigit() or not high.isdigit():
            raise InvalidRequest(f"--ray-autoscale must be MIN:MAX, not {args.ray_autoscale!r}")
        pool.update(autoscale=True, min_replicas=int(low), max_replicas=int(high))
    return pool


def _free_port(host: str) -> int:
    """A free TCP port on ``host`` for Ray Serve's proxy (which binds it itself)."""
    from protocols.http.guard import bind

    sock = bind(host, 0)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def _stopped(signum: int, frame: object) -> None:
    """Main thread, after uvicorn's graceful shutdown: nothing left to do."""
    log.debug("signal %d after shutdown", signum)
