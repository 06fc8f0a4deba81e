"""Generation speed on a GPU: the project's generator against diffusers' own img2img pipeline.

Builds a Stable-Diffusion-1.5-shaped model with seeded random weights in a temporary folder
(nothing is downloaded; speed does not depend on the weights), then, in one run and on the
same components and request (a Riffusion request: og_beat, denoising 0.75, guidance 7, alpha
0.5), times:

- the project per clip: generation, and generation plus clip audio (conform), at 50, 20 and
  10 steps; and four alphas batched in one call (``generate_alphas``), per clip;
- the baseline: diffusers' ``StableDiffusionImg2ImgPipeline`` on the same components, same
  prompt, strength and step count (generation only: it has no audio);
- phase reconstruction of one generated image by each method (``fast``, ``gpu``, ``quality``,
  ``riffusion``) on the device, as a loop (what conform runs); on a CUDA device ``fast`` is
  ``gpu`` (the two rows time the same method), on the CPU ``gpu`` is its torch operations;
- the fast path (:mod:`engine.model.unet_graphs`): one UNet evaluation at batch 2 eager and
  replayed from its CUDA graph, the one-off capture (warm-up) time, and a clip at each step
  count with the graphs off (the weights stay channels-last). On the CPU the graphs are the
  rerun stand-in, so those figures only show that the path runs;
- the lattice (knob move to audible): the real engine (scheduler, manual mode, lattice of
  ``--lattice`` alphas rendered with batched calls) drives this generator in a thread,
  against a sink whose audio clock is the wall clock; once the lattice is complete the knob
  moves three times (to 0.3, 0.8, 0.2, at 10 %, 50 % and 90 % of a beat: how long a move
  waits depends on where in the beat it falls), each once the previous value's exact clip
  plays, and the bench times each move to the first sample of the nearest lattice clip
  (``knob_to_audible_s``, also in beats; goal: at most one beat) and, in the same run, to the
  first sample of the exact clip (``exact_to_audible_s``: what a move costs without the
  lattice, the baseline), plus how long the lattice took to fill.

Prints JSON, then a table. ``--small`` runs the tiny model on the CPU in seconds (the test
suite runs it, so the script cannot rot); without it, a CUDA device is expected (a CPU run of
the full model works, slowly).

    python bench/bench_gpu.py --small
    python bench/bench_gpu.py --device cuda --repeat 3 > results_gpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.dsp.phase import mel_to_audio
from engine.dsp.spectrogram import image_to_mel, params_from_image
from engine.live.clip import conform_image
from engine.live.control import Engine
from engine.live.jobs import Clip, ClipSpec, GenerationJob, ProgressCallback
from engine.live.scheduler import SchedulerConfig
from engine.live.state import EngineState
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


def run(model_dir: Path, device: str, steps_list: list[int], repeat: int,
        lattice: int = 9) -> dict[str, Any]:
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
        for method in ("fast", "gpu", "quality", "riffusion")}
    out["fast_path"] = _fast_path(gen, dev, repeat)
    if lattice:
        out["lattice"] = lattice_knob(gen, steps_list[-1], lattice, conform_device)
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
class ThreadGenerator:
    """The generator and conform in a thread: a ``ClipGenerator`` with ``generate_batch``
    for the engine (what the worker process does, without the process). Cancelling a call
    stops its diffusion at the next step."""

    def __init__(self, gen: RiffusionGenerator, conform_device: str) -> None:
        self.gen = gen
        self.conform_device = conform_device

    async def _run(self, jobs: list[GenerationJob]) -> list[Clip]:
        stop = threading.Event()

        def work() -> list[Clip]:
            start = time.perf_counter()
            results = self.gen.generate_alphas(jobs[0].request,
                                               [job.request.alpha for job in jobs],
                                               cancel=stop.is_set)
            return [Clip(job.job_id,
                         conform_image(result.image, job.spec, job.request,
                                       seed_images=self.gen.seed_images,
                                       device=self.conform_device),
                         job.spec, job.request, time.perf_counter() - start)
                    for job, result in zip(jobs, results, strict=True)]

        future = asyncio.get_running_loop().run_in_executor(None, work)
        # A cancelled call's thread ends with Cancelled, which nobody awaits: read it here.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            raise

    async def generate(self, job: GenerationJob, progress: ProgressCallback | None = None
                       ) -> Clip:
        return (await self._run([job]))[0]

    async def generate_batch(self, jobs: list[GenerationJob]) -> list[Clip]:
        return await self._run(list(jobs))


class WallSink:
    """A sink whose audio clock is the wall clock; notes each clip's start (and origin)."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.t0 = time.monotonic()
        self.scheduled: list[tuple[Clip, int, int | None]] = []

    def position(self) -> int:
        return round((time.monotonic() - self.t0) * self.sample_rate)

    def schedule(self, clip: Clip, start_sample: int, origin: int | None = None) -> None:
        self.scheduled.append((clip, start_sample, origin))

    def stop(self) -> None:
        pass

    def wall(self, sample: int) -> float:
        """The monotonic time of ``sample``."""
        return self.t0 + sample / self.sample_rate


