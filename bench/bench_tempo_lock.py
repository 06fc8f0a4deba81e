"""Benchmark: onset positions and pitch after tempo lock, three ways in the same run.

A loop of eight sharp hits (each 3 ms after its beat, so none sits on the 10 ms frame grid)
at the seed's 93.75 BPM is encoded to mel frames and tempo-locked to each host tempo by:

- ``interpolated``: the frames linearly resampled to the host's length, synthesised at the
  analysis hop (the oldest way);
- ``scaled_hop``: the frames synthesised at a hop scaled to the host tempo, as measured;
- ``retimed``: the same hop with the frames first given the magnitudes a frame at that hop
  would measure (what :func:`engine.live.clip.conform` does).

For each: the largest onset error in ms against the detector's own bias at the seed's tempo
(where nothing is stretched), the pre-echo (energy in the 30 ms before each hit over that in
the 30 ms after, in dB), the peak frequency of a 440 Hz tone, how far the mel of the hits
over the tone, tempo-locked, is from that of the same loop written at the host tempo
(``||M - g M'|| / ||M||``), and CPU seconds per clip. Then the largest onset error over
hits 0 to 9 ms after the beat (every position inside a frame), for the last two ways.
Prints JSON (``--out`` also writes it).

    python bench/bench_tempo_lock.py [--out bench/results_tempo_lock.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.signal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.dsp.phase import mel_to_audio  # noqa: E402
from engine.dsp.spectrogram import LoopMeta, SpectrogramParams, audio_to_mel  # noqa: E402
from engine.live.clip import (  # noqa: E402
    LoudnessTarget,
    conform,
    loop_frames,
    match_loudness,
    stretch_frames,
    tempo_lock_grid,
)
from engine.live.jobs import ClipSpec  # noqa: E402

SEED_BPM = 93.75
TEMPOS = (60.0, SEED_BPM, 140.0, 180.0)
RATE = 48000
PARAMS = SpectrogramParams()
META = LoopMeta(bars=2, beats_per_bar=4, bpm=SEED_BPM)


def hit_loop(bpm: float = SEED_BPM, beats: int = 8,
             offset_s: float = 0.003) -> tuple[np.ndarray, np.ndarray]:
    """A loop of ``beats`` sharp hits at ``bpm`` (44.1 kHz, a whole number of hops), each
    ``offset_s`` after its beat so none sits on the 10 ms frame grid; and the hit times (s)."""
    p = PARAMS
    n = round(beats * 60 / bpm * p.sample_rate / p.hop_length) * p.hop_length
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


def tone_loop(hz: float = 440.0, bpm: float = SEED_BPM, beats: int = 8) -> np.ndarray:
    """A steady sine loop of ``beats`` beats at ``bpm`` (44.1 kHz, whole hops)."""
    p = PARAMS
    n = round(beats * 60 / bpm * p.sample_rate / p.hop_length) * p.hop_length
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(n) / p.sample_rate)).astype(np.float32)


def onset_times(audio: np.ndarray, rate: int, expected: np.ndarray) -> np.ndarray:
    """Where each hit starts: the first sample near its expected time (s) at which the
    signal's 0.5 ms slope envelope reaches 30 % of that hit's peak."""
    env = np.abs(np.diff(audio, prepend=0))
    k = max(1, int(rate * 0.0005))
    env = np.convolve(env, np.ones(k) / k, mode="same")
    found = []
    for t in expected:
        lo = int(t * rate) - int(0.02 * rate)
        seg = env[np.arange(lo, lo + int(0.05 * rate)) % env.size]
        found.append((lo + int(np.argmax(seg >= 0.3 * seg.max()))) / rate)
    return np.array(found)


def pre_echo_db(audio: np.ndarray, rate: int, expected: np.ndarray) -> float:
    """Energy in the 30 ms before the hits over that in the 30 ms after, in dB."""
    span = int(0.03 * rate)
    before = after = 0.0
    for t in expected:
        i = int(t * rate)
        before += float(np.sum(audio[np.arange(i - span, i) % audio.size] ** 2))
        after += float(np.sum(audio[np.arange(i, i + span) % audio.size] ** 2))
    return 10 * np.log10(max(before, 1e-30) / max(after, 1e-30))


def peak_hz(audio: np.ndarray, rate: int) -> float:
    """Frequency of the strongest bin of the Hann-windowed clip."""
    x = audio.astype(np.float64)
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(x.size))))) * rate / x.size


def hits_and_tone(bpm: float) -> np.ndarray:
    """The hits (3 ms after the beat at the seed's tempo, proportionally later or earlier at
    others) over a 440 Hz tone, at ``bpm``: the seed loop, or the ideal result at a host
    tempo."""
    hits, _times = hit_loop(bpm, offset_s=0.003 * SEED_BPM / bpm)
    return hits + 0.5 * tone_loop(440.0, bpm)[: hits.size]


def mel_convergence(clip: np.ndarray, ideal: np.ndarray) -> float:
    """``||M - g M'|| / ||M||`` between the mel of the ideal loop (44.1 kHz) and that of the
    clip resampled to its length, at the best gain ``g``."""
    back = scipy.signal.resample(clip.astype(np.float64), ideal.size).astype(np.float32)
    got = audio_to_mel(back[None], PARAMS, circular=True).astype(np.float64).ravel()
    want = audio_to_mel(ideal[None], PARAMS, circular=True).astype(np.float64).ravel()
    gain = float(want @ got) / max(float(got @ got), 1e-30)
    return float(np.linalg.norm(want - gain * got) / np.linalg.norm(want))


def spec_at(bpm: float) -> ClipSpec:
    """Two bars of 4/4 at ``bpm`` at 48 kHz."""
    return ClipSpec(tempo=bpm, bars=2, beats_per_bar=4, sample_rate=RATE,
                    num_samples=round(8 * 60 / bpm * RATE))


def interpolated(mel: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """The frames resampled to the host's length, synthesised at (about) the analysis hop."""
    p = PARAMS
    samples = spec.num_samples * p.sample_rate / spec.sample_rate
    frames = max(2, round(samples / p.hop_length))
    audio = mel_to_audio(stretch_frames(loop_frames(mel, META, spec), frames), p,
                         circular=True, time_scale=samples / (frames * p.hop_length),
                         retime_frames=False)[0]
    return _finish(audio, spec)


