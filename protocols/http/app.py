"""The HTTP API of ``riff serve``: Riffusion-compatible inference plus the engine's own endpoints.

Routes (OpenAPI schema at ``/openapi.json``, browsable at ``/docs``):

- ``POST /run_inference/``: Riffusion's ``InferenceInput`` in, its ``InferenceOutput`` out
  (JPEG spectrogram and MP3 audio as data URIs, ``duration_s``), so the riffusion web app
  can use this server unchanged.
- ``POST /v1/render``: the same request with the engine's fields; JSON with a base64 PNG
  (EXIF parameters kept) and a base64 float WAV, or the raw bytes with ``Accept: audio/wav``
  or ``Accept: image/png``.
- ``POST /v1/clip``: a :class:`~engine.live.jobs.GenerationJob` (request + clip spec); streams
  NDJSON events (queued, progress, then the conformed clip as a base64 float WAV, or an
  error). This is what ``riff run --generator http://...`` talks to.
- ``POST /v1/audio_to_audio``: the user's own audio (multipart upload or base64 JSON, see
  :mod:`protocols.http.upload`) transformed window by window
  (:mod:`engine.takes.audio_to_audio`); JSON with a float WAV of the input's length and rate
  (and the spectrogram PNG on request), or the WAV itself with ``Accept: audio/wav``.
- ``POST /predictions``, ``GET /health-check``: Replicate's (Cog's) protocol for its
  riffusion model (``prompt_a``, ``prompt_b``, ``alpha``, ...; see
  :mod:`protocols.http.cog`).
- ``GET /health``, ``GET /metrics`` (Prometheus text).

Every body is read with a size limit (413), parsed as JSON (400) and validated by the
engine's own request classes (422 naming the field); seed and mask ids are plain names
looked up in the seed-image library, never paths. Requests reach the model one at a time, in
order, through a bounded queue (503 with Retry-After when full). The model runs on a
dedicated generation thread; the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from engine import __version__
from engine.errors import (
    Cancelled,
    InvalidAudio,
    InvalidImage,
    InvalidRequest,
    ModelUnavailable,
    RiffError,
    UnknownId,
)
from engine.live import wire
from engine.live.jobs import Clip, GenerationJob
from engine.model.request import InferenceRequest
from protocols.http import models
from protocols.http.guard import (
    Authorize,
    ClientGone,
    CountRequests,
    HttpProblem,
    read_json,
    until_disconnected,
)
from protocols.http.media import audio_bytes, data_uri, jpeg_bytes, png_bytes
from protocols.http.metrics import Metrics
from protocols.http.queue import GenerationQueue, QueueFull

log = logging.getLogger(__name__)


class Backend(Protocol):
    """The model side (engine.takes.render.Renderer, or anything shaped like it)."""

    model: str

    def check(self, request: InferenceRequest) -> None:
        """Raise UnknownId for missing seed/mask ids. Thread: the event loop; must be cheap."""
        ...

    def render(self, request: InferenceRequest, *, cancel: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> Any:
        """Image + audio (engine.takes.render.Rendered). Thread: the generation thread."""
        ...

    def render_clip(self, job: GenerationJob, *, cancel: Callable[[], bool] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Clip:
        """A conformed clip. Thread: the generation thread."""
        ...


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Limits and access control of one server; validated on construction."""

    queue: int = 4
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024
    max_width: int = 2048
    max_steps: int = 150
    max_clip_seconds: float = 120.0
    #: Requests handed to the backend at once: 1 for one local model; the pool's capacity
    #: for a backend that forwards to many generators (riff serve --ray).
    concurrency: int = 1
    max_upload_bytes: int = 32 * 1024 * 1024
    max_audio_seconds: float = 120.0
    max_audio_rate: int = 192000

    def __post_init__(self) -> None:
        if not 1 <= self.queue <= 1000:
            raise InvalidRequest(f"queue must be between 1 and 1000, not {self.queue}")
        if self.token is not None and len(self.token) < 8:
            raise InvalidRequest("the bearer token must be at least 8 characters")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise InvalidRequest("max_body_bytes must be between 1 KiB and 16 MiB")
        if not 8 <= self.max_width <= 8192:
            raise InvalidRequest("max_width must be between 8 and 8192 pixels")
        if not 1 <= self.max_steps <= 150:
            raise InvalidRequest("max_steps must be between 1 and 150")
        if not 0 < self.max_clip_seconds <= 3600:
            raise InvalidRequest("max_clip_seconds must be between 0 and 3600")
        if not 1 <= self.concurrency <= 1000:
            raise InvalidRequest(f"concurrency must be between 1 and 1000, not {self.concurrency}")
        if not 1024 <= self.max_upload_bytes <= 1024**3:
            raise InvalidRequest("max_upload_bytes must be between 1 KiB and 1 GiB")
        if not 0 < self.max_audio_seconds <= 3600:
            raise InvalidRequest("max_audio_seconds must be between 0 and 3600")
        if not 8000 <= self.max_audio_rate <= 384000:
            raise InvalidRequest("max_audio_rate must be between 8000 and 384000 Hz")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))


