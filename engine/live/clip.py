"""Clip conform: a generated spectrogram becomes a tempo-locked, seamless loop at the host rate.

Why this order: the tempo lock is done in phase reconstruction itself (the frames are
synthesised at a scaled hop, see :func:`tempo_lock_grid`), so timing follows the host to the
sample while pitch stays, and no extra pass over the audio is needed. Phase is reconstructed
circularly, so the clip's end wraps to its start without a click; its frames are first
retimed for the scaled hop (:mod:`engine.dsp.retime`: hits keep their place and shape instead
of smearing into a pre-echo when the loop is stretched). The last step is one FFT
resampling of the whole loop to exactly
``spec.num_samples`` at the host rate: the FFT treats the signal as periodic, so it converts
44.1 kHz to the JACK rate and absorbs the sub-hop rounding of the frame count without breaking
the seam. Loudness is matched to a fixed RMS target with a soft peak limiter (pointwise, so the
seam stays seamless) instead of Riffusion's per-clip peak normalisation, so consecutive clips
sound equally loud.

Runs in the generator process (it imports torch through :mod:`engine.dsp.phase`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.ndimage
import scipy.signal

from engine.dsp.spectrogram import LoopMeta, SpectrogramParams
from engine.errors import InvalidRequest
from engine.live.jobs import ClipSpec
from engine.model.request import InferenceRequest

if TYPE_CHECKING:
    from PIL import Image


@dataclasses.dataclass(frozen=True)
class LoudnessTarget:
    """RMS target and limiter: ``rms_db`` dBFS, at most ``max_gain_db`` of gain, quieter than
    ``silence_db`` is left alone, peaks soft-limited above ``knee`` towards ``ceiling``."""

    rms_db: float = -18.0
    max_gain_db: float = 30.0
    silence_db: float = -70.0
    knee: float = 0.7
    ceiling: float = 0.98

    def __post_init__(self) -> None:
        if not -60.0 <= self.rms_db <= 0.0:
            raise InvalidRequest("loudness target must be between -60 and 0 dBFS")
        if not 0.0 < self.knee < self.ceiling <= 1.0:
            raise InvalidRequest("limiter needs 0 < knee < ceiling <= 1")


@dataclasses.dataclass(frozen=True)
class ConformSettings:
    """How clips are conformed: phase method, device, output channels, loudness."""

    method: str = "fast"
    device: str = "cpu"
    channels: int = 2
    loudness: LoudnessTarget = LoudnessTarget()


def loop_frames(mel: np.ndarray, meta: LoopMeta, spec: ClipSpec) -> np.ndarray:
    """The frames covering the clip's bars, taken circularly from the image's loop, in
    whole bars: never cut mid-bar.

    The image holds ``meta.bars`` bars. The live planner generates each clip at the width of
    its bars (:meth:`engine.model.seed_images.SeedLoop.clip_width`), so this is the whole
    image; otherwise (a request without that width, e.g. from a remote server's unknown
    seed) a clip of fewer bars takes the first bars and a clip of more repeats the loop.
    When the clip's meter is not the image's (an external master's meter no seed image has),
    each of the image's bars fills one of the clip's bars (the tempo lock then fits its
    beats into the bar), so downbeats stay on the clip's bar lines. The result is not yet
    stretched to the host tempo.
    """
    src = mel.shape[-1]
    want = max(2, round(src * spec.bars / meta.bars))
    if want == src:
        return mel
    return mel[..., np.arange(want) % src]


def stretch_frames(mel: np.ndarray, frames: int) -> np.ndarray:
    """Resample mel magnitudes (…, frames_in) circularly in time to ``frames`` frames.

    Linear interpolation on a circle: the last frame blends into the first, so the loop's
    seam stays a loop. Shrinking averages over the covered span first (no aliasing of
    transients into the gaps).
    """
    src = mel.shape[-1]
    if frames < 1:
        raise InvalidRequest("a clip needs at least one frame")
    if frames == src:
        return mel.copy()
    x = mel.astype(np.float64)
    ratio = src / frames
    if ratio > 1.5:  # box filter over the span each output frame covers
        x = scipy.ndimage.uniform_filter1d(x, size=round(ratio), axis=-1, mode="wrap")
    pos = np.arange(frames) * ratio
    i0 = np.floor(pos).astype(np.int64) % src
    i1 = (i0 + 1) % src
    w = (pos - np.floor(pos))
    out = x[..., i0] * (1.0 - w) + x[..., i1] * w
    # The running-sum box filter can leave -1e-12 where magnitudes are zero: clamp.
    return np.maximum(out, 0.0).astype(np.float32)


def tempo_lock_grid(mel: np.ndarray, samples: float, hop: int) -> tuple[np.ndarray, float]:
    """The frames and synthesis time scale that make ``mel`` a loop of ``samples`` samples.

    Why a time scale and not resampled frames: interpolating magnitudes between 10 ms frames
    blurs every onset across two frames (it moved by 3-4 ms at 70 and 140 BPM); synthesising
    the frames at a scaled hop puts each one, onsets included, at its exact new position, and
    the window, hence the pitch, stays (phase reconstruction first gives the frames the
    magnitudes the scaled hop measures, see :mod:`engine.dsp.retime`, or a stretch would
    smear each hit into a pre-echo). Beyond the range of synthesis hops
    that phase reconstruction handles well (:data:`~engine.dsp.phase.MIN_TIME_SCALE` ..
    :data:`~engine.dsp.phase.MAX_TIME_SCALE`) the frames are first resampled towards it.
    """
    from engine.dsp.phase import MAX_TIME_SCALE, MIN_TIME_SCALE

    frames = mel.shape[-1]
    scale = samples / (frames * hop)
    if not MIN_TIME_SCALE <= scale <= MAX_TIME_SCALE:
        wanted = min(max(scale, MIN_TIME_SCALE * 1.25), MAX_TIME_SCALE / 1.25)
        frames = max(2, round(samples / (hop * wanted)))
        mel = stretch_frames(mel, frames)
        scale = samples / (frames * hop)
    return mel, scale


def match_loudness(audio: np.ndarray, target: LoudnessTarget) -> np.ndarray:
    """Gain to the RMS target (bounded), then a pointwise soft limiter (keeps the loop
    seamless); a second pass makes up for what the limiter took off."""
    src = audio.astype(np.float32, copy=True)
    rms = _rms(src)
    if rms <= 0 or 20 * math.log10(rms) <= target.silence_db:
        return soft_limit(src, target.knee, target.ceiling)
    gain_db = min(target.rms_db - 20 * math.log10(rms), target.max_gain_db)
    out = soft_limit(src * np.float32(10 ** (gain_db / 20)), target.knee, target.ceiling)
    limited = _rms(out)
    if limited > 0:
        gain_db = min(gain_db + target.rms_db - 20 * math.log10(limited), target.max_gain_db)
        out = soft_limit(src * np.float32(10 ** (gain_db / 20)), target.knee, target.ceiling)
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def soft_limit(x: np.ndarray, knee: float, ceiling: float) -> np.ndarray:
    """Identity below ``knee``; above it a tanh curve that never exceeds ``ceiling``."""
    a = np.abs(x)
    over = a > knee
    if np.any(over):
        span = ceiling - knee
        limited = knee + span * np.tanh((a[over] - knee) / span)
        x = x.copy()
        x[over] = np.sign(x[over]) * limited
    return x


def conform(mel: np.ndarray, spec: ClipSpec, *, params: SpectrogramParams | None = None,
            meta: LoopMeta | None = None,
            settings: ConformSettings | None = None, seed: int = 0) -> np.ndarray:
    """Clip audio float32 ``(spec.num_samples, channels)`` from mel magnitudes
    ``(channels, bins, frames)`` of a generated image (see the module docstring)."""
    from engine.dsp.phase import mel_to_audio  # torch: generator process only

    p = params or SpectrogramParams()
    s = settings or ConformSettings()
    if mel.ndim != 3 or mel.shape[-1] < 2:
        raise InvalidRequest(f"mel must be (channels, bins, frames), not {mel.shape}")
    loop = loop_frames(mel, meta, spec) if meta is not None else mel
    samples_at_model_rate = spec.num_samples * p.sample_rate / spec.sample_rate
    loop, scale = tempo_lock_grid(loop, samples_at_model_rate, p.hop_length)
    audio = mel_to_audio(loop, p, method=s.method, circular=True, device=s.device,
                         seed=seed, time_scale=scale)
    exact = scipy.signal.resample(audio.astype(np.float64), spec.num_samples, axis=-1)
    audio = match_loudness(np.asarray(exact, dtype=np.float32), s.loudness)
    if audio.shape[0] == 1 and s.channels > 1:
        audio = np.repeat(audio, s.channels, axis=0)
    elif audio.shape[0] != s.channels:
        audio = np.repeat(audio.mean(axis=0, keepdims=True), s.channels, axis=0)
    return np.ascontiguousarray(audio.T, dtype=np.float32)


def conform_image(image: Image.Image, spec: ClipSpec, request: InferenceRequest, *,
                  seed_images: Any = None, method: str = "fast", device: str = "cpu",
                  channels: int = 2) -> np.ndarray:
    """Clip audio ``(spec.num_samples, channels)`` for a generated spectrogram ``image``.

    The one path from a generation result to clip audio, shared by the local generator
    worker and the server's ``Renderer.render_clip`` (so a remote clip equals a local one):
    spectrogram parameters from the image's EXIF, loop metadata from the request's seed image
    widened to the image's width (looked up in ``seed_images``, a
    :class:`~engine.model.seed_images.SeedImageLibrary`), phase seeded by the start seed,
    reconstruction on the GPU only when ``device`` is a CUDA one.
    """
    from engine.dsp.spectrogram import image_to_mel, params_from_image, read_loop_meta
    from engine.model.seed_images import widened_meta

    params = params_from_image(image)
    meta = None
    if request.seed_image_id and seed_images is not None:
        seed = seed_images.load(request.seed_image_id)
        # The generated image is the seed widened circularly to its width (whole bars at the
        # seed's tempo, see the pipeline); a width of no whole bars reads as its own EXIF.
        meta = widened_meta(read_loop_meta(seed), seed.width, image.width)
        if meta is None:
            meta = read_loop_meta(image)
    settings = ConformSettings(method=method, device=device if device.startswith("cuda")
                               else "cpu", channels=channels)
    return conform(image_to_mel(image, params), spec, params=params, meta=meta,
                   settings=settings, seed=request.start.seed)
