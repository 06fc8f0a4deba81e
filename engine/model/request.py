"""Generation requests: Riffusion's ``InferenceInput`` JSON plus the engine's optional fields.

A request from the riffusion web app, a CLI ``--request`` file, the HTTP API or the worker
protocol all become one :class:`InferenceRequest`. Construction validates every field, so a
request object that exists is a valid request.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from engine.errors import InvalidRequest

#: A seed image, mask or preset id: a plain name, never a path.
PLAIN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

MAX_SEED = 2**32 - 1
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 2000


def check_plain_id(value: object, field: str) -> str:
    """Return ``value`` if it is a plain id (letters, digits, ``_ . -``; no path parts)."""
    if not isinstance(value, str) or not PLAIN_ID.fullmatch(value) or value in (".", ".."):
        raise InvalidRequest(
            f"{field} must be a plain name (letters, digits, '_', '-', '.'), not {value!r}"
        )
    return value


def _number(value: object, field: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{field} must be a number, not {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out) or not lo <= out <= hi:
        raise InvalidRequest(f"{field} must be between {lo:g} and {hi:g}, not {value!r}")
    return out


def _integer(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{field} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise InvalidRequest(f"{field} must be between {lo} and {hi}, not {value}")
    return value


def _text(value: object, field: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, not {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{field} is longer than {MAX_PROMPT_CHARS} characters")
    return value


@dataclasses.dataclass(frozen=True)
class PromptInput:
    """One end of an interpolation: Riffusion's ``PromptInput``."""

    prompt: str
    seed: int = 0
    negative_prompt: str | None = None
    denoising: float = 0.75
    guidance: float = 7.0

    def __post_init__(self) -> None:
        _text(self.prompt, "prompt")
        object.__setattr__(self, "seed", _integer(self.seed, "seed", 0, MAX_SEED))
        _text(self.negative_prompt, "negative_prompt", optional=True)
        object.__setattr__(self, "denoising", _number(self.denoising, "denoising", 0.0, 1.0))
        object.__setattr__(
            self, "guidance", _number(self.guidance, "guidance", 0.0, MAX_GUIDANCE)
        )

    @classmethod
    def from_dict(cls, data: object, where: str = "prompt input") -> PromptInput:
        """Build from a JSON object, naming ``where`` in errors."""
        return cls(**_fields(cls, data, where))


@dataclasses.dataclass(frozen=True)
class InferenceRequest:
    """Riffusion's ``InferenceInput`` with the engine's optional extensions.

    Riffusion's fields: ``alpha``, ``num_inference_steps``, ``seed_image_id``,
    ``mask_image_id``, ``start``, ``end``. Engine fields (all optional): ``width`` in pixels
    (a multiple of 8; ``None`` keeps the seed image's width, 512 without one), ``scheduler``
    (a scheduler name such as ``ddim`` or ``dpmpp``; ``None`` is the model's own),
    ``seamless`` (``True``: the diffusion pads time circularly so the image's right edge
    continues into its left, for loops; not Riffusion-exact, so off by default). A
    ``seed_image_id`` of ``null`` asks for text-to-image.
    """

    start: PromptInput
    end: PromptInput | None = None
    alpha: float = 0.0
    num_inference_steps: int = 50
    seed_image_id: str | None = "og_beat"
    mask_image_id: str | None = None
    width: int | None = None
    scheduler: str | None = None
    seamless: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.start, PromptInput):
            raise InvalidRequest("start must be a prompt input")
        if self.end is not None and not isinstance(self.end, PromptInput):
            raise InvalidRequest("end must be a prompt input")
        object.__setattr__(self, "alpha", _number(self.alpha, "alpha", 0.0, 1.0))
        object.__setattr__(
            self,
            "num_inference_steps",
            _integer(self.num_inference_steps, "num_inference_steps", 1, MAX_STEPS),
        )
        if self.seed_image_id is not None:
            check_plain_id(self.seed_image_id, "seed_image_id")
        if self.mask_image_id is not None:
            check_plain_id(self.mask_image_id, "mask_image_id")
        if self.width is not None:
            width = _integer(self.width, "width", 8, 8192)
            if width % 8:
                raise InvalidRequest(f"width must be a multiple of 8 pixels, not {width}")
            object.__setattr__(self, "width", width)
        if self.scheduler is not None:
            check_plain_id(self.scheduler, "scheduler")
        if not isinstance(self.seamless, bool):
            raise InvalidRequest(f"seamless must be true or false, not {self.seamless!r}")

    @property
    def end_or_start(self) -> PromptInput:
        """The end prompt input; a request without ``end`` interpolates nowhere."""
        return self.end if self.end is not None else self.start

    @classmethod
    def from_dict(cls, data: object) -> InferenceRequest:
        """Build from Riffusion's ``InferenceInput`` JSON (plus engine fields); validates all."""
        fields = _fields(cls, data, "request")
        fields["start"] = PromptInput.from_dict(fields["start"], "start")
        if fields.get("end") is not None:
            fields["end"] = PromptInput.from_dict(fields["end"], "end")
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The request as JSON-ready data (Riffusion's field names; engine fields included)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> InferenceRequest:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)


def _fields(cls: type, data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{where} must be a JSON object, not {type(data).__name__}")
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise InvalidRequest(f"{where} has unknown field(s): {', '.join(unknown)}")
    missing = [f.name for f in fields if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InvalidRequest(f"{where} needs {', '.join(repr(m) for m in missing)}")
    return dict(data)