#: Seconds between heartbeat lines on a /v1/clip stream whose job is still waiting.
HEARTBEAT_S = 5.0

#: Engine errors -> HTTP status. Unknown ids are the client's mistake, as in Riffusion (400).
STATUS = {InvalidRequest: 422, InvalidImage: 422, InvalidAudio: 422, UnknownId: 400,
          ModelUnavailable: 503}


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception raised while serving a request."""
    for cls, status in STATUS.items():
        if isinstance(exc, cls):
            return status
    return 500


def _body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": models.Problem, "description": text}
    for code, text in [
        (400, "malformed JSON or unknown seed/mask id"), (401, "missing or wrong bearer token"),
        (413, "body too large"), (422, "invalid field"), (503, "queue full (see Retry-After)"),
    ]
}


def create_app(backend: Backend, config: ServeConfig | None = None) -> FastAPI:
    """Build the ASGI app serving ``backend`` under ``config``."""
    service = _Service(backend, config or ServeConfig(), Metrics())
    app = FastAPI(
        title="riffusion-engine",
        version=__version__,
        description="Riffusion-compatible inference (/run_inference/) and the engine's API.",
        lifespan=_lifespan(service),
    )
    _add_middleware(app, service)
    _add_error_handlers(app, service)
    auth = [Depends(Authorize(service.config.token))]
    _add_render_routes(app, service, auth)
    _add_clip_route(app, service, auth)
    _add_status_routes(app, service, auth)
    _add_audio_routes(app, service, auth)
    _add_cog_routes(app, service, auth)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    app.state.metrics = service.metrics
    return app


@dataclasses.dataclass
class _Service:
    """What the route handlers of one app share: the backend, its limits, the counters and
    the generation queue (made on startup by :func:`_lifespan`). Thread: the event loop."""

    backend: Backend
    config: ServeConfig
    metrics: Metrics
    state: dict[str, GenerationQueue] = dataclasses.field(default_factory=dict)

    def queue(self) -> GenerationQueue:
        """The running generation queue (KeyError before startup)."""
        return self.state["queue"]

    def depth(self) -> int | None:
        """Requests waiting or running; ``None`` before startup."""
        queue = self.state.get("queue")
        return queue.depth if queue is not None else None

    def on_done(self, seconds: float, error: BaseException | None) -> None:
        """Event loop thread, after each generation: count it (must not block)."""
        if error is None:
            self.metrics.generation(seconds)
        elif isinstance(error, Cancelled):  # its client left: counted, not an error
            self.metrics.error(type(error).__name__)
            log.info("generation cancelled after %.2f s: its client left", seconds)
        else:
            self.metrics.error(type(error).__name__)
            if status_of(error) >= 500:
                log.error("generation failed: %s: %s", type(error).__name__, error)

    async def read_request(self, request: Request) -> Any:
        """The body as JSON, within this server's body size limit (413, 400)."""
        return await read_json(request, self.config.max_body_bytes)

    def validated(self, data: Any) -> InferenceRequest:
        """An InferenceRequest from JSON, within this server's width and step limits, with
        seed and mask ids the backend knows (422 or 400 otherwise)."""
        req = wire.parse_request(data)
        if req.width is not None and req.width > self.config.max_width:
            raise InvalidRequest(f"width must be at most {self.config.max_width} pixels on this "
                                 f"server, not {req.width}")
        if req.num_inference_steps > self.config.max_steps:
            raise InvalidRequest(f"num_inference_steps must be at most {self.config.max_steps} "
                                 f"on this server, not {req.num_inference_steps}")
        self.backend.check(req)
        return req

    async def render(self, req: InferenceRequest, request: Request) -> Any:
        """``req`` rendered by the backend on the generation thread, through the queue.

        A client that goes away costs nothing more: a waiting request is skipped, a running
        one is cancelled at its next denoising step (:func:`until_disconnected`).
        """
        ticket = self.queue().enqueue(
            lambda cancel, progress: self.backend.render(req, cancel=cancel, progress=progress))
        return await until_disconnected(request, ticket)


def _lifespan(service: _Service) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the generation queue (and its thread) runs while the app serves."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue = GenerationQueue(service.config.queue, service.on_done,
                                workers=service.config.concurrency)
        queue.start()
        service.state["queue"] = queue
        try:
            yield
        finally:
            await queue.close()

    return lifespan


