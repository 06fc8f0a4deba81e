"""OpenAPI descriptions of the HTTP API's bodies.

These pydantic models document the wire format (FastAPI publishes them in ``/openapi.json``);
they do not validate requests. Validation is :meth:`engine.model.request.InferenceRequest.from_dict`
and the engine's own dataclasses, the one source of truth shared with the CLI and OSC, so the
HTTP API cannot drift from the rest of the engine.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from engine.model.request import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, PLAIN_ID

PlainId = Annotated[str, Field(pattern=PLAIN_ID.pattern, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptInput(_Strict):
    """One end of the interpolation (Riffusion's PromptInput)."""

    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    denoising: Annotated[float, Field(ge=0.0, le=1.0)] = 0.75
    guidance: Annotated[float, Field(ge=0.0, le=MAX_GUIDANCE)] = 7.0


class InferenceInput(_Strict):
    """Riffusion's InferenceInput plus the engine's optional fields (width, scheduler,
    seamless)."""

    start: PromptInput
    end: PromptInput | None = None
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    num_inference_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 50
    seed_image_id: PlainId | None = "og_beat"
    mask_image_id: PlainId | None = None
    width: Annotated[int, Field(ge=8, le=8192, multiple_of=8)] | None = Field(
        None, description="image width in pixels; the server may set a lower limit"
    )
    scheduler: PlainId | None = None
    seamless: StrictBool = Field(
        False, description="pad time circularly so the clip loops in content (not Riffusion-exact)"
    )


class InferenceOutput(BaseModel):
    """Riffusion's InferenceOutput."""

    image: str = Field(description="data:image/jpeg;base64,... spectrogram image")
    audio: str = Field(description="data:audio/mpeg;base64,... MP3 audio")
    duration_s: float = Field(description="audio length in seconds")


class RenderOutput(BaseModel):
    """The native render answer (JSON); ask with Accept audio/wav or image/png for raw bytes."""

    image_png: str = Field(description="base64 PNG spectrogram with its EXIF parameters")
    audio_wav: str = Field(description="base64 WAV, 32-bit float")
    sample_rate: int
    channels: int
    num_samples: int
    duration_s: float
    seconds: float = Field(description="time spent generating and reconstructing")
    request: dict[str, object] = Field(description="the request as validated, defaults filled")


class ClipSpecInput(_Strict):
    """engine.live.jobs.ClipSpec: the clip's musical length and exact length in samples."""

    tempo: Annotated[float, Field(ge=1.0, le=1000.0)]
    bars: Annotated[int, Field(ge=1, le=1024)]
    beats_per_bar: Annotated[int, Field(ge=1, le=64)]
    sample_rate: Annotated[int, Field(ge=1000, le=768000)]
    num_samples: Annotated[int, Field(ge=1)]


class ClipJobInput(_Strict):
    """engine.live.jobs.GenerationJob over the wire (``created`` stays on the client)."""

    job_id: Annotated[int, Field(ge=0)]
    request: InferenceInput
    spec: ClipSpecInput
    start_bar: int = 0


class ClipEvent(BaseModel):
    """One NDJSON line of the /v1/clip stream."""

    event: Literal["queued", "progress", "clip", "error"]
    step: int | None = None
    total: int | None = None
    job_id: int | None = None
    seconds: float | None = None
    audio_wav: str | None = Field(None, description="base64 WAV (float32) of the clip")
    kind: str | None = Field(None, description="error class name")
    message: str | None = None


class Health(BaseModel):
    """GET /health."""

    status: Literal["ok"]
    model: str
    queue_depth: int
    queue_limit: int
    busy: int


class Problem(BaseModel):
    """An error answer; ``kind`` names the engine's error class where there is one."""

    detail: str
    kind: str | None = None
