"""Riffusion's spectrogram image format: audio <-> mel magnitudes <-> image.

The model was trained on exactly this format, so every constant here follows Riffusion's own
converter: 44.1 kHz, hop 441 (10 ms), Hann window 4410 (100 ms) zero-padded to an FFT of 17640
(400 ms), centred frames with reflect padding, magnitude (power 1) spectrogram, 512 HTK mel
bins from 0 to 10 kHz without filter normalisation. The image is ``255 - 255 * (mel / max) **
0.25`` as uint8 (truncated), low frequencies at the bottom. Mono images are RGB with R = G = B
and decode from R; stereo images hold the left channel in G and the right one in B (R = 0).
Decoding always scales by the fixed ``max_value`` (30e6), as Riffusion does, so an image gives
the same magnitudes here as there.

Magnitudes are in 16-bit sample units: Riffusion computes them from 16-bit PCM samples, so the
float audio here (-1..1) is scaled by 32768 first. A given sound then gives the same pixels and
the same EXIF tags (including the peak value, tag 11080) as in Riffusion.

Loop metadata (bars, beats per bar, BPM) is stored in three more EXIF tags (11100, 11101,
11102) so it survives PNG and JPEG alike; images without it (Riffusion's seeds) are read as two
bars of 4/4 over the image's loop length (``width * hop`` samples).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from engine import limits
from engine.errors import InvalidAudio, InvalidImage

log = logging.getLogger(__name__)

#: 16-bit full scale: float audio is scaled by this before analysis (see module docstring).
PCM_SCALE = 32768.0

#: Largest image accepted by :func:`load_image` (height, width in pixels).
MAX_IMAGE_HEIGHT = 4096
MAX_IMAGE_WIDTH = 8192

#: Modes :func:`load_image` accepts (8 bits per channel; palette and alpha are converted).
ACCEPTED_MODES = frozenset({"L", "LA", "P", "PA", "RGB", "RGBA"})

# EXIF tags, Riffusion's numbering (SpectrogramParams.ExifTags) plus our loop metadata.
TAG_SAMPLE_RATE = 11000
TAG_STEREO = 11005
TAG_TRIPLE_RES_MONO = 11007
TAG_STEP_SIZE_MS = 11010
TAG_WINDOW_DURATION_MS = 11020
TAG_PADDED_DURATION_MS = 11030
TAG_NUM_FREQUENCIES = 11040
TAG_MIN_FREQUENCY = 11050
TAG_MAX_FREQUENCY = 11060
TAG_POWER_FOR_IMAGE = 11070
TAG_MAX_VALUE = 11080
TAG_LOOP_BARS = 11100
TAG_LOOP_BEATS_PER_BAR = 11101
TAG_LOOP_BPM = 11102


@dataclass(frozen=True)
class SpectrogramParams:
    """Parameters of the audio <-> spectrogram image conversion (Riffusion's defaults).

    ``max_value`` is the magnitude that pixel value 0 decodes to. Sample counts are derived
    once, in samples, exactly as Riffusion truncates them.
    """

    sample_rate: int = 44100
    stereo: bool = False
    step_size_ms: int = 10
    window_duration_ms: int = 100
    padded_duration_ms: int = 400
    num_frequencies: int = 512
    min_frequency: int = 0
    max_frequency: int = 10000
    power_for_image: float = 0.25
    max_value: float = 30e6

    def __post_init__(self) -> None:
        def bad(msg: str) -> InvalidImage:
            return InvalidImage(f"invalid spectrogram parameters: {msg}")

        if not 8000 <= self.sample_rate <= 192000:
            raise bad(f"sample rate {self.sample_rate} Hz outside 8000..192000")
        if self.hop_length < 1 or self.win_length < 2:
            raise bad("step and window must be at least one sample")
        if self.win_length > self.n_fft:
            raise bad("window longer than the padded FFT length")
        if self.n_fft > 4 * self.sample_rate:
            raise bad("window or FFT longer than 4 s")
        if not 1 <= self.num_frequencies <= 4096:
            raise bad(f"{self.num_frequencies} mel bins outside 1..4096")
        if not 0 <= self.min_frequency < self.max_frequency <= self.sample_rate / 2:
            raise bad(f"frequency range {self.min_frequency}..{self.max_frequency} Hz invalid")
        if not 0 < self.power_for_image <= 4:
            raise bad(f"power for image {self.power_for_image} outside (0, 4]")
        if not (np.isfinite(self.max_value) and self.max_value > 0):
            raise bad(f"max value {self.max_value} not positive")

    @property
    def hop_length(self) -> int:
        """Samples between frames (441)."""
        return int(self.step_size_ms / 1000.0 * self.sample_rate)

    @property
    def win_length(self) -> int:
        """Samples in the Hann window (4410)."""
        return int(self.window_duration_ms / 1000.0 * self.sample_rate)

    @property
    def n_fft(self) -> int:
        """FFT length, the window zero-padded (17640)."""
        return int(self.padded_duration_ms / 1000.0 * self.sample_rate)

    @property
    def channels(self) -> int:
        """Audio channels an image holds (1 or 2)."""
        return 2 if self.stereo else 1

    def samples_for_width(self, width: int) -> int:
        """Samples of audio a ``width`` px image stands for: ``(width - 1) * hop``."""
        return max(0, width - 1) * self.hop_length

    def width_for_samples(self, samples: int) -> int:
        """Image width of ``samples`` samples of audio (centred frames): ``samples // hop + 1``."""
        return samples // self.hop_length + 1

    def to_exif(self) -> dict[int, Any]:
        """EXIF tags as Riffusion writes them (11000..11080)."""
        return {
            TAG_SAMPLE_RATE: self.sample_rate,
            TAG_STEREO: self.stereo,
            TAG_STEP_SIZE_MS: self.step_size_ms,
            TAG_WINDOW_DURATION_MS: self.window_duration_ms,
            TAG_PADDED_DURATION_MS: self.padded_duration_ms,
            TAG_NUM_FREQUENCIES: self.num_frequencies,
            TAG_MIN_FREQUENCY: self.min_frequency,
            TAG_MAX_FREQUENCY: self.max_frequency,
            TAG_POWER_FOR_IMAGE: float(self.power_for_image),
            TAG_MAX_VALUE: float(self.max_value),
        }

    @classmethod
    def from_exif(cls, exif: Mapping[int, Any]) -> SpectrogramParams:
        """Parameters from EXIF tags; absent tags keep Riffusion's defaults.

        Raises InvalidImage for values of the wrong type or range, and for Riffusion's
        triple-resolution mono layout (tag 11007), which this engine does not read.
        """
        if exif.get(TAG_TRIPLE_RES_MONO):
            raise InvalidImage("triple-resolution mono spectrogram images are not supported")
        fields: dict[str, Any] = {}
        names = {
            TAG_SAMPLE_RATE: ("sample_rate", int),
            TAG_STEP_SIZE_MS: ("step_size_ms", int),
            TAG_WINDOW_DURATION_MS: ("window_duration_ms", int),
            TAG_PADDED_DURATION_MS: ("padded_duration_ms", int),
            TAG_NUM_FREQUENCIES: ("num_frequencies", int),
            TAG_MIN_FREQUENCY: ("min_frequency", int),
            TAG_MAX_FREQUENCY: ("max_frequency", int),
            TAG_POWER_FOR_IMAGE: ("power_for_image", float),
            TAG_MAX_VALUE: ("max_value", float),
        }
        try:
            for tag, (name, kind) in names.items():
                if tag in exif:
                    value = kind(float(exif[tag]))
                    if kind is int and value != float(exif[tag]):
                        raise ValueError(f"{name} must be a whole number")
                    fields[name] = value
            if TAG_STEREO in exif:
                fields["stereo"] = bool(int(exif[TAG_STEREO]))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidImage(f"bad spectrogram EXIF tag: {exc}") from None
        return cls(**fields)


@dataclass(frozen=True)
class LoopMeta:
    """The musical length of a spectrogram image: ``bars`` of ``beats_per_bar`` at ``bpm``."""

    bars: int = 2
    beats_per_bar: int = 4
    bpm: float = 93.75

    def __post_init__(self) -> None:
        limits.check_count(self.bars, "loop bars", limits.BARS)
        limits.check_count(self.beats_per_bar, "loop beats per bar", limits.BEATS_PER_BAR)
        object.__setattr__(self, "bpm", limits.check_tempo(self.bpm, "loop tempo"))

    @property
    def beats(self) -> int:
        """Beats in the loop."""
        return self.bars * self.beats_per_bar

    @property
    def seconds(self) -> float:
        """Length of the loop in seconds."""
        return self.beats * 60.0 / self.bpm


def read_loop_meta(image: Image.Image, params: SpectrogramParams | None = None) -> LoopMeta:
    """Loop metadata of ``image``; absent: two bars of 4/4 over ``width * hop`` samples."""
    exif = image.getexif()
    if TAG_LOOP_BPM in exif:
        try:
            return LoopMeta(
                bars=int(exif.get(TAG_LOOP_BARS, 2)),
                beats_per_bar=int(exif.get(TAG_LOOP_BEATS_PER_BAR, 4)),
                bpm=float(exif[TAG_LOOP_BPM]),
            )
        except (TypeError, ValueError) as exc:  # InvalidRequest is a ValueError
            raise InvalidImage(f"bad loop metadata: {exc}") from None
    p = params or params_from_image(image)
    return default_loop_meta(image.width * p.hop_length / p.sample_rate)


def default_loop_meta(seconds: float) -> LoopMeta:
    """Loop metadata for an image without any: 4/4, two bars when that gives 60..200 BPM.

    Riffusion's seeds (512 px = 5.12 s as a loop) read as two bars at 93.75 BPM. Other
    lengths take the power-of-two bar count that lands in 60..200 BPM, or single beats.
    """
    if seconds <= 0:
        raise InvalidImage("an empty loop has no tempo")
    for bars in (2, 1, 4, 8, 16, 32, 64):
        bpm = bars * 4 * 60.0 / seconds
        if 60.0 <= bpm < 200.0:
            return LoopMeta(bars=bars, beats_per_bar=4, bpm=bpm)
    beats = min(16, max(1, round(seconds * 120.0 / 60.0)))  # near 120 BPM, within range
    return LoopMeta(bars=1, beats_per_bar=beats, bpm=min(400.0, max(20.0, beats * 60.0 / seconds)))


def write_loop_meta(image: Image.Image, meta: LoopMeta) -> None:
    """Store ``meta`` in ``image``'s EXIF (saved by :func:`save_image`)."""
    exif = image.getexif()
    exif[TAG_LOOP_BARS] = int(meta.bars)
    exif[TAG_LOOP_BEATS_PER_BAR] = int(meta.beats_per_bar)
    exif[TAG_LOOP_BPM] = float(meta.bpm)


@functools.lru_cache(maxsize=8)
def mel_filterbank(params: SpectrogramParams) -> np.ndarray:
    """The (n_fft // 2 + 1, mel bins) float32 filter bank torchaudio's MelScale uses."""
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(
        n_freqs=params.n_fft // 2 + 1,
        f_min=float(params.min_frequency),
        f_max=float(params.max_frequency),
        n_mels=params.num_frequencies,
        sample_rate=params.sample_rate,
        norm=None,
        mel_scale="htk",
    )
    out = fb.numpy().astype(np.float32)
    out.setflags(write=False)
    return out


def audio_to_mel(
    audio: np.ndarray,
    params: SpectrogramParams | None = None,
    *,
    circular: bool = False,
    device: str = "cpu",
) -> np.ndarray:
    """Mel magnitudes (channels, mel bins, frames) of float audio (channels, samples).

    Channels follow ``params.stereo``: stereo clones a mono input and keeps the first two of
    more; mono averages. ``circular`` treats the audio as a loop (frames wrap around instead
    of reflect padding) and gives ``samples // hop`` frames; otherwise ``samples // hop + 1``.
    """
    import torch

    p = params or SpectrogramParams()
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0 or x.shape[0] == 0:
        raise InvalidAudio(f"audio must be (channels, samples) with samples, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InvalidAudio("audio holds NaN or infinite samples")
    if p.stereo:
        x = np.concatenate([x, x]) if x.shape[0] == 1 else x[:2]
    elif x.shape[0] > 1:
        x = x.mean(axis=0, keepdims=True)
    n = x.shape[1]
    half = p.n_fft // 2
    t = torch.from_numpy(np.ascontiguousarray(x) * np.float32(PCM_SCALE)).to(device)
    if circular:
        if n < p.hop_length:
            raise InvalidAudio("loop shorter than one hop")
        frames = n // p.hop_length
        reps = half // n + 1
        ext = torch.cat([t] * (2 * reps + 1), dim=1)
        start = reps * n - half
        t = ext[:, start : start + frames * p.hop_length + 2 * half]
        center = False
    else:
        frames = n // p.hop_length + 1
        if n <= half:  # reflect padding needs more samples than half an FFT: zero-extend
            t = torch.nn.functional.pad(t, (0, half + 1 - n))
        center = True
    window = torch.hann_window(p.win_length, device=t.device)
    spec = torch.stft(
        t,
        n_fft=p.n_fft,
        hop_length=p.hop_length,
        win_length=p.win_length,
        window=window,
        center=center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )[:, :, :frames]
    fb = torch.from_numpy(mel_filterbank(p).copy()).to(t.device)
    mel = torch.matmul(spec.abs().transpose(1, 2), fb).transpose(1, 2)
    return np.ascontiguousarray(mel.cpu().numpy(), dtype=np.float32)


def mel_to_image(mel: np.ndarray, params: SpectrogramParams | None = None) -> Image.Image:
    """RGB spectrogram image of mel magnitudes (channels, bins, frames), EXIF set.

    Follows Riffusion's arithmetic in float32, including the truncation to uint8, so the
    same magnitudes give the same pixels; the peak magnitude is written to tag 11080.
    """
    p = params or SpectrogramParams()
    m = np.asarray(mel, dtype=np.float32)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[0] not in (1, 2) or m.shape[1] != p.num_frequencies:
        raise InvalidImage(f"mel must be (1 or 2, {p.num_frequencies}, frames), got {m.shape}")
    if m.shape[2] < 1 or not np.all(np.isfinite(m)) or np.any(m < 0):
        raise InvalidImage("mel magnitudes must be finite, non-negative, at least one frame")
    peak = float(np.max(m))
    if peak > 0:
        data = np.power(m / np.float32(peak), np.float32(p.power_for_image))
        data = (np.float32(255) - data * np.float32(255)).astype(np.uint8)
    else:
        data = np.full(m.shape, 255, dtype=np.uint8)
    if data.shape[0] == 1:
        rgb = np.repeat(data[0][:, :, None], 3, axis=2)
    else:
        rgb = np.stack([np.zeros_like(data[0]), data[0], data[1]], axis=2)
    image = Image.fromarray(np.ascontiguousarray(rgb[::-1]), mode="RGB")
    stereo = m.shape[0] == 2
    exif = dataclasses.replace(p, stereo=stereo, max_value=peak if peak > 0 else p.max_value)
    image.getexif().update(exif.to_exif().items())
    return image


def params_from_image(image: Image.Image) -> SpectrogramParams:
    """Decoding parameters of ``image``: its EXIF tags, Riffusion's defaults when absent.

    The EXIF max value records the encoded peak; decoding keeps the fixed 30e6 scale as
    Riffusion's decoder does, so images decode to the same magnitudes in both.
    """
    p = SpectrogramParams.from_exif(image.getexif())
    return dataclasses.replace(p, max_value=SpectrogramParams.max_value)


def image_to_mel(image: Image.Image, params: SpectrogramParams | None = None) -> np.ndarray:
    """Mel magnitudes (channels, bins, frames) float32 of a spectrogram image."""
    p = params or params_from_image(image)
    if image.mode not in ACCEPTED_MODES:
        raise InvalidImage(f"unsupported image mode {image.mode!r} (need 8-bit grey or RGB)")
    if image.height != p.num_frequencies:
        raise InvalidImage(
            f"image is {image.height} px high; a spectrogram has {p.num_frequencies} rows"
        )
    if image.width < 2:
        raise InvalidImage("image must be at least 2 px wide")
    rgb = np.asarray(image.convert("RGB"))[::-1]
    data = rgb[:, :, [1, 2]] if p.stereo else rgb[:, :, :1]
    x = (np.float32(255) - data.transpose(2, 0, 1).astype(np.float32)) / np.float32(255)
    mel = np.power(x, np.float32(1.0 / p.power_for_image)) * np.float32(p.max_value)
    return np.ascontiguousarray(mel, dtype=np.float32)


def load_image(source: str | Path | IO[bytes]) -> Image.Image:
    """Open and fully decode a PNG or JPEG spectrogram image (or a mask).

    Raises InvalidImage for anything that is not a complete PNG/JPEG of an accepted mode and
    at most MAX_IMAGE_HEIGHT x MAX_IMAGE_WIDTH pixels; the size is checked before decoding.
    """
    name = str(source) if isinstance(source, (str, Path)) else "image"
    try:
        image = Image.open(source)
    except FileNotFoundError:
        raise InvalidImage(f"{name}: no such file") from None
    except Image.DecompressionBombError:
        raise InvalidImage(f"{name}: image too large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{name}: not a readable image ({exc})") from None
    if image.format not in ("PNG", "JPEG"):
        image.close()
        raise InvalidImage(f"{name}: {image.format or 'unknown'} images are not supported")
    width, height = image.size
    if width > MAX_IMAGE_WIDTH or height > MAX_IMAGE_HEIGHT or width < 1 or height < 1:
        image.close()
        raise InvalidImage(
            f"{name}: {width}x{height} px exceeds {MAX_IMAGE_WIDTH}x{MAX_IMAGE_HEIGHT} px"
        )
    if image.mode not in ACCEPTED_MODES:
        image.close()
        raise InvalidImage(f"{name}: unsupported image mode {image.mode!r}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"{name}: broken or truncated image ({exc})") from None
    return image


def save_image(image: Image.Image, path: str | Path | IO[bytes], format: str = "PNG") -> None:
    """Write ``image`` with its EXIF (spectrogram parameters and loop metadata)."""
    image.save(path, format=format, exif=image.getexif())