def lattice_knob(gen: RiffusionGenerator, steps: int, points: int, conform_device: str,
                 tempo: float = 120.0, timeout_s: float = 600.0) -> dict[str, Any]:
    """Knob move to audible with a full lattice, and to the exact clip (module docstring)."""
    rate = 48000

    async def main() -> dict[str, Any]:
        sink = WallSink(rate)
        state = EngineState({"alpha_auto": False, "alpha": 0.0, "steps": steps,
                             "tempo": tempo, "bars": 1, "prompt_a": "jazzy rapping",
                             "prompt_b": "church bells", "seed": 42, "seed_b": 43,
                             "denoising": 0.75, "guidance": 7.0, "seed_image": "og_beat"})
        engine = Engine(ThreadGenerator(gen, conform_device), sink, sample_rate=rate,
                        state=state, config=SchedulerConfig(lattice=points, lead_s=0.01))
        task = asyncio.ensure_future(engine.run())

        async def until(cond: Callable[[], bool]) -> None:
            end = time.monotonic() + timeout_s
            while not cond():
                if time.monotonic() > end:
                    raise TimeoutError("the lattice bench timed out")
                await asyncio.sleep(0.005)

        beat = rate * 60.0 / tempo
        knobs: list[float | None] = []
        exacts: list[float] = []
        try:
            started = time.monotonic()
            engine.play()
            lattice = engine.scheduler._lattice
            assert lattice is not None
            await until(lambda: len(lattice.done) == points)
            fill_s = time.monotonic() - started
            for phase, alpha in ((0.1, 0.3), (0.5, 0.8), (0.9, 0.2)):
                # The next moment at ``phase`` of a beat (beats counted from a bar line).
                now = sink.position()
                line = engine.transport.bar_start(engine.transport.bar_at(now))
                at = line + phase * beat
                while at < now + 0.05 * rate:
                    at += beat
                await asyncio.sleep(max(0.0, sink.wall(round(at)) - time.monotonic()))
                before = len(sink.scheduled)
                moved = time.monotonic()
                engine.state.set("alpha", alpha)

                def arrived(a: float = alpha, b: int = before) -> bool:
                    return any(c.request.alpha == a for c, _, _ in sink.scheduled[b:])

                await until(arrived)
                after = sink.scheduled[before:]
                jump = next((s for _, s, origin in after if origin is not None), None)
                exact = next(s for c, s, _ in after if c.request.alpha == alpha)
                knobs.append(sink.wall(jump) - moved if jump is not None else None)
                exacts.append(sink.wall(exact) - moved)

                def playing(e: int = exact) -> bool:
                    return sink.position() > e

                await until(playing)  # the next move starts from the exact clip
        finally:
            await engine.close()
            await asyncio.gather(task, return_exceptions=True)
        beat_s = 60.0 / tempo
        heard = [k for k in knobs if k is not None]
        return {"points": points, "tempo": tempo, "beat_s": beat_s, "fill_s": fill_s,
                "moves": len(knobs), "jumps": len(heard),
                "knob_to_audible_s": knobs,
                "knob_to_audible_max_beats": max(heard) / beat_s if heard else None,
                "exact_to_audible_s": exacts}

    return asyncio.run(main())


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
    lat = result.get("lattice")
    if lat:
        def seconds(values: list[float | None]) -> str:
            return ", ".join("no jump" if v is None else f"{v:.3f}" for v in values)

        worst = lat["knob_to_audible_max_beats"]
        lines += ["", "| lattice | knob move to audible (s) | at most | to the exact clip (s) "
                  "| fill |", "|---|---|---|---|---|",
                  f"| {lat['points']} alphas | {seconds(lat['knob_to_audible_s'])} | "
                  + ("-" if worst is None else f"{worst:.2f} beat")
                  + f" | {seconds(lat['exact_to_audible_s'])} | {lat['fill_s']:.2f} s |"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help="the tiny model on the CPU, few steps (seconds; for CI)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lattice", type=int, default=None,
                        help="lattice alphas for the knob-move timing (default 9; --small: "
                             "3; 0 skips it)")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="step counts (default 50 20 10; --small: 4 2)")
    args = parser.parse_args()
    steps = args.steps or ([4, 2] if args.small else [50, 20, 10])
    with tempfile.TemporaryDirectory(prefix="riff-bench-gpu-") as tmp:
        if args.small:
            folder = save_tiny_model(Path(tmp) / "tiny")
            result = run(folder, "cpu", steps, max(1, min(args.repeat, 1)),
                         3 if args.lattice is None else args.lattice)
        else:
            folder = save_sd15_shaped_model(Path(tmp) / "sd15-random")
            result = run(folder, args.device, steps, args.repeat,
                         9 if args.lattice is None else args.lattice)
    print(json.dumps(result, indent=2))
    print(table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
