"""The engine's musical limits, in one place, so every layer agrees on what is valid.

Two tempo ranges on purpose: ``TEMPO_BPM`` is what the engine can play and follow (an external
master, a seed image's metadata, a clip specification); ``CONTROL_TEMPO_BPM`` is the range of
the performer's ``/riff/tempo`` control, narrower so that a knob or a learned MIDI CC spans
useful tempos. The control range lies inside the playable one.
"""

from __future__ import annotations

import math

from engine.errors import InvalidRequest

#: Tempos (BPM) the engine plays and follows.
TEMPO_BPM = (20.0, 400.0)
#: Tempos (BPM) the ``/riff/tempo`` control accepts.
CONTROL_TEMPO_BPM = (40.0, 240.0)
#: Bars in one clip or one seed image.
BARS = (1, 64)
#: Bars the ``/riff/bars`` control accepts.
CONTROL_BARS = (1, 16)
#: Beats in one bar (``/riff/meter``, seed images, clips).
BEATS_PER_BAR = (1, 16)


def check_tempo(value: object, what: str = "tempo") -> float:
    """``value`` as a float BPM within :data:`TEMPO_BPM`; :class:`InvalidRequest` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{what} must be a number, not {value!r}")
    tempo = float(value)
    low, high = TEMPO_BPM
    if not math.isfinite(tempo) or not low <= tempo <= high:
        raise InvalidRequest(f"{what} must be between {low:g} and {high:g} BPM, not {value!r}")
    return tempo


def check_count(value: object, what: str, bounds: tuple[int, int]) -> int:
    """``value`` as an int within ``bounds`` (inclusive); :class:`InvalidRequest` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be an integer, not {value!r}")
    low, high = bounds
    if not low <= value <= high:
        raise InvalidRequest(f"{what} must be between {low} and {high}, not {value!r}")
    return int(value)
