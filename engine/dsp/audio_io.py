"""Reading, writing and resampling audio files (WAV, FLAC, OGG, MP3 through soundfile).

Audio is float32 (channels, samples) throughout the engine. soundfile's bundled libsndfile
reads and writes every format Riffusion's HTTP API needs, so no ffmpeg is involved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO

import numpy as np

from engine.errors import InvalidAudio

log = logging.getLogger(__name__)

#: Formats write_audio knows, by file extension.
FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
_SUBTYPES = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}


def read_audio(
    source: str | Path | IO[bytes], sample_rate: int | None = None
) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 (channels, samples) and its sample rate.

    With ``sample_rate`` the audio is resampled to it. Raises InvalidAudio for unreadable,
    empty or non-finite files.
    """
    import soundfile as sf

    name = str(source) if isinstance(source, (str, Path)) else "audio"
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise InvalidAudio(f"{name}: no such file")
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise InvalidAudio(f"{name}: no such file") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise InvalidAudio(f"{name}: not a readable audio file ({exc})") from None
    if data.size == 0:
        raise InvalidAudio(f"{name}: holds no samples")
    audio = np.ascontiguousarray(data.T, dtype=np.float32)
    if not np.all(np.isfinite(audio)):
        raise InvalidAudio(f"{name}: holds NaN or infinite samples")
    if sample_rate is not None and sample_rate != rate:
        audio = resample(audio, int(rate), sample_rate)
        rate = sample_rate
    return audio, int(rate)


def write_audio(
    target: str | Path | IO[bytes],
    audio: np.ndarray,
    sample_rate: int,
    format: str | None = None,
) -> None:
    """Write float audio (channels, samples) or (samples,) to a file.

    The format comes from ``format`` or the file extension (WAV, FLAC, OGG, MP3); WAV and FLAC
    are 16-bit. Samples outside -1..1 clip, so scale first.
    """
    import soundfile as sf

    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidAudio(f"audio must be (channels, samples) with samples, got {x.shape}")
    if format is None:
        if not isinstance(target, (str, Path)):
            raise InvalidAudio("a format is needed to write to a stream")
        format = FORMATS.get(Path(target).suffix.lower())
        if format is None:
            raise InvalidAudio(f"{target}: unknown audio extension (use {', '.join(FORMATS)})")
    format = format.upper()
    if format not in _SUBTYPES:
        raise InvalidAudio(f"unknown audio format {format}")
    sf.write(
        target,
        np.clip(x.T, -1.0, 1.0),
        int(sample_rate),
        format=format,
        subtype=_SUBTYPES[format],
    )


def resample(audio: np.ndarray, sr_from: int, sr_to: int, device: str = "cpu") -> np.ndarray:
    """Resample float audio (channels, samples) with torchaudio's band-limited sinc filter."""
    if sr_from <= 0 or sr_to <= 0:
        raise InvalidAudio(f"bad sample rates {sr_from} -> {sr_to}")
    x = np.asarray(audio, dtype=np.float32)
    if sr_from == sr_to:
        return x.copy()
    import torch
    import torchaudio

    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    y = torchaudio.functional.resample(t, sr_from, sr_to)
    return np.ascontiguousarray(y.cpu().numpy(), dtype=np.float32)
