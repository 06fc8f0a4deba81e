"""Clip conform on synthetic spectrograms: exact length, tempo lock, seamless seam, loudness."""

from __future__ import annotations

import numpy as np
import pytest

from engine.dsp.spectrogram import LoopMeta, SpectrogramParams, audio_to_mel
from engine.live.clip import ConformSettings, conform, loop_frames, soft_limit, stretch_frames
from engine.live.jobs import ClipSpec

P = SpectrogramParams()


def spec_for(tempo: float, bars: int = 1, rate: int = 48000, beats: int = 4) -> ClipSpec:
    exact = bars * beats * 60.0 / tempo * rate
    return ClipSpec(tempo=tempo, bars=bars, beats_per_bar=beats, sample_rate=rate,
                    num_samples=round(exact))


def click_track_mel(bpm: float, beats: int, level: float = 1.0) -> np.ndarray:
    """Mel of a loop with a short noise burst on every beat, over a quiet tone."""
    n = round(beats * 60.0 / bpm * P.sample_rate)
    t = np.arange(n) / P.sample_rate
    rng = np.random.default_rng(0)
    audio = 0.05 * np.sin(2 * np.pi * 220 * t)
    period = n / beats
    for b in range(beats):
        i = int(b * period)
        audio[i:i + 441] += rng.normal(0, 0.5, min(441, n - i))
    return audio_to_mel((level * audio)[None].astype(np.float32), P, circular=True)


def onsets(x: np.ndarray, rate: int, count: int) -> np.ndarray:
    """Sample positions of the ``count`` strongest energy rises (10 ms frames)."""
    hop = rate // 100
    e = np.array([np.sum(x[i:i + hop] ** 2) for i in range(0, len(x) - hop, hop)])
    rise = np.maximum(np.diff(e, prepend=e[-1]), 0)
    peaks = []
    for i in np.argsort(rise)[::-1]:
        if all(abs(i - j) > 10 for j in peaks):
            peaks.append(i)
        if len(peaks) == count:
            break
    return np.sort(np.array(peaks)) * hop


@pytest.mark.parametrize("tempo", [120.0, 93.7, 157.0])
def test_exact_length_at_the_host_rate(tempo: float) -> None:
    mel = click_track_mel(100.0, 4)
    spec = spec_for(tempo)
    out = conform(mel, spec, settings=ConformSettings(method="fast"))
    assert out.shape == (spec.num_samples, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], out[:, 1])


def test_tempo_lock_puts_beats_on_the_host_grid() -> None:
    mel = click_track_mel(100.0, 4)  # a 4-beat loop at 100 BPM
    spec = spec_for(150.0)  # one bar at 150 BPM: 0.4 s per beat
    out = conform(mel, spec, meta=LoopMeta(bars=1, beats_per_bar=4, bpm=100.0))
    found = onsets(out[:, 0], 48000, 4)
    beat = spec.num_samples / 4
    expected = np.arange(4) * beat
    err = np.abs(((found - expected + beat / 2) % beat) - beat / 2)
    assert np.all(err < 0.015 * 48000), (found, expected)


def test_seam_has_no_click() -> None:
    mel = click_track_mel(100.0, 4)
    out = conform(mel, spec_for(133.0))[:, 0]
    steps = np.abs(np.diff(out))
    seam = abs(float(out[0]) - float(out[-1]))
    assert seam <= np.percentile(steps, 99.9)


def test_consecutive_clips_match_in_loudness() -> None:
    spec = spec_for(120.0)
    quiet = conform(click_track_mel(100.0, 4, level=0.1), spec)  # 20 dB quieter
    loud = conform(click_track_mel(100.0, 4, level=1.0), spec)
    rms = [float(np.sqrt(np.mean(x ** 2))) for x in (quiet, loud)]
    assert abs(20 * np.log10(rms[0] / rms[1])) < 1.0
    assert max(np.abs(quiet).max(), np.abs(loud).max()) <= 0.98


def test_loop_frames_takes_or_repeats_beats() -> None:
    mel = np.arange(8, dtype=np.float32)[None, None, :]  # 8 frames = 2 bars of 4/4
    meta = LoopMeta(bars=2, beats_per_bar=4, bpm=120.0)
    one_bar = loop_frames(mel, meta, spec_for(120.0, bars=1))
    np.testing.assert_array_equal(one_bar[0, 0], [0, 1, 2, 3])
    four_bars = loop_frames(mel, meta, spec_for(120.0, bars=4))
    np.testing.assert_array_equal(four_bars[0, 0], np.arange(16) % 8)


def test_stretch_is_circular_and_keeps_level() -> None:
    mel = np.ones((1, 3, 10), np.float32)
    mel[..., 9] = 3.0
    out = stretch_frames(mel, 20)
    assert out.shape == (1, 3, 20)
    assert out[0, 0, 19] == pytest.approx(2.0)  # blends from the last frame into the first
    assert stretch_frames(np.ones((1, 2, 50), np.float32), 7).mean() == pytest.approx(1.0)