def _add_middleware(app: FastAPI, service: _Service) -> None:
    """Request counting, and CORS when origins are configured."""
    app.add_middleware(CountRequests, metrics=service.metrics, depth=service.depth)
    if service.config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(service.config.cors_origins),
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
        )


def _add_error_handlers(app: FastAPI, service: _Service) -> None:
    """Guard problems, engine errors and a full queue become JSON error answers."""

    @app.exception_handler(HttpProblem)
    async def _problem(request: Request, exc: HttpProblem) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)

    @app.exception_handler(RiffError)
    async def _riff_error(request: Request, exc: RiffError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "kind": type(exc).__name__}, status_of(exc))

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> JSONResponse:
        # Nobody reads this answer; 499 (nginx's "client closed request") marks it in the
        # request log and the metrics.
        return JSONResponse({"detail": str(exc)}, 499)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        metrics = service.metrics
        metrics.rejected_full += 1
        mean = metrics.generation_sum / metrics.generation_count if metrics.generation_count else 1
        retry = max(1, math.ceil(mean * (service.queue().depth + 1)))
        return JSONResponse({"detail": f"the generation queue is full ({exc})"}, 503,
                            headers={"Retry-After": str(retry)})


def _add_render_routes(app: FastAPI, service: _Service, auth: list[Any]) -> None:
    """``POST /run_inference/`` (Riffusion's API) and ``POST /v1/render`` (lossless)."""

    @app.post("/run_inference/", response_model=models.InferenceOutput, responses=_ERRORS,
              openapi_extra=_body("InferenceInput"), dependencies=auth)
    async def run_inference(request: Request) -> dict[str, Any]:
        """Riffusion's inference endpoint: JPEG spectrogram and MP3 audio as data URIs."""
        req = service.validated(await service.read_request(request))
        rendered = await service.render(req, request)
        image, audio = await asyncio.gather(
            asyncio.to_thread(jpeg_bytes, rendered.image),
            asyncio.to_thread(audio_bytes, _normalized(rendered.audio), rendered.sample_rate,
                              "mp3"),
        )
        return {"image": data_uri("image/jpeg", image), "audio": data_uri("audio/mpeg", audio),
                "duration_s": float(rendered.duration_s)}

    @app.post("/v1/render", response_model=models.RenderOutput, responses={
        **_ERRORS, 200: {"content": {"audio/wav": {}, "image/png": {}}}},
        openapi_extra=_body("InferenceInput"), dependencies=auth)
    async def render(request: Request) -> Any:
        """Image and audio in lossless formats; raw bytes when Accept asks for them."""
        req = service.validated(await service.read_request(request))
        rendered = await service.render(req, request)
        accept = request.headers.get("accept", "")
        if "audio/wav" in accept:
            wav = await asyncio.to_thread(audio_bytes, rendered.audio, rendered.sample_rate,
                                          "wav")
            return Response(wav, media_type="audio/wav")
        if "image/png" in accept:
            return Response(await asyncio.to_thread(png_bytes, rendered.image),
                            media_type="image/png")
        return await _render_output(req, rendered)


async def _render_output(req: InferenceRequest, rendered: Any) -> dict[str, Any]:
    """The JSON body of ``/v1/render``: base64 PNG and float WAV, encoded off the loop."""
    png, wav = await asyncio.gather(
        asyncio.to_thread(png_bytes, rendered.image),
        asyncio.to_thread(audio_bytes, rendered.audio, rendered.sample_rate, "wav"),
    )
    return {
        "image_png": base64.b64encode(png).decode("ascii"),
        "audio_wav": base64.b64encode(wav).decode("ascii"),
        "sample_rate": rendered.sample_rate, "channels": int(rendered.audio.shape[0]),
        "num_samples": int(rendered.audio.shape[-1]),
        "duration_s": float(rendered.duration_s), "seconds": float(rendered.seconds),
        "request": req.to_dict(),
    }


def _add_clip_route(app: FastAPI, service: _Service, auth: list[Any]) -> None:
    """``POST /v1/clip``: what a remote ``riff run --generator URL`` talks to."""

    @app.post("/v1/clip", responses={**_ERRORS, 200: {
        "description": "NDJSON stream of ClipEvent lines",
        "content": {"application/x-ndjson": {"schema": {
            "$ref": "#/components/schemas/ClipEvent"}}}}},
        openapi_extra=_body("ClipJobInput"), dependencies=auth)
    async def clip(request: Request) -> StreamingResponse:
        """Generate a clip for a remote engine: progress events, then the clip's audio."""
        job = parse_job(await service.read_request(request), service.config)
        service.validated(job.request.to_dict())  # this server's limits and the seed ids
        events: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        ticket = service.queue().enqueue(
            lambda cancel, progress: service.backend.render_clip(job, cancel=cancel,
                                                                 progress=progress),
            progress=lambda step, total: events.put_nowait((step, total)),
        )
        ticket.future.add_done_callback(lambda _: events.put_nowait(None))
        position = service.queue().depth
        return StreamingResponse(_clip_events(ticket, events, job, position),
                                 media_type="application/x-ndjson")


