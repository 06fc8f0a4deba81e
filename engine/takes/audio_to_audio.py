"""Audio to audio: riff on the user's own sound with img2img, window by window.

Riffusion's trick beyond text is image-to-image on a recording: encode it as a spectrogram
image, use that as the seed image, and let the denoising strength say how far the model may
move from it ("modifying sounds while preserving the structure of an original clip"). The
model sees 512 px (5.11 s) at a time, so a longer file is cut into clip windows:

- The file is resampled to the codec's 44.1 kHz and cut at *boundaries*: every
  ``window - overlap`` samples, or, with a tempo, on bar lines (as many whole bars as fit in
  one window). Window ``k`` covers ``[boundary_k - overlap, boundary_k+1)``: it starts
  ``overlap`` samples before its boundary, so the joins are equal-power crossfades
  (``cos``/``sin``, whose powers sum to one for uncorrelated material, the usual case; see
  :func:`crossfade` for correlated sides) that *end* on the boundary. On bar lines the new
  window's downbeat is at full level, as the engine's clips are.
- Each window is encoded at full image width (``window_px``; the file's end is padded with
  silence) with :func:`~engine.dsp.spectrogram.audio_to_mel` and normalised to its own peak as
  Riffusion's converter does; the generated image is decoded with that same peak, so the
  output keeps the input's level and dynamics from window to window (a fixed-scale decode
  would make every window equally loud).
- Stereo in, stereo out: the two channels of a window share one peak (their balance stays)
  and are generated as two grey images with the same request and seed (the model was trained
  on grey images; feeding it the codec's R = 0 stereo layout would push it off its data).
  The output spectrogram image uses the codec's stereo layout.
- ``denoising`` 0 means "no change": the window's own image is decoded (the model's VAE
  round trip is skipped), which is the codec's identity and what the crossfades are tested on.
- With an end prompt, alpha ramps from 0 at the first window to 1 at the last (Riffusion's
  audio-to-audio page does the same); the seed stays, as there.
- The result is resampled back to the input's rate and has its length to the sample.

Thread: :func:`audio_to_audio` runs on the caller's thread (a CLI process or a server's
generation thread) and holds the generator for each window in turn.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from engine import limits
from engine.dsp.spectrogram import SpectrogramParams, audio_to_mel, image_to_mel, mel_to_image
from engine.errors import InvalidAudio, InvalidRequest
from engine.model.request import InferenceRequest, PromptInput

log = logging.getLogger(__name__)

#: The codec's parameters (Riffusion's): 44.1 kHz, 10 ms hop, 512 mel bins.
PARAMS = SpectrogramParams()
#: The longest input accepted anywhere (servers set lower limits).
MAX_SECONDS = 3600.0
#: Input sample rates accepted.
MIN_RATE, MAX_RATE = 4000, 384000
#: Window widths accepted, in pixels (multiples of 8).
MIN_WINDOW_PX, MAX_WINDOW_PX = 64, 4096
PHASE_METHODS = ("fast", "quality", "riffusion")

#: progress(windows_done, windows_total), called after each window.
WindowProgress = Callable[[int, int], None]
#: cancel() -> bool, polled between denoising steps.
Cancel = Callable[[], bool]


@dataclasses.dataclass(frozen=True)
class AudioToAudioRequest:
    """What to do with the audio: the prompts and how the file is cut into windows.

    ``start`` (and ``end`` for prompt interpolation across the file) are Riffusion's prompt
    inputs: ``denoising`` is the img2img strength, ``seed`` the seed of every window.
    ``window_px``: the image width of a window (a multiple of 8; 512 px = 5.11 s, the model's
    training width). ``overlap_s``: the crossfade length at each join. ``bpm`` (with
    ``beats_per_bar`` and ``downbeat_s``, where the first bar line is): cut on bar lines.
    ``phase``: the phase reconstruction method. ``scheduler`` and ``mask_image_id`` as in
    :class:`~engine.model.request.InferenceRequest`.
    """

    start: PromptInput
    end: PromptInput | None = None
    num_inference_steps: int = 50
    window_px: int = 512
    overlap_s: float = 0.2
    bpm: float | None = None
    beats_per_bar: int = 4
    downbeat_s: float = 0.0
    scheduler: str | None = None
    mask_image_id: str | None = None
    phase: str = "fast"

    def __post_init__(self) -> None:
        # The generation fields are validated by InferenceRequest (one source of truth).
        self.base_request()
        px = self.window_px
        if isinstance(px, bool) or not isinstance(px, int) or px % 8 or not (
                MIN_WINDOW_PX <= px <= MAX_WINDOW_PX):
            raise InvalidRequest(f"window_px must be a multiple of 8 between {MIN_WINDOW_PX} "
                                 f"and {MAX_WINDOW_PX}, not {px!r}")
        window_s = PARAMS.samples_for_width(px) / PARAMS.sample_rate
        overlap = _finite(self.overlap_s, "overlap_s")
        if not 0.0 <= overlap <= window_s / 4:
            raise InvalidRequest(f"overlap_s must be between 0 and a quarter window "
                                 f"({window_s / 4:.2f} s), not {self.overlap_s!r}")
        object.__setattr__(self, "overlap_s", overlap)
        if self.bpm is not None:
            object.__setattr__(self, "bpm", limits.check_tempo(self.bpm, "bpm"))
        limits.check_count(self.beats_per_bar, "beats_per_bar", limits.BEATS_PER_BAR)
        downbeat = _finite(self.downbeat_s, "downbeat_s")
        if not 0.0 <= downbeat <= MAX_SECONDS:
            raise InvalidRequest(f"downbeat_s must be between 0 and {MAX_SECONDS:g}, "
                                 f"not {self.downbeat_s!r}")
        object.__setattr__(self, "downbeat_s", downbeat)
        if self.phase not in PHASE_METHODS:
            raise InvalidRequest(f"phase must be one of {', '.join(PHASE_METHODS)}, "
                                 f"not {self.phase!r}")
        self.bars_per_window()  # a tempo whose bar does not fit fails here, before any work

    def bars_per_window(self, sample_rate: int = PARAMS.sample_rate) -> int | None:
        """Whole bars per window with ``bpm`` (None without); InvalidRequest if none fits."""
        if self.bpm is None:
            return None
        capacity = PARAMS.samples_for_width(self.window_px) * sample_rate // PARAMS.sample_rate
        overlap = round(self.overlap_s * sample_rate)
        bar = self.beats_per_bar * 60.0 / self.bpm * sample_rate
        bars = math.floor((capacity - overlap - 1) / bar)  # rounding may add a sample
        if bars < 1:
            raise InvalidRequest(
                f"a bar at {self.bpm:g} BPM ({bar / sample_rate:.2f} s) plus the overlap "
                f"does not fit in a {self.window_px} px window "
                f"({capacity / sample_rate:.2f} s); use a wider window_px")
        return bars

    def base_request(self) -> InferenceRequest:
        """The InferenceRequest every window shares (alpha set per window)."""
        return InferenceRequest(start=self.start, end=self.end, alpha=0.0,
                                num_inference_steps=self.num_inference_steps,
                                seed_image_id=None, mask_image_id=self.mask_image_id,
                                scheduler=self.scheduler)

    @property
    def interpolates(self) -> bool:
        """Whether alpha ramps across the file (an end that differs from the start)."""
        return self.end is not None and self.end != self.start

    @classmethod
    def from_dict(cls, data: object) -> AudioToAudioRequest:
        """Build from JSON: the fields above, ``start``/``end`` as Riffusion's PromptInput."""
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"request must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise InvalidRequest(f"request has unknown field(s): {', '.join(unknown)}")
        if "start" not in data:
            raise InvalidRequest("request needs 'start' (a prompt input)")
        fields = dict(data)
        fields["start"] = PromptInput.from_dict(fields["start"], "start")
        if fields.get("end") is not None:
            fields["end"] = PromptInput.from_dict(fields["end"], "end")
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