def test_stretch_never_makes_negative_magnitudes() -> None:
    """Decoded images hold exact zeros (white pixels) next to large magnitudes; shrinking
    must not turn them into tiny negative values the phase reconstruction rejects."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 512, 256)).astype(np.float32)
    pixels = np.where(rng.random(pixels.shape) < 0.5, 255.0, pixels)
    mel = (((255 - pixels) / 255) ** 4 * 30e6).astype(np.float32)
    out = stretch_frames(mel, 100)
    assert np.all(out >= 0) and np.all(np.isfinite(out))


def test_soft_limit_is_identity_below_knee_and_bounded() -> None:
    x = np.linspace(-3, 3, 1001).astype(np.float32)
    y = soft_limit(x, 0.7, 0.98)
    small = np.abs(x) <= 0.7
    np.testing.assert_array_equal(y[small], x[small])
    assert np.all(np.abs(y) < 0.98) and np.all(np.diff(y) >= 0)


def _hits(bpm: float, beats: int = 8, offset_s: float = 0.003) -> tuple[np.ndarray, np.ndarray]:
    """A loop of ``beats`` sharp hits at ``bpm`` (44.1 kHz, a whole number of hops), each
    ``offset_s`` after its beat so none sits on the 10 ms frame grid; and the hit times."""
    p = SpectrogramParams()
    frames = round(beats * 60 / bpm * p.sample_rate / p.hop_length)
    n = frames * p.hop_length
    t = np.arange(int(0.08 * p.sample_rate)) / p.sample_rate
    hit = np.sin(2 * np.pi * (60 + 200 * np.exp(-t * 40)) * t) * np.exp(-t * 30)
    hit += np.random.default_rng(0).standard_normal(t.size) * np.exp(-t * 200) * 0.5
    out = np.zeros(n)
    times = []
    for b in range(beats):
        start = round((b * 60 / bpm + offset_s) * p.sample_rate)
        out[(start + np.arange(hit.size)) % n] += hit
        times.append(start / p.sample_rate)
    return out.astype(np.float32), np.array(times)


def _onsets(audio: np.ndarray, rate: int, expected: np.ndarray) -> np.ndarray:
    """Where each hit starts: the first sample near its expected time at which the signal's
    0.5 ms slope envelope reaches 30 % of that hit's peak."""
    env = np.abs(np.diff(audio, prepend=0))
    k = max(1, int(rate * 0.0005))
    env = np.convolve(env, np.ones(k) / k, mode="same")
    found = []
    for t in expected:
        lo = int(t * rate) - int(0.02 * rate)
        seg = env[np.arange(lo, lo + int(0.05 * rate)) % env.size]
        found.append((lo + int(np.argmax(seg >= 0.3 * seg.max()))) / rate)
    return np.array(found)


def test_tempo_lock_keeps_onsets_where_the_grid_puts_them() -> None:
    """The frames are synthesised at a scaled hop instead of being interpolated (which moved
    onsets by up to 7 ms at 180 BPM). Errors are measured against the detector's own bias at
    the seed's tempo (where nothing is stretched)."""
    p = SpectrogramParams()
    seed_bpm = 93.75
    audio, times = _hits(seed_bpm)
    mel = audio_to_mel(audio[None], p, circular=True)
    meta = LoopMeta(bars=2, beats_per_bar=4, bpm=seed_bpm)
    errors = {}
    for bpm in (seed_bpm, 120.0, 140.0, 180.0):
        spec = ClipSpec(tempo=bpm, bars=2, beats_per_bar=4, sample_rate=48000,
                        num_samples=round(8 * 60 / bpm * 48000))
        expected = times * (seed_bpm / bpm)
        out = conform(mel, spec, meta=meta)
        errors[bpm] = (_onsets(out[:, 0], 48000, expected) - expected) * 1000
    bias = float(np.median(errors[seed_bpm]))
    for bpm, err in errors.items():
        assert np.max(np.abs(err - bias)) <= 1.0, (bpm, err - bias)


def test_tempo_lock_keeps_the_pitch() -> None:
    p = SpectrogramParams()
    n = round(8 * 60 / 93.75 * p.sample_rate / p.hop_length) * p.hop_length
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * np.arange(n) / p.sample_rate)).astype(np.float32)
    mel = audio_to_mel(tone[None], p, circular=True)
    meta = LoopMeta(bars=2, beats_per_bar=4, bpm=93.75)
    for bpm in (60.0, 140.0, 180.0):
        spec = ClipSpec(tempo=bpm, bars=2, beats_per_bar=4, sample_rate=48000,
                        num_samples=round(8 * 60 / bpm * 48000))
        out = conform(mel, spec, meta=meta)[:, 0].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
        peak_hz = np.argmax(spectrum) * 48000 / out.size
        assert abs(peak_hz - 440.0) < 3.0, (bpm, peak_hz)
