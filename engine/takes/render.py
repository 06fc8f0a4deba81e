"""One-shot rendering for servers: a request to a spectrogram image and audio, or to a clip.

This is the model side of ``riff serve``: it holds a loaded pipeline and turns an
:class:`~engine.model.request.InferenceRequest` into the generated image plus its audio (Riffusion's
``/run_inference/`` semantics), or a :class:`~engine.live.jobs.GenerationJob` into a finished,
tempo-locked :class:`~engine.live.jobs.Clip` (what a remote engine asks for). torch and diffusers
are imported only when a model is loaded.

Thread: every method except :meth:`Renderer.check` runs on the server's generation thread,
one call at a time.

:meth:`Renderer.render_batch` and :meth:`Renderer.render_clip_batch` take several requests at
once (a Ray Serve replica's ``@serve.batch``): requests that differ only in alpha share their
UNet calls (``generate_alphas``); the others run one after the other in the same call, since
the pipeline batches the alphas of one prompt pair, not different prompts or seeds.
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
        started = time.perf_counter()
        result = self.generator.generate(request, progress=progress, cancel=cancel)
        return self._finish_render(result.image, started)

    def _finish_render(self, image: Image.Image, started: float) -> Rendered:
        """The audio of a generated ``image``, and the image with its EXIF parameters."""
        from engine.dsp.phase import mel_to_audio
        from engine.dsp.spectrogram import image_to_mel, params_from_image

        params = params_from_image(image)
        mel = image_to_mel(image, params)
        audio = mel_to_audio(mel, params, method=self.phase, device=self.device)
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
        started = time.perf_counter()
        result = self.generator.generate(job.request, progress=progress, cancel=cancel)
        return self._finish_clip(job, result.image, started)

    def _finish_clip(self, job: GenerationJob, image: Image.Image, started: float) -> Clip:
        """``job``'s clip from its generated ``image`` (tempo lock, seamless loop)."""
        from engine.live.clip import conform_image

        audio = conform_image(image, job.spec, job.request,
                              seed_images=self.generator.seed_images, method=self.phase,
                              device=self.device)
        return Clip(job.job_id, np.ascontiguousarray(audio, dtype=np.float32), job.spec,
                    job.request, time.perf_counter() - started)

    def render_batch(self, requests: Sequence[InferenceRequest],
                     cancels: Sequence[Cancel | None] | None = None,
                     ) -> list[Rendered | Exception]:
        """:meth:`render` for several requests in one call; one answer per request, in order.

        A request that fails (or whose group is cancelled) gets its exception in its place,
        so one bad request never fails its batch-mates. Requests equal but for alpha are
        generated together (shared UNet calls); a group stops at its next denoising step
        once every one of its members' ``cancels`` answers True.
        """
        def finish(index: int, image: Image.Image, started: float) -> Rendered:
            return self._finish_render(image, started)
        return self._batch(list(requests), cancels, finish)

    def render_clip_batch(self, jobs: Sequence[GenerationJob],
                          cancels: Sequence[Cancel | None] | None = None,
                          ) -> list[Clip | Exception]:
        """:meth:`render_clip` for several jobs in one call (see :meth:`render_batch`)."""
        def finish(index: int, image: Image.Image, started: float) -> Clip:
            return self._finish_clip(jobs[index], image, started)
        return self._batch([j.request for j in jobs], cancels, finish)

    def _batch(self, requests: list[InferenceRequest], cancels: Sequence[Cancel | None] | None,
               finish: Callable[[int, Image.Image, float], Any]) -> list[Any]:
        """Group ``requests`` by everything but alpha, generate each group with
        ``generate_alphas`` and ``finish(index, image, started)`` each member."""
        polls = list(cancels) if cancels is not None else [None] * len(requests)
        if len(polls) != len(requests):
            raise ValueError("one cancel poll per request, or none")
        groups: dict[str, list[int]] = {}
        for index, req in enumerate(requests):
            groups.setdefault(repr(req.replace(alpha=0.0)), []).append(index)
        answers: list[Any] = [None] * len(requests)
        for members in groups.values():
            member_polls = [polls[i] for i in members]

            def cancelled(member_polls: list[Cancel | None] = member_polls) -> bool:
                return all(p is not None and p() for p in member_polls)

            started = time.perf_counter()
            try:
                results = self.generator.generate_alphas(
                    requests[members[0]], [requests[i].alpha for i in members], cancel=cancelled)
            except Exception as exc:  # every member of the group gets it
                for i in members:
                    answers[i] = exc
                continue
            for i, result in zip(members, results, strict=True):
                try:
                    answers[i] = finish(i, result.image, started)
                except Exception as exc:  # this member only
                    answers[i] = exc
        return answers
