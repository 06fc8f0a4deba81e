"""One-shot rendering for servers: a request to a spectrogram image and audio, or to a clip.

This is the model side of ``riff serve``: it holds a loaded pipeline and turns an
:class:`~engine.model.request.InferenceRequest` into the generated image plus its audio (Riffusion's
``/run_inference/`` semantics), or a :class:`~engine.live.jobs.GenerationJob` into a finished,
tempo-locked :class:`~engine.live.jobs.Clip` (what a remote engine asks for). torch and diffusers
are imported only when a model is loaded.

Thread: every method except :meth:`Renderer.check` runs on the server's generation thread,
one call at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.live.jobs import Clip, GenerationJob
from engine.model.request import InferenceRequest

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

Cancel = Callable[[], bool]
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True, eq=False)
class Rendered:
    """A generated spectrogram image and its audio, ``audio`` float32 (channels, samples)."""

    image: Image.Image
    audio: np.ndarray
    sample_rate: int
    seconds: float

    @property
    def duration_s(self) -> float:
        """The audio's length in seconds."""
        return self.audio.shape[-1] / self.sample_rate


class Renderer:
    """A loaded model plus the reconstruction settings, ready to render requests.

    ``generator`` is a :class:`engine.model.pipeline.RiffusionGenerator` (anything with its
    ``generate`` and ``seed_images``), ``phase`` the reconstruction method for one-shot
    renders (``mel_to_audio``'s ``method``).
    """

    def __init__(self, generator: Any, *, model: str, phase: str = "fast",
                 device: str = "cpu") -> None:
        self.generator = generator
        self.model = model
        self.phase = phase
        self.device = device

    @classmethod
    def load(
        cls, model: str, *, device: str = "auto", seed_image_dirs: Sequence[Path] = (),
        phase: str = "fast",
    ) -> Renderer:
        """Load ``model`` ("tiny" for the offline test model) with a seed-image library."""
        from engine.model.pipeline import RiffusionGenerator
        from engine.model.seed_images import SeedImageLibrary

        library = SeedImageLibrary(tuple(seed_image_dirs))
        generator = RiffusionGenerator.load(model, device=device, seed_images=library)
        resolved = str(getattr(generator, "device", device))
        return cls(generator, model=model, phase=phase, device=resolved)

    def check(self, request: InferenceRequest) -> None:
        """Raise UnknownId when the request names a seed or mask image that does not exist.

        Cheap (a name lookup, no file read), so servers call it before queueing.
        Thread: any.
        """
        library = getattr(self.generator, "seed_images", None)
        if library is None:
            return
        if request.seed_image_id is not None:
            library.resolve(request.seed_image_id)
        if request.mask_image_id is not None:
            library.resolve(request.mask_image_id, "mask")

    def render(self, request: InferenceRequest, *, cancel: Cancel | None = None,
               progress: Progress | None = None) -> Rendered:
        """Generate the image and reconstruct its audio (not tempo-locked, not looped)."""
        from engine.dsp.phase import mel_to_audio
        from engine.dsp.spectrogram import image_to_mel, params_from_image

        started = time.perf_counter()
        result = self.generator.generate(request, progress=progress, cancel=cancel)
        params = params_from_image(result.image)
        mel = image_to_mel(result.image, params)
        audio = mel_to_audio(mel, params, method=self.phase, device=self.device)
        image = result.image
        if not set(params.to_exif()) <= set(image.getexif()):
            image = image.copy()  # served images always carry their parameters
            image.getexif().update(params.to_exif())
        return Rendered(image, np.asarray(audio, dtype=np.float32), params.sample_rate,
                        time.perf_counter() - started)

    def audio_to_audio(self, request: Any, audio: np.ndarray, sample_rate: int, *,
                       cancel: Cancel | None = None, progress: Progress | None = None) -> Any:
        """Transform ``audio`` with ``request`` (an AudioToAudioRequest), window by window;
        the result is an :class:`engine.takes.audio_to_audio.AudioToAudioResult`.
        ``progress`` reports denoising steps, as :meth:`render` does."""
        from engine.takes.audio_to_audio import audio_to_audio

        return audio_to_audio(self.generator, audio, sample_rate, request, cancel=cancel,
                              step_progress=progress, device=self.device)

    def render_clip(self, job: GenerationJob, *, cancel: Cancel | None = None,
                    progress: Progress | None = None) -> Clip:
        """Generate ``job`` and conform it to its clip spec (tempo lock, seamless loop).

        The same function as the local generator worker (``engine.live.clip.conform_image``), so
        a clip rendered here equals the clip the worker would have made.
        """
        from engine.live.clip import conform_image

        started = time.perf_counter()
        result = self.generator.generate(job.request, progress=progress, cancel=cancel)
        audio = conform_image(result.image, job.spec, job.request,
                              seed_images=self.generator.seed_images, method=self.phase,
                              device=self.device)
        return Clip(job.job_id, np.ascontiguousarray(audio, dtype=np.float32), job.spec,
                    job.request, time.perf_counter() - started)
