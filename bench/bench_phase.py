"""Benchmark: phase reconstruction against Riffusion's torchaudio chain, in the same run.

For each seed image: the baseline (torchaudio InverseMelScale + GriffinLim with Riffusion's
parameters: 32 iterations, momentum 0.99, n_fft 17640), then this engine's "fast", "quality"
and "gpu" methods (``gpu`` is what ``fast`` runs on a CUDA device; on the CPU it runs the same
torch operations, so its convergence here is its convergence there, its time is not), and
"fast" and "gpu" as loops (``*_loop``: circular, what conform runs; their convergence is
measured circularly). Reports wall time and spectral convergence ||M - g M'|| / ||M|| between
the image's mel magnitudes M and those of the reconstruction M' at the best gain g, then the
speed ratios against the baseline and whether the goals are met. Prints JSON.

    python bench/bench_phase.py [FOLDER] [--repeat N] [--device cpu] [--images og_beat agile]

FOLDER defaults to ``../shared/compat/riffusion_seed_images`` relative to the repository.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.dsp.phase import mel_to_audio  # noqa: E402
from engine.dsp.spectrogram import audio_to_mel, image_to_mel, load_image  # noqa: E402

SEEDS = ("og_beat", "agile", "marim", "motorway", "vibes")
SEED_FOLDER = Path("shared") / "compat" / "riffusion_seed_images"
# beside the repository (or beside the folder holding it, for a checkout one level deeper)
DEFAULT_FOLDER = next(
    (base / SEED_FOLDER for base in REPO.parents[:2] if (base / SEED_FOLDER).is_dir()),
    REPO.parent / SEED_FOLDER,
)


def baseline(mel: np.ndarray, seed: int) -> np.ndarray:
    """The straightforward torchaudio chain with Riffusion's parameters."""
    import torchaudio

    inverse = torchaudio.transforms.InverseMelScale(
        n_stft=17640 // 2 + 1,
        n_mels=512,
        sample_rate=44100,
        f_min=0,
        f_max=10000,
        norm=None,
        mel_scale="htk",
    )
    griffin_lim = torchaudio.transforms.GriffinLim(
        n_fft=17640,
        n_iter=32,
        win_length=4410,
        hop_length=441,
        window_fn=torch.hann_window,
        power=1.0,
        momentum=0.99,
        rand_init=True,
    )
    torch.manual_seed(seed)
    with torch.inference_mode():
        return griffin_lim(inverse(torch.from_numpy(mel))).numpy()


def convergence(mel: np.ndarray, audio: np.ndarray, circular: bool = False) -> float:
    """||M - g M'|| / ||M|| at the least-squares gain g (audio scale does not matter)."""
    rebuilt = audio_to_mel(audio, circular=circular).astype(np.float64).ravel()
    target = mel.astype(np.float64).ravel()
    gain = float(target @ rebuilt / max(rebuilt @ rebuilt, 1e-30))
    return float(np.linalg.norm(target - gain * rebuilt) / np.linalg.norm(target))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument(
        "--repeat", type=int, default=1, help="timed runs per method, interleaved (median)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", nargs="*", default=list(SEEDS))
    args = parser.parse_args()

    def engine(method: str, circular: bool = False) -> Callable[[np.ndarray], np.ndarray]:
        return lambda m: mel_to_audio(m, method=method, circular=circular, device=args.device)

    methods = {
        "baseline": lambda m: baseline(m, 0),
        "fast": engine("fast"),
        "quality": engine("quality"),
        "gpu": engine("gpu"),
        "fast_loop": engine("fast", circular=True),
        "gpu_loop": engine("gpu", circular=True),
    }
    first = image_to_mel(load_image(args.folder / f"{args.images[0]}.png"))
    # warm up (numba's compiled kernels load, FFT plans, allocator) at full size; the
    # baseline has nothing to warm but torch itself
    methods["baseline"](first[:, :, :64])
    for method, run in methods.items():
        if method != "baseline":
            run(first)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.images:
        mel = image_to_mel(load_image(args.folder / f"{name}.png"))
        times: dict[str, list[float]] = {method: [] for method in methods}
        audio: dict[str, np.ndarray] = {}
        for _ in range(args.repeat):  # interleaved, so load changes hit every method alike
            for method, run in methods.items():
                start = time.perf_counter()
                audio[method] = run(mel)
                times[method].append(time.perf_counter() - start)
        results[name] = {
            method: {
                "seconds": round(statistics.median(times[method]), 3),
                "convergence": round(
                    convergence(mel, audio[method], method.endswith("_loop")), 4
                ),
            }
            for method in methods
        }
        print(name, results[name], file=sys.stderr, flush=True)
    summary: dict[str, object] = {}
    for method in ("fast", "quality"):
        speed = [results[n]["baseline"]["seconds"] / results[n][method]["seconds"] for n in results]
        summary[f"{method}_speedup_min"] = round(min(speed), 2)
        summary[f"{method}_speedup_per_image"] = [round(s, 2) for s in speed]
    mean = {m: statistics.mean(results[n][m]["convergence"] for n in results) for m in methods}
    summary["mean_convergence"] = {m: round(v, 4) for m, v in mean.items()}
    summary["goal_fast_12x_and_no_worse"] = all(
        results[n]["baseline"]["seconds"] >= 12 * results[n]["fast"]["seconds"]
        and results[n]["fast"]["convergence"] <= results[n]["baseline"]["convergence"]
        for n in results
    )
    summary["gpu_converges_no_worse_than_fast"] = all(
        results[n]["gpu"]["convergence"] <= results[n]["fast"]["convergence"]
        and results[n]["gpu_loop"]["convergence"] <= results[n]["fast_loop"]["convergence"]
        for n in results
    )
    summary["goal_quality_10pct_better_in_baseline_time"] = bool(
        mean["quality"] <= 0.9 * mean["baseline"]
        and all(
            results[n]["quality"]["seconds"] <= results[n]["baseline"]["seconds"] for n in results
        )
    )
    print(
        json.dumps(
            {
                "device": args.device,
                "threads": torch.get_num_threads(),
                "images": results,
                "summary": summary,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
