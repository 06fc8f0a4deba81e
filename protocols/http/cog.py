"""Replicate's (Cog's) prediction protocol for the riffusion model: ``POST /predictions``
and ``GET /health-check`` (wired by ``app._add_cog_routes``).

Code written for Replicate's ``riffusion/riffusion`` (``{"input": {"prompt_a": ...,
"prompt_b": ..., "alpha": ..., "denoising": ..., "num_inference_steps": ...,
"seed_image_id": ...}}``) works against ``riff serve``: the answer has Cog's shape,
``{"status": "succeeded", "output": {"audio": <WAV data URI>, "spectrogram": <JPEG data
URI>}, ...}`` (Cog answers file outputs as data URIs when no upload URL is given). The
request goes through the same validation, limits and queue as ``/run_inference/``.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import TYPE_CHECKING, Any

from fastapi import Request

from engine.errors import InvalidRequest
from engine.model.compat import replicate_request
from protocols.http.media import audio_bytes, data_uri, jpeg_bytes

if TYPE_CHECKING:
    from protocols.http.app import _Service


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


async def predict(service: _Service, request: Request) -> dict[str, Any]:
    """One synchronous prediction. Thread: the event loop (the model runs on the queue)."""
    from protocols.http.app import _normalized

    body = await service.read_request(request)
    if not isinstance(body, dict) or not isinstance(body.get("input", {}), dict):
        raise InvalidRequest("the body must be {\"input\": {...}}")
    fields = body.get("input", {})
    req = service.validated(replicate_request(fields).to_dict())
    started, clock = _now(), time.perf_counter()
    rendered = await service.render(req, request)
    wav, jpeg = await asyncio.gather(
        asyncio.to_thread(audio_bytes, _normalized(rendered.audio), rendered.sample_rate,
                          "wav"),
        asyncio.to_thread(jpeg_bytes, rendered.image))
    return {
        "id": body.get("id"), "input": fields, "status": "succeeded", "error": None,
        "output": {"audio": data_uri("audio/wav", wav),
                   "spectrogram": data_uri("image/jpeg", jpeg)},
        "logs": "", "started_at": started, "completed_at": _now(),
        "metrics": {"predict_time": time.perf_counter() - clock},
    }
