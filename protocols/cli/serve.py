"""``riff serve``: the HTTP inference server (Riffusion-compatible, plus the engine's API)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

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
    p.set_defaults(func=run)


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


def _stopped(signum: int, frame: object) -> None:
    """Main thread, after uvicorn's graceful shutdown: nothing left to do."""
    log.debug("signal %d after shutdown", signum)
