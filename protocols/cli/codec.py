"""``riff audio-to-image``, ``riff image-to-audio`` and ``riff info``: the spectrogram codec.

Heavy imports (torch through the engine's codec) happen inside the handlers so ``riff --help``
stays fast. Errors the user can cause raise :class:`engine.errors.RiffError`; the dispatcher
prints them as one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import InvalidAudio, InvalidRequest

METHODS = ("fast", "quality", "riffusion")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the codec commands."""
    a2i = subparsers.add_parser(
        "audio-to-image",
        help="audio file -> Riffusion spectrogram image(s)",
        description=(
            "Encode an audio file (WAV, FLAC, OGG, MP3; any sample rate, converted to 44.1 kHz) "
            "as a Riffusion spectrogram image: 512 mel rows, one column per 10 ms, EXIF "
            "parameters. With --clip-seconds a long file becomes numbered clip images "
            "OUT-000.png, OUT-001.png, ..."
        ),
    )
    a2i.add_argument("input", type=Path, help="audio file")
    a2i.add_argument("output", type=Path, help="PNG image to write")
    a2i.add_argument(
        "--clip-seconds",
        type=float,
        default=None,
        metavar="S",
        help="cut the audio into clips of S seconds (5.11 s = 512 px, Riffusion's size)",
    )
    a2i.add_argument("--stereo", action="store_true", help="stereo image (G = left, B = right)")
    a2i.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (cpu)")
    a2i.set_defaults(func=_audio_to_image)

    i2a = subparsers.add_parser(
        "image-to-audio",
        help="Riffusion spectrogram image -> audio file",
        description=(
            "Decode a spectrogram image (PNG/JPEG; parameters from its EXIF, Riffusion's "
            "defaults when absent) to audio. A W px wide image gives (W - 1) * 10 ms; with "
            "--loop, W * 10 ms that repeat without a click. The output is normalised to -1 "
            "dBFS peak unless --keep-level."
        ),
    )
    i2a.add_argument("input", type=Path, help="spectrogram image")
    i2a.add_argument("output", type=Path, help="audio file to write (.wav, .flac, .ogg, .mp3)")
    i2a.add_argument(
        "--method",
        choices=METHODS,
        default="fast",
        help="phase reconstruction: fast (default), quality, or riffusion (Riffusion's own)",
    )
    i2a.add_argument("--loop", action="store_true", help="reconstruct as a seamless loop")
    i2a.add_argument(
        "--keep-level", action="store_true", help="keep the decoded level (clipped at 0 dBFS)"
    )
    i2a.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (cpu)")
    i2a.set_defaults(func=_image_to_audio)

    info = subparsers.add_parser(
        "info",
        help="show a spectrogram image's parameters and loop length",
        description="Print a spectrogram image's size, duration, EXIF parameters and loop.",
    )
    info.add_argument("input", type=Path, help="spectrogram image")
    info.set_defaults(func=_info)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _audio_to_image(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.dsp.audio_io import read_audio
    from engine.dsp.spectrogram import (
        MAX_IMAGE_WIDTH,
        SpectrogramParams,
        audio_to_mel,
        mel_to_image,
        save_image,
    )

    params = SpectrogramParams(stereo=args.stereo)
    audio, _ = read_audio(args.input, sample_rate=params.sample_rate)
    total = audio.shape[1]
    if args.clip_seconds is None:
        if params.width_for_samples(total) > MAX_IMAGE_WIDTH:
            seconds = total / params.sample_rate
            raise InvalidAudio(
                f"{args.input}: {seconds:.1f} s is too long for one image "
                f"(at most {MAX_IMAGE_WIDTH} px); use --clip-seconds"
            )
        clips = [(args.output, audio)]
    else:
        seconds = float(args.clip_seconds)
        if not np.isfinite(seconds) or seconds < 0.02:
            raise InvalidRequest("--clip-seconds must be at least 0.02")
        size = round(seconds * params.sample_rate)
        if params.width_for_samples(size) > MAX_IMAGE_WIDTH:
            raise InvalidRequest(f"--clip-seconds makes images wider than {MAX_IMAGE_WIDTH} px")
        starts = range(0, total, size)
        stem, suffix = args.output.stem, args.output.suffix or ".png"
        clips = [
            (args.output.with_name(f"{stem}-{i:03d}{suffix}"), audio[:, s : s + size])
            for i, s in enumerate(starts)
            if audio.shape[1] - s >= params.hop_length  # skip a last sliver under 10 ms
        ]
    for i, (path, clip) in enumerate(clips):
        mel = audio_to_mel(clip, params, device=args.device)
        save_image(mel_to_image(mel, params), path)
        if len(clips) > 1:
            _progress(f"[{i + 1}/{len(clips)}] {path}")
    if len(clips) == 1:
        print(clips[0][0])
    return 0


def _image_to_audio(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.dsp.audio_io import FORMATS, write_audio
    from engine.dsp.phase import mel_to_audio
    from engine.dsp.spectrogram import image_to_mel, load_image, params_from_image

    if args.output.suffix.lower() not in FORMATS:
        raise InvalidRequest(f"{args.output}: unknown audio extension (use {', '.join(FORMATS)})")
    image = load_image(args.input)
    params = params_from_image(image)
    mel = image_to_mel(image, params)
    if mel.shape[2] > 2000:
        _progress(f"reconstructing {mel.shape[2] / 100:.1f} s with the {args.method} method")
    audio = mel_to_audio(mel, params, method=args.method, circular=args.loop, device=args.device)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0 and (not args.keep_level or peak > 1.0):
        target = 1.0 if args.keep_level else 10 ** (-1 / 20)
        audio = audio * np.float32(target / peak)
    write_audio(args.output, audio, params.sample_rate)
    seconds = audio.shape[1] / params.sample_rate
    print(f"{args.output}: {seconds:.2f} s, {audio.shape[0]} channel(s)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from engine.dsp.spectrogram import load_image, params_from_image, read_loop_meta

    image = load_image(args.input)
    params = params_from_image(image)
    exif = image.getexif()
    meta = read_loop_meta(image, params)
    samples = params.samples_for_width(image.width)
    print(f"file: {args.input}")
    print(f"size: {image.width}x{image.height} px, mode {image.mode}, format {image.format}")
    print(
        f"audio: {samples / params.sample_rate:.3f} s ({samples} samples at "
        f"{params.sample_rate} Hz), {'stereo' if params.stereo else 'mono'}; "
        f"as a loop {image.width * params.hop_length / params.sample_rate:.3f} s"
    )
    print(
        f"spectrogram: hop {params.hop_length}, window {params.win_length}, FFT {params.n_fft}, "
        f"{params.num_frequencies} mel bins {params.min_frequency}-{params.max_frequency} Hz, "
        f"power {params.power_for_image}"
    )
    print(f"exif: {'present' if exif.get(11000) is not None else 'absent (defaults)'}")
    bars = f"{meta.bars} bar{'s' if meta.bars != 1 else ''}"
    print(f"loop: {bars} of {meta.beats_per_bar} beats at {meta.bpm:.2f} BPM")
    if image.height != params.num_frequencies:
        print(f"warning: {image.height} rows, expected {params.num_frequencies}")
    return 0
