"""The usages people copy from guides, working as written: a diffusers-style
``RiffusionPipeline`` and Replicate's (Cog's) riffusion request.

The Riffusion guide this project started from shows::

    pipe = RiffusionPipeline.from_pretrained("riffusion/riffusion-model-v1")
    image = pipe(prompt="funky bass line with slap technique", num_inference_steps=50,
                 guidance_scale=7).images[0]

and Replicate's model with ``prompt_a``, ``prompt_b``, ``alpha``, ``denoising``,
``num_inference_steps``, ``seed_image_id``. Both are thin shapes over the engine's own
:class:`~engine.model.pipeline.RiffusionGenerator` and
:class:`~engine.model.request.InferenceRequest`, so they get its semantics (prompt weighting,
negative prompts, Riffusion-exact img2img) and its offline ``"tiny"`` model.

Thread: a pipeline is used by one thread at a time (the generator's lock serialises calls).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.errors import InvalidRequest
from engine.model.request import MAX_SEED, InferenceRequest, PromptInput

log = logging.getLogger(__name__)

DEFAULT_MODEL = "riffusion/riffusion-model-v1"

#: diffusers ``from_pretrained`` arguments accepted and not needed here (the engine picks
#: the dtype for the device, never downloads, has no safety checker).
_IGNORED = frozenset({"torch_dtype", "revision", "safety_checker", "cache_dir",
                      "local_files_only", "variant", "use_safetensors", "feature_extractor",
                      "requires_safety_checker", "low_cpu_mem_usage"})


@dataclasses.dataclass(frozen=True)
class RiffusionPipelineOutput:
    """What a call returns, shaped like diffusers' ``StableDiffusionPipelineOutput``:
    ``images`` (PIL spectrogram images with Riffusion's EXIF tags) and the ``seeds`` used."""

    images: list[Image.Image]
    seeds: list[int]
    nsfw_content_detected: None = None

    def __getitem__(self, index: int) -> Any:
        """``output[0]`` is the images, as diffusers' tuple-like outputs allow."""
        return (self.images, self.nsfw_content_detected)[index]


class RiffusionPipeline:
    """A diffusers-style pipeline over the engine's generator.

    ``from_pretrained(model)`` takes a hub id (from the local cache only), a diffusers folder
    or ``"tiny"``. Calling it with ``prompt`` renders text-to-image at 512 x 512; with
    ``image`` (or diffusers' older name ``init_image``) and ``strength`` it is img2img, as
    Riffusion's seed-image generation. ``generator`` (a seeded ``torch.Generator``) or
    ``seed`` fixes the result; without them each image draws a random seed (reported in
    ``.seeds``). :meth:`riffuse` takes Riffusion's own ``InferenceInput``.
    """

    def __init__(self, generator: Any, model: str = DEFAULT_MODEL) -> None:
        self.generator = generator
        self.model = model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path = DEFAULT_MODEL, *,
                        device: str = "auto", scheduler: str | None = None,
                        seed_images: Sequence[Path | str] = (),
                        **kwargs: Any) -> RiffusionPipeline:
        """Load a model (ModelUnavailable, with what to do, when it is not there)."""
        from engine.model.pipeline import RiffusionGenerator

        unknown = sorted(set(kwargs) - _IGNORED)
        if unknown:
            raise TypeError(f"from_pretrained() got unexpected argument(s): {', '.join(unknown)}")
        if kwargs:
            log.debug("ignored diffusers arguments: %s", ", ".join(sorted(kwargs)))
        model = str(pretrained_model_name_or_path)
        generator = RiffusionGenerator.load(model, device=device, scheduler=scheduler,
                                            seed_images=list(seed_images))
        return cls(generator, model)

    @property
    def device(self) -> Any:
        """The torch device the model runs on."""
        return self.generator.device

    def to(self, device: str) -> RiffusionPipeline:
        """diffusers' ``.to(device)``: this pipeline if it is already there, else the model
        loaded again on ``device``."""
        import torch

        if torch.device(device) == self.device:
            return self
        return RiffusionPipeline.from_pretrained(self.model, device=device)

    def __call__(self, prompt: str | list[str] = "", num_inference_steps: int = 50,
                 guidance_scale: float = 7.0, negative_prompt: str | None = None,
                 image: Image.Image | None = None, strength: float = 0.75,
                 generator: Any = None, num_images_per_prompt: int = 1,
                 width: int = 512, height: int = 512, seed: int | None = None,
                 init_image: Image.Image | None = None) -> RiffusionPipelineOutput:
        """Render ``prompt`` (or each of a list): text-to-image, or img2img from ``image``.

        ``strength`` is Riffusion's denoising (default 0.75, Riffusion's; diffusers' is 0.8).
        ``height`` must be 512 (a spectrogram has 512 mel rows).
        """
        if height != 512:
            raise InvalidRequest(f"height must be 512 (the spectrogram's mel bins), not {height}")
        if image is not None and init_image is not None:
            raise InvalidRequest("give image or init_image, not both")
        start_image = image if image is not None else init_image
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not 1 <= num_images_per_prompt <= 16:
            raise InvalidRequest("num_images_per_prompt must be between 1 and 16")
        count = len(prompts) * num_images_per_prompt
        seeds = _seeds(count, generator, seed)
        images = []
        for i in range(count):
            text = prompts[i // num_images_per_prompt]
            request = InferenceRequest(
                start=PromptInput(text, seed=seeds[i], negative_prompt=negative_prompt,
                                  denoising=strength, guidance=guidance_scale),
                num_inference_steps=num_inference_steps, seed_image_id=None,
                width=width if start_image is None else None)
            result = self.generator.generate(request, init_image=start_image)
            images.append(result.image)
        return RiffusionPipelineOutput(images, seeds)

    def riffuse(self, inputs: InferenceRequest | Mapping[str, Any],
                init_image: Image.Image | None = None) -> Image.Image:
        """Riffusion's ``RiffusionPipeline.riffuse``: an ``InferenceInput`` (object or JSON)
        rendered from ``init_image``, or from the seed image its ``seed_image_id`` names."""
        request = inputs if isinstance(inputs, InferenceRequest) else (
            InferenceRequest.from_dict(inputs))
        image: Image.Image = self.generator.generate(request, init_image=init_image).image
        return image

    def audio(self, image: Image.Image, method: str = "fast") -> tuple[np.ndarray, int]:
        """The audio of a spectrogram image: see :func:`spectrogram_to_audio`."""
        return spectrogram_to_audio(image, method)


def _seeds(count: int, generator: Any, seed: int | None) -> list[int]:
    """One seed per image: from ``seed`` (counting up), from the ``torch.Generator`` (or one
    per image), else random."""
    if seed is not None and generator is not None:
        raise InvalidRequest("give seed or generator, not both")
    if generator is not None:
        gens = list(generator) if isinstance(generator, list | tuple) else [generator]
        found = [int(g.initial_seed()) % (MAX_SEED + 1) for g in gens]
        if len(found) == count:
            return found
        if len(found) != 1:
            raise InvalidRequest(f"{len(found)} generators for {count} images")
        seed = found[0]
    start = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
    return [(start + i) % (MAX_SEED + 1) for i in range(count)]


def spectrogram_to_audio(image: Image.Image, method: str = "fast") -> tuple[np.ndarray, int]:
    """Audio float32 (channels, samples) and its sample rate from a spectrogram image.

    The guide's "convert to audio (requires additional processing)" step: the image's EXIF
    parameters (Riffusion's defaults when absent) and the engine's phase reconstruction.
    """
    from engine.dsp.phase import mel_to_audio
    from engine.dsp.spectrogram import image_to_mel, params_from_image

    params = params_from_image(image)
    audio = mel_to_audio(image_to_mel(image, params), params, method=method)
    return audio, params.sample_rate


def wav_bytes_from_spectrogram_image(image: Image.Image) -> tuple[io.BytesIO, float]:
    """Riffusion's helper of the same name: a 16-bit WAV of the image's audio (peak
    normalised, as Riffusion's is) and its duration in seconds."""
    from engine.dsp.audio_io import write_audio

    audio, rate = spectrogram_to_audio(image)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0:
        audio = audio * (0.891 / peak)
    buf = io.BytesIO()
    write_audio(buf, audio, rate, format="WAV")
    buf.seek(0)
    return buf, audio.shape[1] / rate


#: Replicate's riffusion model: its inputs and their defaults (its ``predict`` signature).
REPLICATE_DEFAULTS: dict[str, Any] = {
    "prompt_a": "funky synth solo", "denoising": 0.75, "prompt_b": None, "alpha": 0.5,
    "num_inference_steps": 50, "seed_image_id": "vibes",
}
#: Replicate's seed image list spells one mask id wrong; it is accepted under both names.
_SEED_ALIASES = {"mask_graident_top_fifth_75": "mask_gradient_top_fifth_75"}


def replicate_request(data: object) -> InferenceRequest:
    """An InferenceRequest from Replicate's riffusion input (``{"input": {...}}`` or the
    inner object): ``prompt_a``, ``prompt_b``, ``alpha``, ``denoising``,
    ``num_inference_steps``, ``seed_image_id``, plus the engine's optional ``seed``.

    As Replicate's model does: a blank ``prompt_b`` means no interpolation (alpha 0), and
    without ``seed`` the seeds are random (with it, both ends use it, so alpha moves only
    the prompt).
    """
    if isinstance(data, Mapping) and set(data) == {"input"}:
        data = data["input"]
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"input must be a JSON object, not {type(data).__name__}")
    known = {*REPLICATE_DEFAULTS, "seed"}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise InvalidRequest(f"input has unknown field(s): {', '.join(unknown)} "
                             f"(Replicate's riffusion takes {', '.join(sorted(known))})")
    fields = {**REPLICATE_DEFAULTS, **data}
    prompt_b = fields["prompt_b"]
    solo = prompt_b is None or (isinstance(prompt_b, str) and not prompt_b.strip())
    if solo:
        prompt_b = fields["prompt_a"]
    seed = fields.get("seed")
    if seed is None:
        seed_a, seed_b = secrets.randbelow(MAX_SEED + 1), secrets.randbelow(MAX_SEED + 1)
    else:
        seed_a = seed_b = seed
    seed_image = fields["seed_image_id"]
    seed_image = _SEED_ALIASES.get(seed_image, seed_image) if isinstance(seed_image, str) else (
        seed_image)
    denoising = fields["denoising"]
    request = InferenceRequest(
        start=PromptInput(fields["prompt_a"], seed=seed_a, denoising=denoising),
        end=PromptInput(prompt_b, seed=seed_b, denoising=denoising),
        alpha=fields["alpha"], num_inference_steps=fields["num_inference_steps"],
        seed_image_id=seed_image)  # validates every field, alpha included
    return request.replace(alpha=0.0) if solo else request
