"""The handler of ``POST /v1/audio_to_audio`` (wired by ``app._add_audio_routes``).

Order of checks, cheapest first, so a bad upload costs no model time: body size (413),
content type (415), body shape (400), request fields and this server's step limit (422),
the mask id (400), then the audio's header (duration and rate, 422) and its samples
(unreadable: 422), all before the job is queued.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response

from engine.errors import InvalidRequest
from engine.takes.audio_to_audio import (
    AudioToAudioRequest,
    read_input,
    windows_seconds,
    with_detected_tempo,
)
from protocols.http.guard import HttpProblem, read_body, until_disconnected
from protocols.http.media import audio_bytes, png_bytes
from protocols.http.upload import split_upload

if TYPE_CHECKING:
    from protocols.http.app import _Service


def _validated(service: _Service, fields: dict[str, Any]) -> AudioToAudioRequest:
    req = AudioToAudioRequest.from_dict(fields)
    limit = service.config.max_steps
    if req.num_inference_steps > limit:
        raise InvalidRequest(f"num_inference_steps must be at most {limit} on this server, "
                             f"not {req.num_inference_steps}")
    service.backend.check(req.base_request())  # the mask id, if any
    return req


async def audio_to_audio_answer(service: _Service, request: Request) -> Any:
    """Read, validate, queue and answer one audio-to-audio request. Thread: the event loop."""
    run = getattr(service.backend, "audio_to_audio", None)
    if run is None:
        raise HttpProblem(501, "this server's backend does not do audio to audio")
    config = service.config
    body = await read_body(request, config.max_upload_bytes)
    raw, fields, want_image = split_upload(request.headers.get("content-type", ""), body)
    detect = fields.get("bpm") == "auto"
    req = _validated(service, {**fields, "bpm": None} if detect else fields)
    audio, rate = await asyncio.to_thread(read_input, io.BytesIO(raw),
                                          max_seconds=config.max_audio_seconds,
                                          max_rate=config.max_audio_rate)
    if detect:
        req = await asyncio.to_thread(with_detected_tempo, req, audio, rate)
    ticket = service.queue().enqueue(
        lambda cancel, progress: run(req, audio, rate, cancel=cancel, progress=progress))
    result = await until_disconnected(request, ticket)
    wav = await asyncio.to_thread(audio_bytes, result.audio, result.sample_rate, "wav")
    if "audio/wav" in request.headers.get("accept", ""):
        return Response(wav, media_type="audio/wav")
    answer: dict[str, Any] = {
        "audio_wav": base64.b64encode(wav).decode("ascii"),
        "sample_rate": result.sample_rate, "channels": int(result.audio.shape[0]),
        "num_samples": int(result.audio.shape[1]),
        "duration_s": result.audio.shape[1] / result.sample_rate,
        "seconds": float(result.seconds), "windows_s": windows_seconds(result.windows),
        "request": req.to_dict(),
    }
    if want_image:
        png = await asyncio.to_thread(lambda: png_bytes(result.spectrogram()))
        answer["image_png"] = base64.b64encode(png).decode("ascii")
    return answer
