"""Riffusion's generation: img2img from a seed image, interpolating two prompts and two seeds.

:class:`RiffusionGenerator` turns an :class:`~engine.model.request.InferenceRequest` into a
spectrogram image with the same semantics and the same random draws, in the same order, as
Riffusion's own pipeline, so a shared request and seed give the same clip:

1. guidance and denoising strength are lerped by ``alpha``;
2. both prompts are embedded with prompt weighting and the embeddings lerped;
3. the seed image is VAE-encoded and its latent sampled with a generator seeded by
   ``start.seed`` (times the VAE scaling factor, 0.18215);
4. noise is the slerp by ``alpha`` of randn from a generator seeded by ``start.seed`` and randn
   from one seeded by ``end.seed``, added at timestep index ``int(steps * strength) + offset``;
5. classifier-free guidance against the empty prompt (when guidance > 1); a mask (white =
   repaint) re-noises the kept area from the original latents after each step.

Where Riffusion is wrong the engine is right: negative prompts are honoured (the unconditional
embedding is the lerped, weighted negative prompt), prompts of different lengths interpolate,
``steps * strength < 1`` still runs one denoising step instead of decoding noise, a request
without a seed image is plain text-to-image, and any width that is a multiple of 8 works.
Note (as in Riffusion) the seed latent is always sampled with ``start.seed``, so alpha 1 equals
the end prompt's own render only when both seeds are equal.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.dsp.spectrogram import (
    TAG_LOOP_BPM,
    LoopMeta,
    SpectrogramParams,
    read_loop_meta,
    write_loop_meta,
)
from engine.errors import Cancelled, InvalidImage, InvalidRequest
from engine.model import loading as models
from engine.model.prompt_weighting import tokenize_weighted, weighted_embedding
from engine.model.request import InferenceRequest
from engine.model.seamless import TimeCircularPadding
from engine.model.seed_images import SeedImageLibrary, widen, widened_meta
from engine.model.unet_graphs import UNetGraphs, cuda_fast_path

logger = logging.getLogger(__name__)

#: Height of a spectrogram image (mel bins) and the default width for text-to-image.
DEFAULT_SIZE = 512
_TEXT_CACHE = 256
_LATENT_CACHE = 16

#: progress(step, total): called on the generating thread after each denoising step; it must
#: return quickly and must not call back into the generator.
ProgressFn = Callable[[int, int], None]
#: cancel() -> bool: polled on the generating thread before each step; True stops generation.
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class GenerationResult:
    """One generated spectrogram.

    ``image``: RGB spectrogram image (Riffusion's EXIF tags set); ``latents``: the final
    denoised latents in model space (before the VAE's 1/0.18215 scaling), float32 on the CPU,
    shape (1, 4, height/8, width/8); ``seconds``: wall time of the generation.
    """

    image: Image.Image
    latents: torch.Tensor
    request: InferenceRequest
    seconds: float


@dataclass
class _Plan:
    """Everything one request needs that does not depend on alpha."""

    scheduler_name: str | None
    init_dist: Any  # the seed image's latent distribution, or None for text-to-image
    mask: torch.Tensor | None
    latent_shape: tuple[int, int, int, int]
    seed_image: Image.Image | None = None
    loop: LoopMeta | None = None  # the output's loop metadata (the seed's, widened)


@dataclass
class _Guide:
    """Classifier-free guidance of one batch: the text embeddings (unconditional first when
    guidance is on) and the scale (one, or one per alpha)."""

    embeddings: torch.Tensor
    do_cfg: bool
    scale: float | torch.Tensor


@dataclass
class _Denoising:
    """One batch's denoising run: the scheduler, its step arguments and timesteps, the
    starting latents, the noise they were made from and, for img2img, the seed latents per
    alpha."""

    scheduler: Any
    extra: dict[str, Any]  # scheduler.step's optional arguments (eta, generator)
    timesteps: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    init_batch: torch.Tensor | None = None


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    """``scheduler.step``'s optional arguments, as Riffusion passes them: eta 0 and the start
    seed's generator, where the scheduler takes them."""
    params = set(inspect.signature(scheduler.step).parameters)
    extra: dict[str, Any] = {}
    if "eta" in params:
        extra["eta"] = 0.0
    if "generator" in params:
        extra["generator"] = generator
    return extra


class RiffusionGenerator:
    """Generates spectrogram images from requests; holds the model and its caches.

    Calls are serialised by a lock, so one generator may be shared between threads, but it is
    meant to live on one worker thread (the model is not re-entrant).
    """

    def __init__(
        self,
        parts: models.ModelParts,
        seed_images: SeedImageLibrary | None = None,
        scheduler: str | None = None,
        *,
        fast_path: bool | None = None,
    ) -> None:
        self.parts = parts
        self.seed_images = seed_images if seed_images is not None else SeedImageLibrary()
        self.scheduler_name = models.scheduler_name(scheduler) if scheduler else None
        vae_config = parts.vae.config
        self.vae_scale = 2 ** (len(vae_config.block_out_channels) - 1)
        self.latent_scale = float(getattr(vae_config, "scaling_factor", 0.18215))
        self._lock = threading.Lock()
        self._text_cache: collections.OrderedDict[tuple[str, int], torch.Tensor] = (
            collections.OrderedDict()
        )
        self._latent_cache: collections.OrderedDict[tuple[Any, ...], Any] = (
            collections.OrderedDict()
        )
        self.unet_calls = 0
        self._seamless = TimeCircularPadding(parts.unet, parts.vae.decoder)
        #: UNet graphs on CUDA (None: the UNet is called directly). ``fast_path`` None means
        #: on where it helps (CUDA); False turns it off; True on a CPU is a no-op.
        self.graphs: UNetGraphs | None = None
        if fast_path is not False:
            self.graphs = cuda_fast_path(parts.unet, parts.device,
                                         lambda: self._seamless.enabled, parts.vae)

    @classmethod
    def load(
        cls,
        model: str = models.DEFAULT_MODEL,
        *,
        device: str = "auto",
        scheduler: str | None = None,
        seed_images: SeedImageLibrary | Sequence[Path | str] | None = None,
        fast_path: bool | None = None,
    ) -> RiffusionGenerator:
        """Load ``model`` (hub id from the local cache, diffusers folder, or ``tiny``).
        ``fast_path``: see :mod:`engine.model.unet_graphs` (default: on for CUDA).

        Raises ModelUnavailable with an actionable message when the model cannot be loaded.
        """
        if scheduler is not None:
            models.scheduler_name(scheduler)  # fail before the slow load
        library = (
            seed_images
            if isinstance(seed_images, SeedImageLibrary)
            else SeedImageLibrary(seed_images or ())
        )
        parts = models.load_parts(model, device)
        logger.info("model %s loaded on %s (%s)", parts.source, parts.device, parts.dtype)
        return cls(parts, library, scheduler, fast_path=fast_path)

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self.parts.device

    # ----------------------------------------------------------------------------- public

    def generate(
        self,
        request: InferenceRequest,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        init_image: Image.Image | None = None,
    ) -> GenerationResult:
        """Render ``request`` at its own alpha. Raises Cancelled if ``cancel()`` turns true.

        ``progress`` and ``cancel`` run on the calling thread, between denoising steps, while
        the generator's lock is held: they must be quick and must not call the generator.
        ``init_image``: an image to start from instead of the request's ``seed_image_id``
        (audio to audio encodes the user's audio to one; see :meth:`generate_alphas`).
        """
        return self.generate_alphas(request, [request.alpha], progress=progress, cancel=cancel,
                                    init_image=init_image)[0]

    def generate_alphas(
        self,
        request: InferenceRequest,
        alphas: Sequence[float],
        *,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        init_image: Image.Image | None = None,
    ) -> list[GenerationResult]:
        """Render ``request`` at each of ``alphas``, batching them into shared UNet calls.

        Alphas whose strength gives the same start step and that agree on whether guidance is
        on run as one batch; each result equals ``generate`` at that alpha within float
        tolerance (exactly the same random draws; ancestral schedulers excepted).

        ``init_image`` (RGB, any size; cropped to multiples of 8 px) replaces the seed image
        that ``seed_image_id`` names, with the same semantics (VAE-encoded, sampled with the
        start seed's generator, noised to the strength's step): an image passed directly is
        an image loaded by id. Its latents are not cached (it has no file to key them on).
        Requests by id are unchanged, so they stay Riffusion-exact.
        """
        if not alphas:
            raise InvalidRequest("no alphas to render")
        requests = [request.replace(alpha=a) for a in alphas]
        with self._lock, torch.no_grad():
            start = time.perf_counter()
            self._seamless.enabled = request.seamless
            plan = self._plan(request, init_image)
            groups: dict[tuple[int, bool], list[int]] = {}
            for index, req in enumerate(requests):
                groups.setdefault(self._group_key(req, plan), []).append(index)
            outputs: dict[int, tuple[Image.Image, torch.Tensor]] = {}
            done = 0
            total = len(groups)
            for indices in groups.values():
                batch = [requests[i] for i in indices]
                images, latents = self._run(batch, plan, progress, cancel)
                for i, img, lat in zip(indices, images, latents, strict=True):
                    outputs[i] = (img, lat)
                done += 1
                logger.debug("batch %d/%d done (%d alphas)", done, total, len(indices))
            seconds = time.perf_counter() - start
        return [
            GenerationResult(outputs[i][0], outputs[i][1], requests[i], seconds)
            for i in range(len(requests))
        ]

    def warm_up(self, requests: Sequence[InferenceRequest]) -> float:
        """Run each request once at one step (results dropped), so the fast path captures
        the UNet's graphs for its shapes before the first real clip needs them; the seconds
        it took. Without the fast path (on the CPU) there is nothing to warm: returns 0."""
        if self.graphs is None:
            return 0.0
        start = time.perf_counter()
        for request in requests:
            self.generate(request.replace(num_inference_steps=1))
        return time.perf_counter() - start

    def text_embedding(self, prompt: str, chunks: int = 1) -> torch.Tensor:
        """The weighted embedding of ``prompt`` with at least ``chunks`` chunks (cached)."""
        key = (prompt, chunks)
        cached = self._text_cache.get(key)
        if cached is not None:
            self._text_cache.move_to_end(key)
            return cached
        with torch.no_grad():
            if prompt == "" and chunks == 1:
                embedding = self._plain_embedding(prompt)
            else:
                embedding = weighted_embedding(
                    self.parts.tokenizer, self.parts.text_encoder, prompt, chunks
                )
        self._text_cache[key] = embedding
        while len(self._text_cache) > _TEXT_CACHE:
            self._text_cache.popitem(last=False)
        return embedding

    def chunks_needed(self, prompt: str) -> int:
        """How many 77-token chunks ``prompt`` needs (1 to 3)."""
        return tokenize_weighted(self.parts.tokenizer, prompt).chunks

    # ----------------------------------------------------------------------------- stages

    def _plain_embedding(self, prompt: str) -> torch.Tensor:
        """Riffusion's unconditional embedding: the tokenizer's own 77-token padding."""
        tok = self.parts.tokenizer
        ids = tok(
            prompt,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.parts.text_encoder(ids.to(self.device))[0]

    def _plan(self, request: InferenceRequest, init_image: Image.Image | None = None) -> _Plan:
        """Validate the request against the model and prepare its seed latents and mask."""
        name = request.scheduler or self.scheduler_name
        if name is not None:
            name = models.scheduler_name(name)
        if init_image is not None:
            return self._plan_image(request, name, init_image)
        if request.seed_image_id is None:
            if request.mask_image_id is not None:
                raise InvalidRequest("a mask needs a seed image (seed_image_id is null)")
            width = request.width or DEFAULT_SIZE
            channels = int(self.parts.unet.config.in_channels)
            shape = (1, channels, DEFAULT_SIZE // self.vae_scale, width // self.vae_scale)
            return _Plan(name, None, None, shape)
        path = self.seed_images.resolve(request.seed_image_id)
        image = self.seed_images.load(request.seed_image_id)
        width = request.width or image.width - image.width % 8
        height = image.height - image.height % 8
        if width < 8 or height < 8:
            raise InvalidImage(f"seed image {request.seed_image_id!r} is too small: {image.size}")
        meta = read_loop_meta(image)
        loop = meta if TAG_LOOP_BPM in image.getexif() and width == image.width else None
        if request.width is not None and request.width != image.width:
            # Another width is more (or fewer) bars at the seed's tempo: the seed is repeated
            # circularly to it (its tempo kept), so the diffusion makes new music across the
            # whole width instead of a stretched or repeated image.
            loop = widened_meta(meta, image.width, width)
            seed_width = image.width
            image = widen(image, meta, width)
        else:
            seed_width = image.width
        dist = self._seed_latent_dist(path, image, width, height)
        mask = None
        if request.mask_image_id is not None:
            mask_image = self.seed_images.load(request.mask_image_id, "mask")
            if mask_image.width == seed_width != width:  # a mask drawn on the seed's grid
                mask_image = widen(mask_image, meta, width)
            mask = self._mask_tensor(mask_image, width, height)
        shape = tuple(dist.mean.shape)
        return _Plan(name, dist, mask, (shape[0], shape[1], shape[2], shape[3]), image, loop)

    def _plan_image(self, request: InferenceRequest, name: str | None,
                    image: Image.Image) -> _Plan:
        """The plan of a request whose seed image was passed directly (not looked up by id)."""
        width = request.width or image.width - image.width % 8
        height = image.height - image.height % 8
        if width < 8 or height < 8:
            raise InvalidImage(f"init image is too small: {image.size}")
        dist = self._encode(image, width, height)
        mask = None
        if request.mask_image_id is not None:
            mask_image = self.seed_images.load(request.mask_image_id, "mask")
            mask = self._mask_tensor(mask_image, width, height)
        shape = tuple(dist.mean.shape)
        return _Plan(name, dist, mask, (shape[0], shape[1], shape[2], shape[3]), image)

    def _seed_latent_dist(self, path: Path, image: Image.Image, width: int, height: int) -> Any:
        """The VAE's latent distribution of a seed image (cached by file, size and dtype).

        The distribution, not a sample, is cached: sampling draws from the request's seeded
        generator, so a cached distribution gives exactly the latents of an uncached run.
        """
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, width, height)
        cached = self._latent_cache.get(key)
        if cached is not None:
            self._latent_cache.move_to_end(key)
            return cached
        dist = self._encode(image, width, height)
        self._latent_cache[key] = dist
        while len(self._latent_cache) > _LATENT_CACHE:
            self._latent_cache.popitem(last=False)
        return dist

    def _encode(self, image: Image.Image, width: int, height: int) -> Any:
        """The VAE's latent distribution of ``image`` resized to ``width`` x ``height``."""
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(array[None].transpose(0, 3, 1, 2).copy()) * 2.0 - 1.0
        pixels = pixels.to(device=self.device, dtype=self.parts.dtype)
        return self.parts.vae.encode(pixels).latent_dist

    def _mask_tensor(self, mask: Image.Image, width: int, height: int) -> torch.Tensor:
        """(1, 4, h, w) with 1 where the mask is black (keep) and 0 where white (repaint)."""
        small = mask.convert("L").resize(
            (width // self.vae_scale, height // self.vae_scale), resample=Image.Resampling.NEAREST
        )
        keep = 1.0 - np.asarray(small, dtype=np.float32) / 255.0
        tiled = np.tile(keep, (4, 1, 1))[None]
        return torch.from_numpy(tiled).to(device=self.device, dtype=self.parts.dtype)

    def _generator(self, seed: int) -> torch.Generator:
        """A generator seeded like Riffusion's: on the model's device, on the CPU for MPS."""
        device = "cpu" if self.device.type == "mps" else self.device
        return torch.Generator(device=device).manual_seed(seed)

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.parts.dtype)

    @staticmethod
    def _strength(req: InferenceRequest) -> float:
        a, s, e = req.alpha, req.start, req.end_or_start
        return (1 - a) * s.denoising + a * e.denoising

    @staticmethod
    def _guidance(req: InferenceRequest) -> float:
        a, s, e = req.alpha, req.start, req.end_or_start
        return s.guidance * (1.0 - a) + e.guidance * a

    def _group_key(self, req: InferenceRequest, plan: _Plan) -> tuple[int, bool]:
        steps = req.num_inference_steps
        level = steps if plan.init_dist is None else int(steps * self._strength(req))
        return level, self._guidance(req) > 1.0

    def _schedule(
        self, scheduler: Any, steps: int, strength: float | None
    ) -> tuple[torch.Tensor, Any, int]:
        """Timesteps to run, the timestep the noise is added at, and the loop's start index.

        Riffusion's arithmetic: ``init = min(int(steps * strength) + offset, steps)``, noise at
        ``timesteps[-init]``, loop from ``max(steps - init + offset, 0)``. Where that loop is
        empty (Riffusion decodes the noisy latents unrefined) the last step still runs.
        """
        scheduler.set_timesteps(steps, device=self.device)
        timesteps = scheduler.timesteps
        order = int(getattr(scheduler, "order", 1))
        if strength is None:
            return timesteps, None, 0
        offset = int(scheduler.config.get("steps_offset", 0))
        init = min(int(steps * strength) + offset, steps)
        begin = max(steps - init + offset, 0) * order
        if begin >= len(timesteps) or init == 0:
            begin = len(timesteps) - order
            return timesteps[begin:], timesteps[begin], begin
        noise_t = timesteps[-init] if order == 1 else timesteps[begin]
        return timesteps[begin:], noise_t, begin

    def _embeddings(self, batch: list[InferenceRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """Lerped conditional and unconditional (negative prompt) embeddings, (B, 77k, D)."""
        first = batch[0]
        start, end = first.start, first.end_or_start
        negs = [p.negative_prompt or "" for p in (start, end)]
        chunks = max(self.chunks_needed(t) for t in [start.prompt, end.prompt, *negs])
        cond_a = self.text_embedding(start.prompt, chunks)
        cond_b = self.text_embedding(end.prompt, chunks)
        unc_a = self.text_embedding(negs[0], chunks)
        unc_b = self.text_embedding(negs[1], chunks)
        conds, uncs = [], []
        for req in batch:
            a = req.alpha
            conds.append(cond_a + a * (cond_b - cond_a))
            uncs.append(unc_a if negs[0] == negs[1] else unc_a + a * (unc_b - unc_a))
        return torch.cat(conds), torch.cat(uncs)

    def _run(
        self,
        batch: list[InferenceRequest],
        plan: _Plan,
        progress: ProgressFn | None,
        cancel: CancelFn | None,
    ) -> tuple[list[Image.Image], list[torch.Tensor]]:
        """Denoise one batch of alphas that share their start step and guidance mode.

        Riffusion's random draws, in its order: the seed latent (a fresh generator seeded by
        the start seed), then the start noise and the end noise; the start generator then
        serves any scheduler that draws while stepping.
        """
        first = batch[0]
        gen_start = self._generator(first.start.seed)
        gen_end = self._generator(first.end_or_start.seed)
        cond, uncond = self._embeddings(batch)
        guidance = [self._guidance(r) for r in batch]
        do_cfg = guidance[0] > 1.0
        embeddings = torch.cat([uncond, cond]) if do_cfg else cond
        scheduler = models.make_scheduler(self.parts.scheduler, plan.scheduler_name)
        init_latents = None
        if plan.init_dist is not None:
            init_latents = plan.init_dist.sample(generator=self._generator(first.start.seed))
            init_latents = self.latent_scale * init_latents
        noise_a = self._randn(plan.latent_shape, gen_start)
        noise_b = self._randn(plan.latent_shape, gen_end)
        noise = torch.cat([slerp(r.alpha, noise_a, noise_b) for r in batch])
        run = self._noised_start(scheduler, first, noise, init_latents, len(batch), gen_start)
        guide = _Guide(embeddings, do_cfg, self._guidance_scale(guidance, run.latents.dtype))
        latents = self._denoise(run, guide, plan.mask, progress, cancel)
        images = self._decode(latents, plan.loop)
        return images, [lat[None].float().cpu() for lat in latents]

    def _noised_start(self, scheduler: Any, first: InferenceRequest, noise: torch.Tensor,
                      init_latents: torch.Tensor | None, size: int,
                      generator: torch.Generator) -> _Denoising:
        """Set ``scheduler`` up for the batch: its timesteps, its step arguments (``generator``
        for schedulers that draw) and the starting latents, pure scaled noise (text-to-image)
        or the seed latents noised to the start step."""
        extra = _step_kwargs(scheduler, generator)
        strength = None if init_latents is None else self._strength(first)
        timesteps, noise_t, begin = self._schedule(scheduler, first.num_inference_steps,
                                                   strength)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        if init_latents is None:
            return _Denoising(scheduler, extra, timesteps, noise * scheduler.init_noise_sigma,
                              noise)
        init_batch = init_latents.expand(size, -1, -1, -1)
        t_batch = noise_t.reshape(1).repeat(size).to(self.device)
        latents = scheduler.add_noise(init_batch, noise, t_batch)
        return _Denoising(scheduler, extra, timesteps, latents, noise, init_batch)

    def _guidance_scale(self, guidance: list[float], dtype: torch.dtype) -> float | torch.Tensor:
        """One guidance scale for the batch, or one per alpha (B, 1, 1, 1) when they differ."""
        if len(set(guidance)) == 1:
            return guidance[0]
        scale = torch.tensor(guidance, device=self.device, dtype=dtype)
        return scale[:, None, None, None]

    def _denoise(self, run: _Denoising, guide: _Guide, mask: torch.Tensor | None,
                 progress: ProgressFn | None, cancel: CancelFn | None) -> torch.Tensor:
        """The denoising loop: cancel is polled before and progress reported after each step;
        a mask re-noises the kept area from the seed latents after each step."""
        scheduler, latents = run.scheduler, run.latents
        total = len(run.timesteps)
        # The scheduler's arithmetic gets each timestep from a host copy (one transfer, here):
        # several schedulers index host tables with it, which with a GPU timestep is a sync
        # per step that stalls the launch queue. The UNet gets the device's.
        host_steps = run.timesteps.cpu()
        for i, (t, t_host) in enumerate(zip(run.timesteps, host_steps, strict=True)):
            if cancel is not None and cancel():
                raise Cancelled(f"generation cancelled after {i} of {total} steps")
            pred = self._guided_prediction(guide, scheduler, latents, t, t_host)
            latents = scheduler.step(pred, t_host, latents, **run.extra).prev_sample
            if mask is not None and run.init_batch is not None:
                kept = scheduler.add_noise(run.init_batch, run.noise, t.reshape(1))
                latents = kept * mask + latents * (1 - mask)
            if progress is not None:
                progress(i + 1, total)
        return latents

    def _guided_prediction(self, guide: _Guide, scheduler: Any, latents: torch.Tensor,
                           t: torch.Tensor, t_host: torch.Tensor) -> torch.Tensor:
        """One UNet call (timestep ``t`` on the device; ``t_host``, the same on the host, for
        the scheduler): the noise prediction, with classifier-free guidance when on."""
        model_in = torch.cat([latents] * 2) if guide.do_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t_host)
        self.unet_calls += 1
        if self.graphs is not None:
            pred = self.graphs(model_in, t, guide.embeddings)
        else:
            pred = self.parts.unet(model_in, t, encoder_hidden_states=guide.embeddings).sample
        if guide.do_cfg:
            pred_uncond, pred_text = pred.chunk(2)
            pred = pred_uncond + guide.scale * (pred_text - pred_uncond)
        return pred

    def _decode(self, latents: torch.Tensor, loop: LoopMeta | None) -> list[Image.Image]:
        """VAE-decode latents to RGB spectrogram images with Riffusion's EXIF tags."""
        pixels = self.parts.vae.decode((1.0 / self.latent_scale) * latents).sample
        pixels = (pixels / 2 + 0.5).clamp(0, 1)
        array = pixels.cpu().permute(0, 2, 3, 1).float().numpy()
        array = (array * 255).round().astype(np.uint8)
        return [_with_exif(Image.fromarray(a), loop) for a in array]


def _with_exif(image: Image.Image, loop: LoopMeta | None) -> Image.Image:
    """Attach Riffusion's spectrogram EXIF tags, and the output's loop metadata when it has
    any: the seed image's at the seed's width, whole bars of it at a widened width."""
    image.getexif().update(SpectrogramParams().to_exif().items())
    if loop is not None:
        write_loop_meta(image, loop)
    return image


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation of two noise tensors (linear when nearly parallel), as Riffusion's.

    Computed in float32 (float64 is missing on MPS) with Python-float coefficients, so ``t`` = 0
    and 1 return the endpoints exactly.
    """
    if v0 is v1 or torch.equal(v0, v1):
        return v0  # one seed at both ends: no interpolation rounding
    a = v0.float()
    b = v1.float()
    dot = float((a * b).sum() / (a.norm() * b.norm()))
    if abs(dot) > threshold:
        return ((1 - t) * a + t * b).to(v0.dtype)
    theta = float(np.arccos(dot))
    sin_theta = float(np.sin(theta))
    s0 = float(np.sin(theta - theta * t)) / sin_theta
    s1 = float(np.sin(theta * t)) / sin_theta
    return (s0 * a + s1 * b).to(v0.dtype)
