"""Generation speed on a GPU: the project's generator against diffusers' own img2img pipeline.

Builds a Stable-Diffusion-1.5-shaped model with seeded random weights in a temporary folder
(nothing is downloaded; speed does not depend on the weights), then, in one run and on the
same components and request (a Riffusion request: og_beat, denoising 0.75, guidance 7, alpha
0.5), times:

- the project per clip: generation, and generation plus clip audio (conform), at 50, 20 and
  10 steps; and four alphas batched in one call (``generate_alphas``), per clip;
- the baseline: diffusers' ``StableDiffusionImg2ImgPipeline`` on the same components, same
  prompt, strength and step count (generation only: it has no audio);
- phase reconstruction of one generated image by each method (``fast``, ``quality``,
  ``riffusion``) on the device;
- the fast path (:mod:`engine.model.unet_graphs`): one UNet evaluation at batch 2 eager and
  replayed from its CUDA graph, the one-off capture (warm-up) time, and a clip at each step
  count with the graphs off (the weights stay channels-last). On the CPU the graphs are the
  rerun stand-in, so those figures only show that the path runs.

Prints JSON, then a table. ``--small`` runs the tiny model on the CPU in seconds (the test
suite runs it, so the script cannot rot); without it, a CUDA device is expected (a CPU run of
the full model works, slowly).

    python bench/bench_gpu.py --small
    python bench/bench_gpu.py --device cuda --repeat 3 > results_gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.dsp.phase import mel_to_audio
from engine.dsp.spectrogram import image_to_mel, params_from_image
from engine.live.clip import conform_image
from engine.live.jobs import ClipSpec
from engine.model.pipeline import RiffusionGenerator
from engine.model.request import InferenceRequest
from engine.model.tiny import save_tiny_model, write_tokenizer_files
from engine.model.unet_graphs import RerunBackend, UNetGraphs


def save_sd15_shaped_model(folder: Path, seed: int = 0) -> Path:
    """A diffusers folder with SD-1.5 shapes and seeded random weights (the tiny model's
    tokenizer; the text encoder keeps CLIP-L's width and depth)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from engine.model.tiny import RIFFUSION_SCHEDULER_CONFIG

    write_tokenizer_files(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
        num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder / "text_encoder")
    PNDMScheduler(**RIFFUSION_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline",
             "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"],
             "safety_checker": [None, None], "feature_extractor": [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one warm-up call (kernels, allocator)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def request(steps: int, alpha: float = 0.5) -> InferenceRequest:
    """Riffusion's web-app request (og_beat, denoising 0.75, guidance 7)."""
    return InferenceRequest.from_dict({
        "alpha": alpha, "num_inference_steps": steps, "seed_image_id": "og_beat",
        "start": {"prompt": "jazzy rapping", "seed": 42, "denoising": 0.75, "guidance": 7.0},
        "end": {"prompt": "jazzy rapping", "seed": 43, "denoising": 0.75, "guidance": 7.0}})


def run(model_dir: Path, device: str, steps_list: list[int], repeat: int) -> dict[str, Any]:
    """Every timing of the module docstring, in seconds."""
    gen = RiffusionGenerator.load(str(model_dir), device=device)
    dev = gen.device
    spec = ClipSpec(tempo=93.75, bars=2, beats_per_bar=4, sample_rate=48000,
                    num_samples=round(8 * 60 / 93.75 * 48000))
    out: dict[str, Any] = {"device": str(dev), "dtype": str(gen.parts.dtype),
                           "model": str(model_dir.name), "project": {}, "baseline": {}}
    conform_device = "cuda" if dev.type == "cuda" else "cpu"
    eager = RiffusionGenerator(gen.parts, gen.seed_images, fast_path=False)
    for steps in steps_list:
        req = request(steps)

        def generate(req: InferenceRequest = req) -> Any:
            return gen.generate(req)

        def with_audio(req: InferenceRequest = req) -> Any:
            image = gen.generate(req).image
            return conform_image(image, spec, req, seed_images=gen.seed_images,
                                 device=conform_device)

        def batched(req: InferenceRequest = req) -> Any:
            return gen.generate_alphas(req, [0.25, 0.5, 0.75, 1.0])

        def eager_clip(req: InferenceRequest = req) -> Any:
            return eager.generate(req)

        out["project"][str(steps)] = {
            "generate_s": timed(generate, dev, repeat),
            "generate_fast_path_off_s": timed(eager_clip, dev, repeat),
            "generate_and_audio_s": timed(with_audio, dev, repeat),
            "batched_per_clip_s": timed(batched, dev, repeat) / 4,
        }
        out["baseline"][str(steps)] = {"diffusers_img2img_s": _baseline(gen, req, dev, repeat)}
    image = gen.generate(request(steps_list[-1])).image
    params = params_from_image(image)
    mel = image_to_mel(image, params)
    out["phase_s"] = {
        method: timed(lambda method=method: mel_to_audio(mel, params, method=method,
                                                         circular=True,
                                                         device=conform_device), dev, repeat)
        for method in ("fast", "quality", "riffusion")}
    out["fast_path"] = _fast_path(gen, dev, repeat)
    if dev.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def _fast_path(gen: RiffusionGenerator, dev: torch.device, repeat: int) -> dict[str, Any]:
    """One UNet evaluation (batch 2, a 512 px wide clip's latents) eager and through graphs,
    and how long capturing a new shape takes (what the worker's warm-up spends per width)."""
    unet = gen.parts.unet
    dtype = gen.parts.dtype
    g = torch.Generator(dev).manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 64, 64, generator=g, device=dev,
                         dtype=dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g, device=dev,
                          dtype=dtype)
    t = torch.tensor(500, device=dev)
    graphs = gen.graphs or UNetGraphs(unet, RerunBackend())
    fresh = UNetGraphs(unet, graphs.backend)
    with torch.no_grad():
        _sync(dev)
        start = time.perf_counter()
        fresh(sample, t, context)
        _sync(dev)
        capture_s = time.perf_counter() - start
        eager_s = timed(lambda: unet(sample, t, encoder_hidden_states=context), dev, repeat)
        graph_s = timed(lambda: graphs(sample, t, context), dev, repeat)
    return {"graphs": "cuda" if gen.graphs is not None else "rerun stand-in (cpu)",
            "unet_eval_eager_ms": eager_s * 1000, "unet_eval_graph_ms": graph_s * 1000,
            "capture_s": capture_s}


def _baseline(gen: RiffusionGenerator, req: InferenceRequest, dev: torch.device,
              repeat: int) -> float:
    """diffusers' StableDiffusionImg2ImgPipeline on the same components and request."""
    from diffusers import StableDiffusionImg2ImgPipeline

    parts = gen.parts
    pipe = StableDiffusionImg2ImgPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
        unet=parts.unet, scheduler=parts.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    seed_image = gen.seed_images.load("og_beat").convert("RGB")

    def call() -> Any:
        return pipe(prompt=req.start.prompt, image=seed_image, strength=req.start.denoising,
                    guidance_scale=req.start.guidance,
                    num_inference_steps=req.num_inference_steps,
                    generator=torch.Generator(dev).manual_seed(req.start.seed))

    return timed(call, dev, repeat)


def table(result: dict[str, Any]) -> str:
    """The JSON as a Markdown table (seconds per clip)."""
    lines = [f"device {result['device']} ({result['dtype']}), model {result['model']}", "",
             "| steps | generate | fast path off | + clip audio | 4 alphas batched, per clip "
             "| diffusers img2img |", "|---|---|---|---|---|---|"]
    for steps, row in result["project"].items():
        base = result["baseline"][steps]["diffusers_img2img_s"]
        lines.append(f"| {steps} | {row['generate_s']:.3f} "
                     f"| {row['generate_fast_path_off_s']:.3f} "
                     f"| {row['generate_and_audio_s']:.3f} "
                     f"| {row['batched_per_clip_s']:.3f} | {base:.3f} |")
    fast = result["fast_path"]
    lines += ["", f"UNet evaluation, batch 2: {fast['unet_eval_eager_ms']:.1f} ms eager, "
              f"{fast['unet_eval_graph_ms']:.1f} ms from its graph ({fast['graphs']}); "
              f"capturing a shape: {fast['capture_s']:.2f} s"]
    lines += ["", "| phase method | seconds |", "|---|---|"]
    lines += [f"| {m} | {s:.3f} |" for m, s in result["phase_s"].items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help="the tiny model on the CPU, few steps (seconds; for CI)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="step counts (default 50 20 10; --small: 4 2)")
    args = parser.parse_args()
    steps = args.steps or ([4, 2] if args.small else [50, 20, 10])
    with tempfile.TemporaryDirectory(prefix="riff-bench-gpu-") as tmp:
        if args.small:
            folder = save_tiny_model(Path(tmp) / "tiny")
            result = run(folder, "cpu", steps, max(1, min(args.repeat, 1)))
        else:
            folder = save_sd15_shaped_model(Path(tmp) / "sd15-random")
            result = run(folder, args.device, steps, args.repeat)
    print(json.dumps(result, indent=2))
    print(table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
