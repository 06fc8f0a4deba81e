"""Generation speed: caches and batched alphas against the uncached, one-alpha-at-a-time baseline.

Runs the tiny model (or ``--model``) and prints JSON: seconds per clip for a cold generator
(empty caches: the baseline) and a warm one, and for 4 alphas rendered separately (baseline)
and in one batched call. Outputs are checked equal, so a speed-up never changes the clip.

    python bench/bench_pipeline.py [--model tiny] [--device auto] [--steps 10] [--width 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.model.pipeline import RiffusionGenerator
from engine.model.request import InferenceRequest, PromptInput


def _timed(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 255, (512, args.width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(Path(tmp) / "seed.png")
        gen = RiffusionGenerator.load(args.model, device=args.device, seed_images=[tmp])
        request = InferenceRequest(
            start=PromptInput("jazzy rapping", seed=1),
            end=PromptInput("church organ", seed=2),
            alpha=0.5,
            num_inference_steps=args.steps,
            seed_image_id="seed",
        )
        gen.generate(request)  # warm-up (kernels, allocator)

        def cold() -> None:
            RiffusionGenerator(gen.parts, gen.seed_images).generate(request)

        cold_s = _timed(cold, args.repeats)
        warm_s = _timed(lambda: gen.generate(request), args.repeats)
        alphas = [0.25, 0.5, 0.75, 1.0]
        separate_s = _timed(
            lambda: [gen.generate(request.replace(alpha=a)) for a in alphas], args.repeats
        )
        batched_s = _timed(lambda: gen.generate_alphas(request, alphas), args.repeats)
        separate = [gen.generate(request.replace(alpha=a)).latents for a in alphas]
        batched = [r.latents for r in gen.generate_alphas(request, alphas)]
        max_diff = max(float((a - b).abs().max()) for a, b in zip(separate, batched, strict=True))
        print(
            json.dumps(
                {
                    "model": args.model,
                    "device": str(gen.device),
                    "threads": torch.get_num_threads(),
                    "steps": args.steps,
                    "width": args.width,
                    "clip_cold_s": round(cold_s, 4),
                    "clip_warm_s": round(warm_s, 4),
                    "cache_speedup": round(cold_s / warm_s, 3),
                    "alphas": len(alphas),
                    "separate_s": round(separate_s, 4),
                    "batched_s": round(batched_s, 4),
                    "batch_speedup": round(separate_s / batched_s, 3),
                    "batched_max_abs_diff": max_diff,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
