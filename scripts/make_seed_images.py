#!/usr/bin/env python3
"""Synthesise the engine's own seed loops and masks into seed_images/.

Each seed is a drum pattern with a bass pulse, exactly two bars at its tempo, encoded
as a *circular* spectrogram (the frames wrap around the loop's end), so the image is exactly
``bars * beats * 60 / bpm`` seconds wide at 10 ms per pixel and loops without a seam. The
tempo and length are stored as loop metadata. Widths are multiples of 8 px (the model's latent
grid): 93.75 BPM = 512 px (``og_beat``, the id Riffusion's web app asks for), 100 BPM = 480 px,
120 BPM = 400 px, 80 BPM = 600 px. The ids that Riffusion's web app offers (og_beat, agile, marim,
motorway, vibes, and its six masks) are all here, as the engine's own content. Two are in other
meters, for the live engine's ``/riff/meter``: ``waltz_90`` (3/4 at 90 BPM, 400 px) and
``compound_6_8`` (6/8, six eighth-note beats a bar at 180 eighths a minute, 400 px).

Masks are plain greyscale PNGs in Riffusion's style (white = repaint, darker = keep more).

    python scripts/make_seed_images.py [--out seed_images]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.dsp.spectrogram import (  # noqa: E402
    LoopMeta,
    SpectrogramParams,
    audio_to_mel,
    mel_to_image,
    save_image,
    write_loop_meta,
)

SR = 44100


@dataclass(frozen=True)
class Pattern:
    """Two bars of equal steps: 'x' hit, '.' rest (32 characters per voice in 4/4: sixteenth
    notes; 64: thirty-seconds). ``notes`` adds a pitched voice: (step, MIDI notes) chords
    played by ``instrument`` (``marimba`` or ``vibes``), on a grid of 32 steps. Hits on every
    ``accent``-th step are louder. ``beats_per_bar`` beats of ``bpm`` make a bar."""

    name: str
    bpm: float
    kick: str
    snare: str
    hat: str
    bass: str
    bass_hz: float
    notes: tuple[tuple[int, tuple[int, ...]], ...] = ()
    instrument: str = ""
    beats_per_bar: int = 4
    accent: int = 4


PATTERNS = (
    Pattern(
        "og_beat",
        93.75,
        kick="x.....x...x.....x.....x..x......",
        snare="....x.......x.......x.......x..x",
        hat="x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.",
        bass="x.....x...x.....x.....x..x......",
        bass_hz=55.0,
    ),
    Pattern(
        "four_on_floor_120",
        120.0,
        kick="x...x...x...x...x...x...x...x...",
        snare="....x.......x.......x.......x...",
        hat="..x...x...x...x...x...x...x...x.",
        bass="..x...x...x...x...x..xx...x...x.",
        bass_hz=49.0,
    ),
    Pattern(
        "breakbeat_100",
        100.0,
        kick="x.........x.x.....x.......x.....",
        snare="....x..x.x..x..x....x..x.x..x...",
        hat="xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        bass="x.........x.x.....x.......x.....",
        bass_hz=61.7,
    ),
    Pattern(
        "slow_groove_80",
        80.0,
        kick="x.......x.x.....x.......x..x....",
        snare="........x...............x.......",
        hat="x...x...x...x...x...x...x...x...",
        bass="x..x....x.x.....x..x....x..x....",
        bass_hz=41.2,
    ),
)


# The ids Riffusion's web app offers, as the engine's own loops (512 px = 2 bars at 93.75 BPM,
# like Riffusion's seeds): a fast breakbeat, a marimba pattern, a driving beat, vibraphone chords.
WEB_APP_PATTERNS = (
    Pattern(
        "agile",
        93.75,
        kick="x.......x...x.......x.......x.x.x.......x...x.......x.......x...",
        snare="........x.......x..x....x.......x.......x.......x..x....x.....x.",
        hat="x.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx.xxx",
        bass="x.......x...x.......x.......x.x.x.......x...x.......x.......x...",
        bass_hz=58.3,
    ),
    Pattern(
        "marim",
        93.75,
        kick="x.......x.......x.......x.......",
        snare="........x...............x.......",
        hat="..x...x...x...x...x...x...x...x.",
        bass="x.........x.....x.........x.....",
        bass_hz=49.0,
        notes=((0, (67,)), (2, (71,)), (4, (74,)), (6, (71,)), (8, (72,)), (10, (76,)),
               (12, (74,)), (14, (71,)), (16, (67,)), (18, (71,)), (20, (74,)), (22, (79,)),
               (24, (76,)), (26, (74,)), (28, (72,)), (30, (71,))),
        instrument="marimba",
    ),
    Pattern(
        "motorway",
        93.75,
        kick="x...x...x...x...x...x...x...x...",
        snare="....x.......x.......x.......x...",
        hat="x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.",
        bass="x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.",
        bass_hz=41.2,
    ),
    Pattern(
        "vibes",
        93.75,
        kick="x.........x.....x.........x.....",
        snare="........x...............x.......",
        hat="x...x...x...x...x...x...x...x...",
        bass="x...............x...............",
        bass_hz=43.65,
        notes=((0, (57, 60, 64, 67)), (6, (57, 60, 64, 67)), (16, (53, 57, 60, 64)),
               (22, (55, 59, 62, 65))),
        instrument="vibes",
    ),
)


# Other meters: a waltz (oom-pah-pah) and a 6/8 groove (two dotted-quarter pulses a bar),
# sixteenth-note steps (24 for two bars of 3/4; 24 for two bars of six eighths).
METER_PATTERNS = (
    Pattern(
        "waltz_90",
        90.0,
        kick="x...........x...........",
        snare="....x...x.......x...x...",
        hat="x.x.x.x.x.x.x.x.x.x.x.x.",
        bass="x...........x...........",
        bass_hz=49.0,
        beats_per_bar=3,
        accent=12,
    ),
    Pattern(
        "compound_6_8",
        180.0,
        kick="x.....x.....x.........x.",
        snare="......x...........x.....",
        hat="x.x.x.x.x.x.x.x.x.x.x.x.",
        bass="x.....x.....x.....x.....",
        bass_hz=55.0,
        beats_per_bar=6,
        accent=6,
    ),
)


def _kick(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.35 * SR)) / SR
    freq = 45 + 110 * np.exp(-t * 30)
    phase = 2 * np.pi * np.cumsum(freq) / SR
    return np.sin(phase) * np.exp(-t * 9) * 0.9


def _snare(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.25 * SR)) / SR
    noise = rng.standard_normal(t.size)
    noise = np.diff(noise, prepend=0.0) * 0.5  # tilt towards the highs
    tone = np.sin(2 * np.pi * 190 * t) * np.exp(-t * 25)
    return (noise * np.exp(-t * 18) * 0.35 + tone * 0.4) * 0.9


def _hat(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.06 * SR)) / SR
    noise = np.diff(rng.standard_normal(t.size + 2), n=2)
    return noise * np.exp(-t * 70) * 0.08


def _bass(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(np.sin(2 * np.pi * hz * h * t) / h for h in (1, 2, 3, 4))
    return wave * np.exp(-t * 5) * 0.35


def _mallet(midi: int, seconds: float, instrument: str) -> np.ndarray:
    """A struck bar: marimba (fundamental and a fast 4th partial, short) or vibraphone
    (fundamental and 4th partial, long, with the motor's tremolo)."""
    hz = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(int(seconds * SR)) / SR
    if instrument == "marimba":
        wave = np.sin(2 * np.pi * hz * t) * np.exp(-t * 7)
        wave += 0.25 * np.sin(2 * np.pi * hz * 3.93 * t) * np.exp(-t * 30)
        return wave * 0.3
    wave = np.sin(2 * np.pi * hz * t) + 0.15 * np.sin(2 * np.pi * hz * 4.0 * t) * np.exp(-t * 4)
    return wave * np.exp(-t * 1.2) * (1 - 0.35 * (0.5 + 0.5 * np.sin(2 * np.pi * 5.5 * t))) * 0.12


def render(pattern: Pattern, params: SpectrogramParams) -> tuple[np.ndarray, int]:
    """Audio of the loop (samples,) and its length in samples (a whole number of hops)."""
    seconds = 2 * pattern.beats_per_bar * 60.0 / pattern.bpm
    frames = round(seconds * params.sample_rate / params.hop_length)
    length = frames * params.hop_length
    rng = np.random.default_rng(sum(map(ord, pattern.name)))
    out = np.zeros(length)
    step = length / len(pattern.kick)
    voices = {
        "kick": (pattern.kick, lambda: _kick(rng)),
        "snare": (pattern.snare, lambda: _snare(rng)),
        "hat": (pattern.hat, lambda: _hat(rng)),
        "bass": (pattern.bass, lambda: _bass(pattern.bass_hz, 2.5 * step / SR)),
    }
    for hits, make in voices.values():
        for i, c in enumerate(hits):
            if c != "x":
                continue
            sound = make() * (1.0 if i % pattern.accent == 0 else 0.8)
            _add_looped(out, round(i * step), sound)
    grid = length / 32  # notes are placed on sixteenths
    for at, chord in pattern.notes:
        for midi in chord:
            _add_looped(out, round(at * grid), _mallet(midi, 2.0, pattern.instrument))
    out *= 0.7 / np.max(np.abs(out))
    return out.astype(np.float32), length


def _add_looped(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    """Mix ``sound`` into ``out`` from ``start``, wrapping past the end (it is a loop)."""
    idx = (start + np.arange(sound.size)) % out.size
    np.add.at(out, idx, sound)


def masks(height: int = 512, width: int = 512) -> dict[str, np.ndarray]:
    """Greyscale masks (white = repaint), Riffusion's names and style."""
    rows = np.arange(height)[:, None] / (height - 1)  # 0 = top (high frequencies)
    cols = np.arange(width)[None, :]
    full = np.ones((height, width))
    top_third = np.where(rows < 1 / 3, 0.75, 1.0) * full
    gradient_dark = np.clip(0.12 + 1.1 * rows**1.3, 0, 1) * full
    beat = width / 8  # two bars of 4/4
    dist = np.abs(((cols + beat / 2) % beat) - beat / 2)
    dip = 0.2 * np.clip(1 - dist / 12, 0, 1) ** 2
    beat_lines = 1 - dip * (rows > 0.5)
    return {
        "mask_top_third_75": top_third,
        "mask_top_third_95": np.where(rows < 1 / 3, 0.95, 1.0) * full,
        "mask_gradient_dark": gradient_dark,
        "mask_gradient_top_70": np.clip(0.7 + 0.3 * rows, 0, 1) * full,
        "mask_gradient_top_fifth_75": np.where(rows < 0.2, 0.75 + 1.25 * rows, 1.0) * full,
        "mask_beat_lines_80": beat_lines * full,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "seed_images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    params = SpectrogramParams()
    for pattern in PATTERNS + WEB_APP_PATTERNS + METER_PATTERNS:
        audio, length = render(pattern, params)
        mel = audio_to_mel(audio[None], params, circular=True)
        image = mel_to_image(mel, params)
        bpm = 2 * pattern.beats_per_bar * 60.0 * params.sample_rate / length
        write_loop_meta(image, LoopMeta(bars=2, beats_per_bar=pattern.beats_per_bar,
                                        bpm=round(bpm, 4)))
        path = args.out / f"{pattern.name}.png"
        save_image(image, path)
        print(f"{path.name}: {image.width} px, {bpm:.2f} BPM")
    for name, mask in masks().items():
        grey = np.clip(np.round(mask * 255), 0, 255).astype(np.uint8)
        Image.fromarray(grey, mode="L").save(args.out / f"{name}.png")
        print(f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
