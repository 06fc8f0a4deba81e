"""Remote generation: a :class:`~engine.live.jobs.ClipGenerator` asking a ``riff serve`` over HTTP.

The daemon on stage keeps the audio and the control plane; a GPU box elsewhere runs
``riff serve`` and renders clips. This client sends each :class:`~engine.live.jobs.GenerationJob`
to ``POST /v1/clip`` and reads the NDJSON stream back: queued/heartbeat lines, one progress
line per denoising step, then the conformed clip as a float WAV. The daemon never imports
torch for this.

Failure policy (the scheduler repeats the current clip meanwhile, so audio never stops):

- connection errors, timeouts, 5xx and 503-queue-full are retried ``retries`` times with
  exponential backoff (503's Retry-After is honoured up to ``backoff_max_s``), then raised as
  :class:`RemoteUnavailable`, which the scheduler treats as transient;
- 4xx answers and in-band errors about the job itself raise the engine's own
  InvalidRequest / UnknownId / InvalidImage (not retried);
- cancelling the awaiting task closes the connection, and the server stops the job at its
  next denoising step.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import urllib.parse
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from engine.errors import InvalidImage, InvalidRequest, RiffError, UnknownId
from engine.live.jobs import Clip, GenerationJob, ProgressCallback
from engine.live.wire import job_to_json

log = logging.getLogger(__name__)

#: Error kinds the server reports that mean "this job is bad"; they are raised as such.
JOB_ERRORS: dict[str, type[RiffError]] = {
    "InvalidRequest": InvalidRequest, "UnknownId": UnknownId, "InvalidImage": InvalidImage,
}


class RemoteError(RiffError):
    """The server answered something this client cannot use (retried by the scheduler)."""


class RemoteUnavailable(RemoteError):
    """The server could not be reached or stayed busy after every retry."""


class _Retry(Exception):
    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


@dataclasses.dataclass(frozen=True)
class RemoteConfig:
    """Where the server is and how patient to be; validated on construction.

    ``read_timeout_s`` bounds the silence between two stream lines (the server sends a
    heartbeat while a job waits and a line per step while it runs), so a dead server is
    noticed within it even during a long generation.
    """

    url: str
    token: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"generator URL must be http://HOST:PORT, not {self.url!r}")
        if parts.query or parts.fragment:
            raise InvalidRequest(f"generator URL must not have a query: {self.url!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise InvalidRequest(f"generator URL has a bad port: {self.url!r}") from None
        object.__setattr__(self, "url", self.url.rstrip("/"))
        for name in ("connect_timeout_s", "read_timeout_s", "backoff_s", "backoff_max_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise InvalidRequest(f"{name} must be between 0 and 3600 s, not {value}")
        if not 0 <= self.retries <= 100:
            raise InvalidRequest(f"retries must be between 0 and 100, not {self.retries}")


class RemoteClipGenerator:
    """ClipGenerator over HTTP against ``riff serve``'s ``/v1/clip``.

    Thread: :meth:`generate` runs on the control plane's asyncio loop and never blocks it
    (httpx is async; the WAV decode is small). ``progress`` is called on that loop.
    """

    def __init__(self, config: RemoteConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        self._client = client or httpx.AsyncClient(headers=headers, timeout=timeout)
        self.attempts = 0
        self.failures = 0
        self.retried = 0
        #: Like the local worker client's: a remote server is never restarted from here.
        self.restarts = 0
        self.device = f"remote {config.url}"
        #: The server's model (from /health, once started): what a take's log names.
        self.model = "?"

    async def start(self) -> None:
        """Check that the server answers (raises RemoteUnavailable), as the local worker
        client's ``start`` waits for its model. Thread: the asyncio loop."""
        health = await self.health()
        self.model = str(health.get("model", "?"))
        self.device = f"remote {self.config.url} (model {self.model})"
        log.info("generating on %s", self.device)

    async def close(self) -> None:
        """Close the connection pool (the local worker client's ``close``)."""
        await self._client.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def health(self) -> dict[str, Any]:
        """The server's /health answer; raises RemoteUnavailable when unreachable."""
        try:
            resp = await self._client.get(self.config.url + "/health")
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise RemoteUnavailable(f"{self.config.url} is not answering: {exc}") from exc
        if not isinstance(data, dict):
            raise RemoteError(f"{self.config.url}/health answered {data!r}")
        return data

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        """Generate ``job`` on the server; see the module docstring for the failure policy."""
        body = job_to_json(job)
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            self.attempts += 1
            try:
                return await self._once(job, body, progress)
            except _Retry as exc:
                reason, after = str(exc), exc.after
            except httpx.TransportError as exc:
                reason, after = f"{type(exc).__name__}: {exc}".rstrip(": "), None
            self.failures += 1
            if attempt == cfg.retries:
                raise RemoteUnavailable(
                    f"{cfg.url}: job {job.job_id} failed after {attempt + 1} attempt(s): {reason}"
                )
            delay = min(cfg.backoff_max_s, after if after is not None else
                        cfg.backoff_s * 2**attempt)
            self.retried += 1
            log.warning("%s: job %d: %s; retrying in %.1f s", cfg.url, job.job_id, reason, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _once(self, job: GenerationJob, body: dict[str, Any],
                    progress: ProgressCallback | None) -> Clip:
        async with self._client.stream("POST", self.config.url + "/v1/clip", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise _answer_error(resp)
            async for line in resp.aiter_lines():
                if not line:
                    continue
                # A clip line carries the audio (tens of MB of base64 for long clips): parse
                # and decode it on a worker thread so the control loop never stalls on it.
                if len(line) > SMALL_LINE:
                    event = await asyncio.to_thread(_event, line)
                    if event.get("event") == "clip":
                        return await asyncio.to_thread(_clip, job, event)
                else:
                    event = _event(line)
                kind = event.get("event")
                if kind == "progress" and progress is not None:
                    progress(int(event["step"]), int(event["total"]))
                elif kind == "error":
                    error_kind = str(event.get("kind"))
                    message = str(event.get("message"))
                    if error_kind in JOB_ERRORS:
                        raise JOB_ERRORS[error_kind](message)
                    raise _Retry(f"server error {error_kind}: {message}")
                elif kind == "clip":
                    return _clip(job, event)
        raise _Retry("the stream ended before the clip arrived")


#: Stream lines longer than this (characters) are parsed off the event loop.
SMALL_LINE = 64 * 1024


def make_remote_generator(url: str, *, token: str | None = None, timeout_s: float = 30.0,
                          retries: int = 2) -> RemoteClipGenerator:
    """A ClipGenerator that renders on the ``riff serve`` at ``url`` (``riff run --generator``).

    ``token`` is sent as a bearer token; ``timeout_s`` bounds the silence on a connection;
    ``retries`` are the extra attempts after a network failure or a busy server.
    """
    return RemoteClipGenerator(RemoteConfig(url, token=token, read_timeout_s=timeout_s,
                                            retries=retries))


def _answer_error(resp: httpx.Response) -> Exception:
    """The exception for a non-200 answer: retry for 5xx, the engine's error for 4xx."""
    try:
        data = resp.json()
    except ValueError:
        data = {}
    detail = str(data.get("detail", resp.text[:200])) if isinstance(data, dict) else ""
    if resp.status_code == 503 or resp.status_code >= 500:
        after = resp.headers.get("retry-after", "")
        return _Retry(f"HTTP {resp.status_code}: {detail}",
                      float(after) if after.isdigit() else None)
    if resp.status_code == 401:
        return RemoteError(f"{resp.url}: the server needs a valid bearer token (--token)")
    kind = data.get("kind") if isinstance(data, dict) else None
    return JOB_ERRORS.get(str(kind), InvalidRequest)(f"server refused the job: {detail}")


def _event(line: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _Retry(f"bad stream line: {exc}") from None
    if not isinstance(event, dict):
        raise _Retry("bad stream line: not an object")
    return event


def _clip(job: GenerationJob, event: dict[str, Any]) -> Clip:
    try:
        wav = base64.b64decode(str(event["audio_wav"]), validate=True)
        audio, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    except (KeyError, ValueError, sf.LibsndfileError) as exc:
        raise _Retry(f"undecodable clip audio: {exc}") from None
    if rate != job.spec.sample_rate:
        raise RemoteError(f"clip came back at {rate} Hz, not {job.spec.sample_rate} Hz")
    try:
        return Clip(job.job_id, np.ascontiguousarray(audio), job.spec, job.request,
                    float(event.get("seconds") or 0.0))
    except InvalidRequest as exc:
        raise RemoteError(f"server sent a wrong clip: {exc}") from None
