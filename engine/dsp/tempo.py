"""Tempo and beat phase of a recording, for cutting audio-to-audio windows on bar lines when
the user gives no BPM.

The classic onset-autocorrelation estimate, in 10 ms mel frames (the codec's hop, with a
short window for timing): the onset strength is the half-wave rectified
rise of the log mel spectrogram summed over bands; its autocorrelation, weighted by a broad
prior centred on 120 BPM (a log-normal over 60..200 BPM, which resolves the usual half/double
ambiguity toward common tempos), gives the beat period, refined to a fraction of a frame; the
beat phase is the offset whose comb of beats collects the most onset strength. It finds the
beat, not the bar: the first strong beat is taken as a downbeat.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from engine.dsp.spectrogram import SpectrogramParams, audio_to_mel
from engine.errors import InvalidAudio

log = logging.getLogger(__name__)

#: Tempos considered, BPM.
MIN_BPM, MAX_BPM = 60.0, 200.0
#: Shortest audio a tempo is estimated from, seconds (a few beats at 60 BPM).
MIN_SECONDS = 4.0
#: The onset analysis: the codec's 10 ms hop with a 20 ms window (the codec's 100 ms window
#: would smear an onset up to 50 ms early) and 64 mel bands.
ONSET_PARAMS = SpectrogramParams(window_duration_ms=20, padded_duration_ms=20,
                                 num_frequencies=64)


@dataclasses.dataclass(frozen=True)
class TempoEstimate:
    """``bpm``; ``downbeat_s``: the first beat, within one beat of the start; ``confidence``
    0..1, the normalised autocorrelation at the beat period."""

    bpm: float
    downbeat_s: float
    confidence: float


def onset_envelope(audio: np.ndarray, params: SpectrogramParams | None = None) -> np.ndarray:
    """Onset strength per frame (one per hop) of float audio (channels, samples) at the
    codec's rate: the summed positive rise of the log mel magnitudes, mean removed."""
    p = params or SpectrogramParams()
    mel = audio_to_mel(audio, dataclasses.replace(p, stereo=False))[0]
    log_mel = np.log1p(mel / (mel.max() * 1e-4 + 1e-12))
    rise = np.maximum(np.diff(log_mel, axis=1), 0.0).sum(axis=0)
    rise = np.concatenate([[0.0], rise])
    return (rise - rise.mean()).astype(np.float64)


def estimate_tempo(audio: np.ndarray, sample_rate: int) -> TempoEstimate:
    """The tempo and first beat of ``audio`` (channels, samples) at ``sample_rate``."""
    from engine.dsp.audio_io import resample

    p = ONSET_PARAMS
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.shape[-1] / sample_rate < MIN_SECONDS:
        raise InvalidAudio(f"{x.shape[-1] / sample_rate:.1f} s is too short to find a tempo "
                           f"(at least {MIN_SECONDS:g} s); give the BPM")
    x = resample(x, int(sample_rate), p.sample_rate)
    env = onset_envelope(x, p)
    fps = p.sample_rate / p.hop_length
    if not np.any(env):
        raise InvalidAudio("no onsets to find a tempo in (silence or a steady sound); "
                           "give the BPM")
    n = len(env)
    spectrum = np.fft.rfft(env, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    acf /= acf[0]
    lags = np.arange(n, dtype=np.float64)
    lo, hi = int(60 * fps / MAX_BPM), int(np.ceil(60 * fps / MIN_BPM)) + 1
    lo, hi = max(lo, 1), min(hi, n - 2)
    with np.errstate(divide="ignore"):
        bpm_of_lag = 60 * fps / lags
    prior = np.exp(-0.5 * (np.log2(bpm_of_lag[lo:hi] / 120.0) / 0.9) ** 2)
    score = acf[lo:hi] * prior
    best = lo + int(np.argmax(score))
    a, b, c = acf[best - 1], acf[best], acf[best + 1]
    shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) < 0 else 0.0
    period = best + float(np.clip(shift, -0.5, 0.5))
    bpm = 60 * fps / period
    phases = np.arange(int(np.ceil(period)))
    comb = [env[np.round(ph + period * np.arange((n - ph) / period)).astype(int)
                .clip(0, n - 1)].sum() for ph in phases]
    downbeat = float(phases[int(np.argmax(comb))]) / fps
    log.info("estimated tempo %.2f BPM, first beat at %.3f s (confidence %.2f)", bpm,
             downbeat, float(b))
    return TempoEstimate(float(bpm), downbeat, float(max(0.0, min(1.0, b))))
