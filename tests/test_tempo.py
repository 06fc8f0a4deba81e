"""Tempo and first-beat estimation for audio to audio (``--bpm auto``) on known click tracks."""

from __future__ import annotations

import numpy as np
import pytest

from engine.dsp.tempo import estimate_tempo
from engine.errors import InvalidAudio
from engine.model.request import PromptInput
from engine.takes.audio_to_audio import AudioToAudioRequest, plan_windows, with_detected_tempo


def clicks(bpm: float, first: float, rate: int, seconds: float = 12.0) -> np.ndarray:
    """Noise bursts on every beat from ``first`` (accented every fourth)."""
    x = np.zeros(int(rate * seconds), dtype=np.float32)
    rng = np.random.default_rng(0)
    burst = int(0.05 * rate)
    decay = np.exp(-np.arange(burst) / (0.01 * rate))
    for k, t in enumerate(np.arange(first, seconds - 0.1, 60.0 / bpm)):
        i = round(t * rate)
        x[i : i + burst] += (0.5 if k % 4 == 0 else 0.3) * decay * rng.standard_normal(burst)
    return x[None]


@pytest.mark.parametrize("bpm,first,rate", [(128.0, 0.3, 44100), (93.75, 0.1, 48000),
                                            (170.0, 0.05, 22050), (72.0, 0.5, 44100)])
def test_tempo_and_first_beat_of_a_click_track(bpm: float, first: float, rate: int) -> None:
    found = estimate_tempo(clicks(bpm, first, rate), rate)
    assert found.bpm == pytest.approx(bpm, rel=0.005)
    assert abs(found.downbeat_s - first) <= 0.025
    assert found.confidence > 0.5


def test_no_tempo_in_silence_or_short_audio() -> None:
    with pytest.raises(InvalidAudio, match="no onsets"):
        estimate_tempo(np.zeros((1, 44100 * 6), dtype=np.float32), 44100)
    with pytest.raises(InvalidAudio, match="too short"):
        estimate_tempo(clicks(120, 0, 44100, seconds=2.0), 44100)


def test_detected_tempo_puts_windows_on_the_bar_lines() -> None:
    audio = clicks(120.0, 0.25, 44100, seconds=20.0)
    request = with_detected_tempo(AudioToAudioRequest(start=PromptInput("x", denoising=0)),
                                  audio, 44100)
    assert request.bpm == pytest.approx(120.0, rel=0.005)
    bounds = [w.boundary for w in plan_windows(audio.shape[1], request)][1:]
    # two bars of 2 s per window, from the first beat
    assert [b / 44100 for b in bounds] == pytest.approx(
        [request.downbeat_s + 4.0 * k * 120.0 / request.bpm for k in range(len(bounds))],
        abs=1e-4)
    assert abs(bounds[0] / 44100 - 0.25) < 0.03
