"""Speed presets a performer understands: ``--quality draft|live|studio``.

Each preset sets the three things that decide how long a clip takes and how it sounds:
denoising steps, the diffusion scheduler (DPM++ 2M reaches in 10-20 steps what the model's own
PNDM needs 50 for) and the phase reconstruction method. Figures are per 5 s clip on one
H200-class GPU (fp16), from the measurements quoted in the README; on a CPU everything is
much slower, in the same order.

Explicit ``--steps`` / ``--phase-method`` win over a preset. ``studio`` is Riffusion's own
recipe (50 steps, the model's scheduler), with the ``quality`` phase method.
"""

from __future__ import annotations

import dataclasses

from engine.errors import InvalidRequest


@dataclasses.dataclass(frozen=True)
class QualityPreset:
    """Steps, scheduler (``None``: the model's own) and phase method, with what it costs."""

    name: str
    steps: int
    scheduler: str | None
    phase_method: str
    cost: str


QUALITY_PRESETS: dict[str, QualityPreset] = {
    preset.name: preset
    for preset in (
        QualityPreset("draft", 10, "dpmpp", "fast",
                      "about 0.7 s per clip: knob moves heard within a bar or two"),
        QualityPreset("live", 20, "dpmpp", "fast",
                      "about 1.1 s per clip: close to the full quality, a bar behind a knob"),
        QualityPreset("studio", 50, None, "quality",
                      "about 2.5 s per clip: Riffusion's own recipe, best phase; for takes"),
    )
}


def quality_preset(name: str) -> QualityPreset:
    """The preset called ``name``; :class:`InvalidRequest` naming the choices otherwise."""
    try:
        return QUALITY_PRESETS[name]
    except KeyError:
        raise InvalidRequest(f"unknown quality {name!r} (choose from: "
                             f"{', '.join(QUALITY_PRESETS)})") from None