def _finish(audio: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """As :func:`engine.live.clip.conform` ends: resampled to the host rate, loudness
    matched (its limiter shapes the hits the onset detector sees)."""
    exact = scipy.signal.resample(audio.astype(np.float64), spec.num_samples)
    return match_loudness(np.asarray(exact, dtype=np.float32)[None], LoudnessTarget())[0]


def scaled_hop(mel: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """The frames synthesised as measured at a hop scaled to the host tempo."""
    p = PARAMS
    samples = spec.num_samples * p.sample_rate / spec.sample_rate
    loop, scale = tempo_lock_grid(loop_frames(mel, META, spec), samples, p.hop_length)
    return _finish(mel_to_audio(loop, p, circular=True, time_scale=scale,
                                retime_frames=False)[0], spec)


def retimed(mel: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """What the engine does: :func:`engine.live.clip.conform`."""
    return conform(mel, spec, meta=META)[:, 0]


METHODS: dict[str, Callable[[np.ndarray, ClipSpec], np.ndarray]] = {
    "interpolated": interpolated, "scaled_hop": scaled_hop, "retimed": retimed}


def onset_errors_ms(method: Callable[[np.ndarray, ClipSpec], np.ndarray],
                    tempos: tuple[float, ...] = TEMPOS,
                    clips: dict[float, np.ndarray] | None = None,
                    offset_s: float = 0.003) -> dict[float, np.ndarray]:
    """Per-hit onset error (ms) at each tempo, against the detector's bias at the seed's
    tempo (the median error there, where nothing is stretched), hits ``offset_s`` after the
    beat. ``clips`` (filled in when given) keeps each tempo's clip."""
    audio, times = hit_loop(offset_s=offset_s)
    mel = audio_to_mel(audio[None], PARAMS, circular=True)
    raw = {}
    for bpm in dict.fromkeys((SEED_BPM, *tempos)):
        expected = times * (SEED_BPM / bpm)
        out = method(mel, spec_at(bpm))
        if clips is not None:
            clips[bpm] = out
        raw[bpm] = (onset_times(out, RATE, expected) - expected) * 1000
    bias = float(np.median(raw[SEED_BPM]))
    return {bpm: raw[bpm] - bias for bpm in tempos}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    _audio, times = hit_loop()
    tone = audio_to_mel(tone_loop()[None], PARAMS, circular=True)
    mixed = audio_to_mel(hits_and_tone(SEED_BPM)[None], PARAMS, circular=True)
    results: dict[str, object] = {}
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name, method in METHODS.items():
        clips: dict[float, np.ndarray] = {}
        start = time.process_time()
        errors = onset_errors_ms(method, clips=clips)
        seconds = (time.process_time() - start) / len(clips)
        rows[name] = {
            f"{bpm:g}": {
                "max_onset_error_ms": round(float(np.max(np.abs(errors[bpm]))), 2),
                "mean_onset_error_ms": round(float(np.mean(errors[bpm])), 2),
                "pre_echo_db": round(pre_echo_db(clips[bpm], RATE,
                                                 times * (SEED_BPM / bpm)), 1),
                "tone_peak_hz": round(peak_hz(method(tone, spec_at(bpm)), RATE), 2),
                "mel_convergence_to_ideal": round(mel_convergence(
                    method(mixed, spec_at(bpm)), hits_and_tone(bpm)), 4),
            } for bpm in TEMPOS}
        results[name] = {"tempos": rows[name], "cpu_seconds_per_clip": round(seconds, 3)}
    # Every position of the hits inside a 10 ms frame (the detector's and the codec's bias
    # moves with it): the largest error over hits 0, 1, ... 9 ms after the beat.
    sweep = {name: {f"{bpm:g}": 0.0 for bpm in TEMPOS} for name in ("scaled_hop", "retimed")}
    for offset_ms in range(10):
        for name in sweep:
            errors = onset_errors_ms(METHODS[name], offset_s=offset_ms / 1000)
            for bpm in TEMPOS:
                worst = round(float(np.max(np.abs(errors[bpm]))), 2)
                sweep[name][f"{bpm:g}"] = max(sweep[name][f"{bpm:g}"], worst)
    results["max_onset_error_ms_over_hit_positions_0_to_9ms"] = sweep
    now = rows["retimed"].values()
    report = {
        "seed_bpm": SEED_BPM,
        "hits": "8 per loop, 3 ms after each beat",
        "methods": results,
        "goal_onsets_within_1ms": all(r["max_onset_error_ms"] <= 1.0 for r in now),
        "goal_pitch_within_3hz": all(abs(r["tone_peak_hz"] - 440.0) < 3.0 for r in now),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
