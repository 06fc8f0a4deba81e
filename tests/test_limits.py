"""Every layer takes its musical limits from engine.limits, so they agree."""

from __future__ import annotations

import pytest

from engine import limits
from engine.dsp.spectrogram import LoopMeta
from engine.errors import InvalidRequest
from engine.live.jobs import ClipSpec
from engine.live.state import PARAMETERS, EngineState
from engine.live.transport import Transport


def _spec(tempo: float, bars: int = 1, beats: int = 4) -> ClipSpec:
    return ClipSpec(tempo=tempo, bars=bars, beats_per_bar=beats, sample_rate=48000,
                    num_samples=round(bars * beats * 60 / tempo * 48000))


def test_the_control_ranges_lie_inside_what_the_engine_plays() -> None:
    assert limits.TEMPO_BPM[0] <= limits.CONTROL_TEMPO_BPM[0]
    assert limits.CONTROL_TEMPO_BPM[1] <= limits.TEMPO_BPM[1]
    assert limits.BARS[0] <= limits.CONTROL_BARS[0] <= limits.CONTROL_BARS[1] <= limits.BARS[1]
    assert (PARAMETERS["tempo"].lo, PARAMETERS["tempo"].hi) == limits.CONTROL_TEMPO_BPM
    assert (PARAMETERS["meter"].lo, PARAMETERS["meter"].hi) == limits.BEATS_PER_BAR


@pytest.mark.parametrize("tempo", [limits.TEMPO_BPM[0], limits.TEMPO_BPM[1]])
def test_the_edges_of_the_tempo_range_are_playable_everywhere(tempo: float) -> None:
    assert _spec(tempo).tempo == tempo
    assert LoopMeta(bars=2, beats_per_bar=4, bpm=tempo).bpm == tempo
    assert Transport(lambda: 0, 48000, tempo, 4).tempo == tempo


@pytest.mark.parametrize("tempo", [limits.TEMPO_BPM[0] - 0.5, limits.TEMPO_BPM[1] + 0.5,
                                   float("nan"), True])
def test_tempos_outside_the_range_are_refused_everywhere(tempo: float) -> None:
    with pytest.raises(InvalidRequest, match="tempo"):
        limits.check_tempo(tempo)
    with pytest.raises(InvalidRequest):
        LoopMeta(bars=2, beats_per_bar=4, bpm=tempo)
    with pytest.raises(InvalidRequest):
        Transport(lambda: 0, 48000, tempo, 4)


def test_the_tempo_control_is_narrower_than_what_a_master_may_play() -> None:
    state = EngineState()
    with pytest.raises(InvalidRequest):
        state.set("tempo", limits.CONTROL_TEMPO_BPM[1] + 1)
    transport = Transport(lambda: 0, 48000, 120.0, 4)
    assert transport.tempo == 120.0
    assert _spec(limits.CONTROL_TEMPO_BPM[1] + 1).tempo == limits.CONTROL_TEMPO_BPM[1] + 1


@pytest.mark.parametrize("beats", [0, limits.BEATS_PER_BAR[1] + 1])
def test_meters_outside_the_range_are_refused_everywhere(beats: int) -> None:
    with pytest.raises(InvalidRequest):
        _spec(120.0, beats=beats) if beats > 0 else ClipSpec(120.0, 1, 0, 48000, 1)
    with pytest.raises(InvalidRequest):
        LoopMeta(bars=2, beats_per_bar=beats, bpm=120.0)
    with pytest.raises(InvalidRequest):
        Transport(lambda: 0, 48000, 120.0, beats)
