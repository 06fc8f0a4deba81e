"""Encoding images and audio for HTTP answers: JPEG/PNG, MP3/WAV/FLAC bytes, data URIs.

Riffusion's server answers a JPEG spectrogram and MP3 audio as data URIs; the native API
answers a PNG (lossless, with the spectrogram's EXIF parameters) and WAV or FLAC audio.
libsndfile (via soundfile) encodes MP3 itself, so no ffmpeg is needed.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile as sf
from PIL import Image

#: libsndfile's MP3 encoder (LAME) accepts these sample rates.
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def data_uri(mime: str, payload: bytes) -> str:
    """``data:MIME;base64,...`` as browsers and Riffusion's web app read it."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """The image as a baseline JPEG (RGB)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG, keeping its EXIF (the spectrogram parameters)."""
    buf = io.BytesIO()
    exif = image.getexif()
    if len(exif):
        image.save(buf, format="PNG", exif=exif)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def audio_bytes(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """``audio`` (channels, samples) float32 encoded as ``fmt``: "mp3", "wav" or "flac".

    WAV is 32-bit float (the samples exactly); FLAC is 24-bit; MP3 is LAME's default VBR.
    Values are clipped to [-1, 1] for the integer and lossy formats.
    """
    frames = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).T)
    buf = io.BytesIO()
    if fmt == "wav":
        sf.write(buf, frames, sample_rate, format="WAV", subtype="FLOAT")
    elif fmt == "flac":
        sf.write(buf, np.clip(frames, -1, 1), sample_rate, format="FLAC", subtype="PCM_24")
    elif fmt == "mp3":
        if sample_rate not in MP3_RATES:
            raise ValueError(f"MP3 cannot carry {sample_rate} Hz")
        sf.write(buf, np.clip(frames, -1, 1), sample_rate, format="MP3")
    else:
        raise ValueError(f"unknown audio format {fmt!r}")
    return buf.getvalue()