def _add_status_routes(app: FastAPI, service: _Service, auth: list[Any]) -> None:
    """``GET /health`` (open) and ``GET /metrics`` (Prometheus text, behind the token)."""

    @app.get("/health", response_model=models.Health)
    async def health() -> dict[str, Any]:
        """Liveness and queue state (no token needed)."""
        q = service.queue()
        return {"status": "ok", "model": service.backend.model, "queue_depth": q.depth,
                "queue_limit": q.limit, "busy": q.busy}

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=auth)
    async def prometheus() -> PlainTextResponse:
        """Counters in Prometheus text format."""
        q = service.queue()
        text = service.metrics.render(queue_depth=q.depth, busy=q.busy, queue_limit=q.limit)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _add_audio_routes(app: FastAPI, service: _Service, auth: list[Any]) -> None:
    """``POST /v1/audio_to_audio``: riff on an uploaded file, within this server's limits
    (upload size 413, duration and sample rate 422, steps 422; unreadable audio 422)."""
    from protocols.http.audio_routes import audio_to_audio_answer

    @app.post("/v1/audio_to_audio", responses={
        **_ERRORS, 415: {"model": models.Problem, "description": "not multipart or JSON"},
        200: {"content": {"audio/wav": {}}}}, dependencies=auth)
    async def audio_to_audio(request: Request) -> Any:
        """The uploaded audio transformed: same length, rate and channels."""
        return await audio_to_audio_answer(service, request)


def _add_cog_routes(app: FastAPI, service: _Service, auth: list[Any]) -> None:
    """Replicate's (Cog's) ``POST /predictions`` and ``GET /health-check``."""
    from protocols.http.cog import predict

    @app.post("/predictions", responses=_ERRORS, dependencies=auth)
    async def predictions(request: Request) -> dict[str, Any]:
        """Replicate's riffusion: ``{"input": {prompt_a, prompt_b, alpha, ...}}`` in,
        ``{"status": "succeeded", "output": {"audio", "spectrogram"}}`` (data URIs) out."""
        return await predict(service, request)

    @app.get("/health-check")
    async def health_check() -> dict[str, Any]:
        """Cog's readiness probe (no token needed)."""
        busy = service.queue().busy
        return {"status": "BUSY" if busy else "READY", "setup": {"status": "succeeded"}}


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: the generated schema plus the request/event models that routes read
    from the raw body (so FastAPI does not see them), built once and cached."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (models.InferenceInput, models.ClipJobInput, models.ClipEvent):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def parse_job(data: Any, config: ServeConfig) -> GenerationJob:
    """A GenerationJob from the /v1/clip body, within this server's clip length limit."""
    job = wire.parse_job(data)
    if job.spec.seconds > config.max_clip_seconds:
        raise InvalidRequest(f"spec is {job.spec.seconds:.1f} s long; this server renders at "
                             f"most {config.max_clip_seconds:g} s")
    return job


async def _clip_events(ticket: Any, events: asyncio.Queue[tuple[int, int] | None],
                       job: GenerationJob, position: int) -> AsyncIterator[bytes]:
    """The /v1/clip stream. Runs on the loop; a client that goes away cancels the job."""
    try:
        yield _line({"event": "queued", "job_id": job.job_id, "step": position})
        while True:
            try:
                item = await asyncio.wait_for(events.get(), HEARTBEAT_S)
            except asyncio.TimeoutError:  # still waiting in the queue: tell the client
                yield _line({"event": "queued", "job_id": job.job_id})
                continue
            if item is None:
                break
            yield _line({"event": "progress", "step": item[0], "total": item[1]})
        try:
            clip: Clip = ticket.future.result()
        except asyncio.CancelledError:
            return
        except Exception as exc:  # reported in-band: the 200 status is already sent
            yield _line({"event": "error", "kind": type(exc).__name__, "message": str(exc)})
            return
        wav = await asyncio.to_thread(audio_bytes, clip.audio.T, clip.spec.sample_rate, "wav")
        yield _line({"event": "clip", "job_id": clip.job_id, "seconds": clip.seconds,
                     "audio_wav": base64.b64encode(wav).decode("ascii")})
    finally:
        if not ticket.future.done():
            ticket.cancel()


def _normalized(audio: Any, peak: float = 0.891) -> Any:
    """``audio`` scaled to a -1 dBFS peak, as Riffusion normalises what it serves."""
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio * (peak / top) if top > 0 and np.isfinite(top) else audio


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()