def with_detected_tempo(request: AudioToAudioRequest, audio: np.ndarray,
                        sample_rate: int) -> AudioToAudioRequest:
    """``request`` with ``bpm`` and ``downbeat_s`` estimated from ``audio``
    (:func:`engine.dsp.tempo.estimate_tempo`); InvalidAudio when no tempo can be found."""
    from engine.dsp.tempo import estimate_tempo

    found = estimate_tempo(audio, sample_rate)
    return dataclasses.replace(request, bpm=round(found.bpm, 3), downbeat_s=found.downbeat_s)


def _finite(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{field} must be a finite number, not {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Window:
    """One clip window, in samples at the codec's rate (44.1 kHz).

    The window's image encodes ``[start, start + length)``; its audio is used over
    ``[start, end)``: faded in over ``[start, boundary)`` (the join with the previous window)
    and, unless it is the last, faded out over ``[end - overlap, end)``.
    """

    index: int
    start: int
    boundary: int
    end: int
    alpha: float


def plan_windows(samples: int, request: AudioToAudioRequest,
                 sample_rate: int = PARAMS.sample_rate) -> list[Window]:
    """Cut ``samples`` samples (at ``sample_rate``, the codec's) into windows.

    Boundaries are every ``window - overlap`` samples, or with ``bpm`` the bar lines
    ``downbeat + k * bars * bar`` (exact, rounded once each: no drift), with as many whole
    bars per window as fit. Raises InvalidRequest when not even one bar plus the overlap fits.
    """
    if samples < 1:
        raise InvalidAudio("the audio holds no samples")
    capacity = PARAMS.samples_for_width(request.window_px) * sample_rate // PARAMS.sample_rate
    overlap = round(request.overlap_s * sample_rate)
    if request.bpm is None:
        unit = float(capacity - overlap)
        origin = 0.0
    else:
        bar = request.beats_per_bar * 60.0 / request.bpm * sample_rate
        unit = (request.bars_per_window(sample_rate) or 1) * bar
        origin = request.downbeat_s * sample_rate % unit  # the first boundary after 0
    bounds = [0]
    k = 0
    while True:
        b = round(origin + k * unit)
        k += 1
        if b >= samples:
            break
        if b > bounds[-1] + overlap and b - overlap > 0:
            bounds.append(b)
    bounds.append(samples)
    count = len(bounds) - 1
    windows = []
    for i in range(count):
        lead = 0 if i == 0 else overlap
        alpha = i / (count - 1) if request.interpolates and count > 1 else 0.0
        windows.append(Window(i, bounds[i] - lead, bounds[i], bounds[i + 1], alpha))
    return windows


@dataclasses.dataclass(frozen=True, eq=False)
class AudioToAudioResult:
    """The transformed audio, float32 (channels, samples) at the input's ``sample_rate`` and
    with its exact length, and the windows it was made of."""

    audio: np.ndarray
    sample_rate: int
    windows: tuple[Window, ...]
    seconds: float

    def spectrogram(self) -> Image.Image:
        """The output's spectrogram image in Riffusion's format (stereo layout for stereo)."""
        from engine.dsp.audio_io import resample

        audio = resample(self.audio, self.sample_rate, PARAMS.sample_rate)
        stereo = audio.shape[0] == 2
        params = dataclasses.replace(PARAMS, stereo=stereo)
        return mel_to_image(audio_to_mel(audio, params), params)


def read_input(source: str | Path | IO[bytes], *, max_seconds: float = MAX_SECONDS,
               max_rate: int = MAX_RATE) -> tuple[np.ndarray, int]:
    """Read an audio file for audio to audio: (channels <= 2, samples) float32 and its rate.

    The duration and rate are checked from the header before the samples are decoded, so an
    absurd file is refused without reading it. More than two channels keep the first two.
    """
    import soundfile as sf

    from engine.dsp.audio_io import read_audio

    name = str(source) if isinstance(source, str | Path) else "audio"
    if isinstance(source, str | Path) and not Path(source).is_file():
        raise InvalidAudio(f"{name}: no such file")
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise InvalidAudio(f"{name}: not a readable audio file ({exc})") from None
    finally:
        if not isinstance(source, str | Path):
            source.seek(0)
    check_input(info.frames, int(info.samplerate), max_seconds=max_seconds, max_rate=max_rate,
                name=name)
    audio, rate = read_audio(source)
    check_input(audio.shape[1], rate, max_seconds=max_seconds, max_rate=max_rate, name=name)
    if audio.shape[0] > 2:
        log.info("%s: %d channels; keeping the first two", name, audio.shape[0])
        audio = np.ascontiguousarray(audio[:2])
    return audio, rate


def check_input(frames: int, rate: int, *, max_seconds: float = MAX_SECONDS,
                max_rate: int = MAX_RATE, name: str = "audio") -> None:
    """Refuse empty audio, rates outside ``MIN_RATE..max_rate`` and over-long audio."""
    if not MIN_RATE <= rate <= max_rate:
        raise InvalidAudio(f"{name}: sample rate {rate} Hz outside {MIN_RATE}..{max_rate} Hz")
    if frames <= 0:
        raise InvalidAudio(f"{name}: holds no samples")
    seconds = frames / rate
    if seconds > max_seconds:
        raise InvalidAudio(f"{name}: {seconds:.1f} s is longer than the {max_seconds:g} s "
                           f"accepted here")


def audio_to_audio(generator: Any, audio: np.ndarray, sample_rate: int,
                   request: AudioToAudioRequest, *, progress: WindowProgress | None = None,
                   step_progress: Callable[[int, int], None] | None = None,
                   cancel: Cancel | None = None, device: str = "cpu") -> AudioToAudioResult:
    """Transform ``audio`` (channels, samples) at ``sample_rate`` with ``generator``.

    ``generator`` is a :class:`~engine.model.pipeline.RiffusionGenerator` (its ``generate``
    takes ``init_image``). ``progress`` is called after each window, ``step_progress`` and
    ``cancel`` between denoising steps (Cancelled propagates). ``device`` runs the phase
    reconstruction.
    """
    from engine.dsp.audio_io import resample
    from engine.dsp.phase import mel_to_audio

    started = time.perf_counter()
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] not in (1, 2):
        raise InvalidAudio(f"audio must be (1 or 2 channels, samples), got {x.shape}")
    check_input(x.shape[1], int(sample_rate))
    if not np.all(np.isfinite(x)):
        raise InvalidAudio("audio holds NaN or infinite samples")
    n_in = x.shape[1]
    x44 = resample(x, int(sample_rate), PARAMS.sample_rate)
    channels = x44.shape[0]
    params = dataclasses.replace(PARAMS, stereo=channels == 2)
    windows = plan_windows(x44.shape[1], request)
    capacity = PARAMS.samples_for_width(request.window_px)
    overlap = round(request.overlap_s * PARAMS.sample_rate)
    padded = np.zeros((channels, windows[-1].start + capacity), dtype=np.float32)
    padded[:, : x44.shape[1]] = x44
    out = np.zeros_like(x44)
    base = request.base_request()
    log.info("audio to audio: %.2f s, %d channel(s), %d window(s) of %d px",
             n_in / sample_rate, channels, len(windows), request.window_px)
    tail: np.ndarray | None = None  # the previous window's unfaded audio over the next join
    for window in windows:
        segment = padded[:, window.start : window.start + capacity]
        mel = audio_to_mel(segment, params)
        peak = float(mel.max())
        image = mel_to_image(mel, params)
        req = base.replace(alpha=window.alpha)
        end = req.end_or_start
        strength = (1 - window.alpha) * req.start.denoising + window.alpha * end.denoising
        if peak > 0 and strength > 0:
            image = _generate_channels(generator, req, image, channels, step_progress, cancel)
        decode = dataclasses.replace(params, max_value=peak if peak > 0 else params.max_value)
        wave = mel_to_audio(image_to_mel(image, decode), decode, method=request.phase,
                            device=device)
        if peak == 0:
            wave = np.zeros_like(wave)
        last = window.index == len(windows) - 1
        tail = _place(out, wave, window, tail, overlap=0 if last else overlap)
        if progress is not None:
            progress(window.index + 1, len(windows))
    result = resample(out, PARAMS.sample_rate, int(sample_rate))
    if result.shape[1] < n_in:
        result = np.pad(result, ((0, 0), (0, n_in - result.shape[1])))
    result = np.ascontiguousarray(result[:, :n_in], dtype=np.float32)
    return AudioToAudioResult(result, int(sample_rate), tuple(windows),
                              time.perf_counter() - started)


def _generate_channels(generator: Any, request: InferenceRequest, image: Image.Image,
                       channels: int, step_progress: Callable[[int, int], None] | None,
                       cancel: Cancel | None) -> Image.Image:
    """Generate one grey image per channel from ``image`` (mono, or the codec's stereo
    layout) and put the results back in the same layout, EXIF kept."""
    rgb = np.asarray(image.convert("RGB"))
    planes = [rgb[:, :, 0]] if channels == 1 else [rgb[:, :, 1], rgb[:, :, 2]]
    outputs = []
    for plane in planes:
        grey = Image.fromarray(np.repeat(plane[:, :, None], 3, axis=2))
        result = generator.generate(request, init_image=grey, progress=step_progress,
                                    cancel=cancel)
        outputs.append(np.asarray(result.image.convert("RGB"))[:, :, 0])
    if channels == 1:
        merged = np.repeat(outputs[0][:, :, None], 3, axis=2)
    else:
        merged = np.stack([np.zeros_like(outputs[0]), outputs[0], outputs[1]], axis=2)
    out = Image.fromarray(np.ascontiguousarray(merged), mode="RGB")
    out.getexif().update(image.getexif().items())
    return out


def _place(out: np.ndarray, wave: np.ndarray, window: Window, tail: np.ndarray | None, *,
           overlap: int) -> np.ndarray | None:
    """Write the window's audio into ``out``, crossfading its lead-in with ``tail``; return
    its own unfaded last ``overlap`` samples, the next join's outgoing side."""
    end = min(window.end, out.shape[1])
    piece = wave[:, : end - window.start]
    lead = window.boundary - window.start
    if lead > 0 and tail is not None:
        out[:, window.start : window.boundary] = crossfade(tail, piece[:, :lead])
        piece = piece[:, lead:]
    body_end = end - overlap
    out[:, window.boundary : body_end] = piece[:, : body_end - window.boundary]
    return piece[:, piece.shape[1] - overlap :].copy() if overlap > 0 else None


def crossfade(outgoing: np.ndarray, incoming: np.ndarray) -> np.ndarray:
    """An equal-power crossfade of two (channels, n) signals, compensated for their correlation.

    ``cos``/``sin`` fades keep the power constant when the two sides are uncorrelated (what
    generated windows are); when they are correlated (the same audio reconstructed twice, at
    low denoising) the sum of ``a x + b y`` has power ``a^2 + b^2 + 2 rho a b``, a bump for
    rho > 0 and a dip for rho < 0. Each channel's gains are divided by the square root of
    that, with rho measured over the join (clamped to -0.5..1 so a near-cancelling pair is
    not blown up), so the join keeps the level for any correlation; rho = 0 is the plain
    equal-power fade.
    """
    n = outgoing.shape[1]
    theta = _ramp(n)
    a, b = np.cos(theta), np.sin(theta)
    x = outgoing.astype(np.float64)
    y = incoming.astype(np.float64)
    out = np.empty_like(outgoing)
    for c in range(outgoing.shape[0]):
        norm = math.sqrt(float(np.dot(x[c], x[c])) * float(np.dot(y[c], y[c])))
        rho = float(np.dot(x[c], y[c])) / norm if norm > 0 else 0.0
        rho = min(1.0, max(-0.5, rho))
        gain = 1.0 / np.sqrt(1.0 + 2.0 * rho * a * b)
        out[c] = (gain * (a * x[c] + b * y[c])).astype(np.float32)
    return out


def _ramp(n: int) -> np.ndarray:
    """Angles 0..pi/2 at sample centres: ``sin`` fades in, ``cos`` out, powers sum to 1."""
    return ((np.arange(n, dtype=np.float64) + 0.5) / n * (np.pi / 2)).astype(np.float32)


def windows_seconds(windows: Sequence[Window]) -> list[float]:
    """The windows' boundaries in seconds (where each join ends)."""
    return [w.boundary / PARAMS.sample_rate for w in windows]
