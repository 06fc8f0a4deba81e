"""``riff render``, ``riff interpolate``, ``riff tiny-model``: generate clips from the shell.

``riff render`` takes Riffusion's InferenceInput JSON (``--request``) and/or flags (flags win)
and writes the spectrogram image and its audio. ``riff interpolate`` renders N alphas between
two prompts/seeds and joins them into one continuous audio file, like Riffusion's playground.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequest

DEFAULT_MODEL = "riffusion/riffusion-model-v1"


def register(subparsers: Any) -> None:
    """Add the ``render`` and ``interpolate`` subcommands."""
    render = subparsers.add_parser(
        "render",
        help="render one clip (spectrogram image + audio) from a prompt or a request file",
        description=(
            "Render one clip with a Riffusion model. The request comes from --request (Riffusion's "
            "InferenceInput JSON, as the riffusion web app sends it) and/or from the flags below; "
            "flags override the file. Example: riff render --model tiny --prompt 'jazzy rapping' "
            "--seed 42 --out clip.wav --image clip.png"
        ),
    )
    _add_request_options(render)
    render.add_argument("--alpha", type=float, help="interpolation position 0..1 (default 0)")
    render.add_argument("--out", type=Path, help="audio file to write (.wav, .flac, .ogg, .mp3)")
    render.add_argument("--image", type=Path, help="spectrogram image to write (.png)")
    a2a = render.add_argument_group(
        "audio to audio (--init-audio: img2img on your own sound, window by window)")
    a2a.add_argument("--init-audio", type=Path, metavar="IN",
                     help="audio file to transform (any format soundfile reads, any rate); "
                     "--out gets its length and rate, --image its spectrogram")
    a2a.add_argument("--bpm", type=_bpm, help="cut windows on bar lines at this tempo; "
                     "'auto' estimates it (and the first beat) from the audio")
    a2a.add_argument("--beats-per-bar", type=int, default=4, help="with --bpm (default 4)")
    a2a.add_argument("--downbeat", type=float, default=0.0, metavar="SECONDS",
                     help="with --bpm: where the first bar line is (default 0)")
    a2a.add_argument("--window-px", type=int, default=512,
                     help="window width in px, a multiple of 8 (default 512 = 5.11 s)")
    a2a.add_argument("--overlap", type=float, default=0.2, metavar="SECONDS",
                     help="equal-power crossfade at each join (default 0.2)")
    render.set_defaults(func=run_render)

    interp = subparsers.add_parser(
        "interpolate",
        help="render N steps between two prompts/seeds into one continuous audio file",
        description=(
            "Render --count clips at alphas evenly spaced from 0 to 1 between the start "
            "(--prompt, --seed) and the end (--to-prompt, --to-seed), and join their audio "
            "into one file, like Riffusion's interpolation page."
        ),
    )
    _add_request_options(interp)
    interp.add_argument("--count", type=int, default=5, help="number of clips (default 5)")
    interp.add_argument(
        "--crossfade",
        type=float,
        default=0.02,
        help="seconds of equal-power crossfade between clips, hiding seam clicks (default 0.02)",
    )
    interp.add_argument(
        "--batch", type=int, default=1, help="alphas per batched UNet call (default 1)"
    )
    interp.add_argument("--out", type=Path, required=True, help="audio file to write")
    interp.add_argument("--image-dir", type=Path, help="folder for each clip's image")
    interp.set_defaults(func=run_interpolate)

    tiny = subparsers.add_parser(
        "tiny-model",
        help="write the tiny random test model as a local diffusers folder",
        description=(
            "Write the tiny random model (SD 1.x shapes, built offline; it makes noise, not "
            "music) as a diffusers folder, usable as --model DIR, for tests and smoke runs."
        ),
    )
    tiny.add_argument("folder", type=Path, help="folder to write (created)")
    tiny.set_defaults(func=run_tiny_model)


def _bpm(value: str) -> float | str:
    """``--bpm``: a number or ``auto``."""
    if value.lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a tempo or 'auto': {value!r}") from None


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    req = parser.add_argument_group("request (override --request)")
    req.add_argument(
        "--request", type=Path, help="Riffusion InferenceInput JSON file, or Replicate's "
        "riffusion input ({\"input\": {\"prompt_a\": ...}}); '-' reads stdin"
    )
    req.add_argument("--prompt", help="start prompt; (word:1.3), (word), [word] weight words "
                     "(default without --request: empty, a variation of the seed image)")
    req.add_argument("--seed", type=int, help="start seed (default 0)")
    req.add_argument("--negative", help="negative prompt for both ends")
    req.add_argument("--to-prompt", help="end prompt (default: the start prompt)")
    req.add_argument("--to-seed", type=int, help="end seed (default: the start seed)")
    req.add_argument(
        "--seed-image", help="seed image id (default og_beat); 'none' for text-to-image"
    )
    req.add_argument("--mask", help="mask image id (white = repaint, black = keep)")
    req.add_argument("--steps", type=int, help="denoising steps (default 50)")
    req.add_argument("--denoising", type=float, help="img2img strength 0..1 (default 0.75)")
    req.add_argument("--guidance", type=float, help="classifier-free guidance (default 7)")
    req.add_argument("--width", type=int, help="image width in px, a multiple of 8")
    req.add_argument("--scheduler", help="ddim, pndm, dpmpp, euler, euler_a, lms, ...")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id (local cache only), diffusers folder, or 'tiny' (default {DEFAULT_MODEL})",
    )
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    model.add_argument(
        "--seed-images",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder of seed images and masks (searched first; repeatable)",
    )
    model.add_argument(
        "--phase",
        default="fast",
        choices=["fast", "quality", "riffusion"],
        help="phase reconstruction method (default fast)",
    )
    model.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_request(args: argparse.Namespace) -> Any:
    """The InferenceRequest from ``--request`` and the flags (flags win)."""
    from engine.model.request import InferenceRequest

    data: dict[str, Any] = {}
    if args.request is not None:
        name = "stdin" if str(args.request) == "-" else str(args.request)
        text = sys.stdin.read() if name == "stdin" else Path(args.request).read_text("utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{name}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise InvalidRequest(f"{name}: must hold a JSON object")
        if "prompt_a" in data or set(data) == {"input"}:  # Replicate's riffusion input
            from engine.model.compat import replicate_request

            data = replicate_request(data).to_dict()
    elif args.prompt is None:
        # No prompt at all: an unconditioned variation of the seed image (the empty prompt is
        # what classifier-free guidance steers away from, so the seed image's style remains).
        args.prompt = ""
    for key in ("start", "end"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise InvalidRequest(f"{key} must be a prompt input object")
    start = dict(data.get("start") or {})
    end = dict(data.get("end") or start)
    for flag, key in (("prompt", "prompt"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            start[key] = getattr(args, flag)
            if data.get("end") is None:
                end[key] = getattr(args, flag)
    for flag, key in (("to_prompt", "prompt"), ("to_seed", "seed")):
        if getattr(args, flag) is not None:
            end[key] = getattr(args, flag)
    for flag, key in (
        ("negative", "negative_prompt"),
        ("denoising", "denoising"),
        ("guidance", "guidance"),
    ):
        if getattr(args, flag) is not None:
            start[key] = end[key] = getattr(args, flag)
    data["start"] = start
    data["end"] = end
    if getattr(args, "alpha", None) is not None:
        data["alpha"] = args.alpha
    if args.steps is not None:
        data["num_inference_steps"] = args.steps
    if args.seed_image is not None:
        data["seed_image_id"] = None if args.seed_image.lower() == "none" else args.seed_image
    for flag, key in (("mask", "mask_image_id"), ("width", "width")):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    if args.scheduler is not None:
        from engine.model.loading import scheduler_name

        data["scheduler"] = scheduler_name(args.scheduler)  # "dpm++" -> "dpmpp"
    return InferenceRequest.from_dict(data)


class _Progress:
    """A tqdm bar on stderr fed by the generator's progress callback (made at the first step)."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar: Any = None

    def __call__(self, step: int, total: int) -> None:
        """Called on the generating thread after each step; only updates the bar."""
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step", file=sys.stderr)
        elif self.bar.total != total or step < self.bar.n:
            self.bar.reset(total=total)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load(args: argparse.Namespace) -> Any:
    from engine.model.pipeline import RiffusionGenerator

    return RiffusionGenerator.load(args.model, device=args.device, seed_images=args.seed_images)


def _audio(generator: Any, image: Any, method: str) -> Any:
    from engine.dsp.phase import mel_to_audio
    from engine.dsp.spectrogram import image_to_mel, params_from_image

    params = params_from_image(image)
    device = "cpu" if generator.device.type == "mps" else str(generator.device)
    return mel_to_audio(image_to_mel(image, params), params, method=method, device=device), params


def _check_outputs(audio: Path | None, image: Path | None) -> None:
    """Fail before the slow part when an output cannot be written."""
    from engine.dsp.audio_io import FORMATS

    if audio is not None and audio.suffix.lower() not in FORMATS:
        raise InvalidRequest(f"{audio}: unknown audio extension (use {', '.join(FORMATS)})")
    for path in (audio, image):
        if path is not None and not path.resolve().parent.is_dir():
            raise InvalidRequest(f"{path}: folder {path.resolve().parent} does not exist")


def run_render(args: argparse.Namespace) -> int:
    """Handler of ``riff render``."""
    if args.out is None and args.image is None:
        raise InvalidRequest("nothing to write: give --out and/or --image")
    from engine.dsp.audio_io import write_audio
    from engine.dsp.spectrogram import save_image

    _check_outputs(args.out, args.image)
    if args.init_audio is not None:
        return run_audio_to_audio(args)
    if args.bpm is not None:
        raise InvalidRequest("--bpm needs --init-audio")
    request = build_request(args)
    generator = _load(args)
    bar = _Progress(not args.no_progress and not args.quiet, "render")
    try:
        result = generator.generate(request, progress=bar)
    finally:
        bar.close()
    written = []
    if args.image is not None:
        save_image(result.image, args.image)
        written.append(str(args.image))
    if args.out is not None:
        audio, params = _audio(generator, result.image, args.phase)
        write_audio(args.out, audio, params.sample_rate)
        written.append(f"{args.out} ({audio.shape[1] / params.sample_rate:.2f} s)")
    print(f"rendered in {result.seconds:.1f} s: {', '.join(written)}")
    return 0


def audio_request(args: argparse.Namespace) -> Any:
    """The AudioToAudioRequest of ``riff render --init-audio``: the prompts, seeds, denoising,
    guidance, steps, scheduler and mask of :func:`build_request`, plus the window flags."""
    from engine.takes.audio_to_audio import AudioToAudioRequest

    for flag, why in (("seed_image", "the audio is the seed image"),
                      ("width", "use --window-px"), ("alpha", "alpha ramps over the file")):
        if getattr(args, flag, None) is not None:
            raise InvalidRequest(f"--{flag.replace('_', '-')} does not go with --init-audio "
                                 f"({why})")
    base = build_request(args)
    return AudioToAudioRequest(
        start=base.start, end=base.end, num_inference_steps=base.num_inference_steps,
        window_px=args.window_px, overlap_s=args.overlap,
        bpm=None if args.bpm == "auto" else args.bpm,
        beats_per_bar=args.beats_per_bar, downbeat_s=args.downbeat,
        scheduler=base.scheduler, mask_image_id=base.mask_image_id, phase=args.phase)


def run_audio_to_audio(args: argparse.Namespace) -> int:
    """``riff render --init-audio IN``: transform a file window by window (a bar of windows
    on the terminal)."""
    from engine.dsp.audio_io import write_audio
    from engine.dsp.spectrogram import save_image
    from engine.takes.audio_to_audio import audio_to_audio, read_input, with_detected_tempo

    request = audio_request(args)
    audio, rate = read_input(args.init_audio)
    if args.bpm == "auto":
        request = with_detected_tempo(request, audio, rate)
        print(f"tempo {request.bpm:.2f} BPM, first beat at {request.downbeat_s:.2f} s "
              f"(estimated)")
    generator = _load(args)
    device = "cpu" if generator.device.type == "mps" else str(generator.device)
    bar: Any = None
    if not args.no_progress and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(desc="audio to audio", unit="window", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        result = audio_to_audio(generator, audio, rate, request, progress=progress,
                                device=device)
    finally:
        if bar is not None:
            bar.close()
    written = []
    if args.image is not None:
        save_image(result.spectrogram(), args.image)
        written.append(str(args.image))
    if args.out is not None:
        write_audio(args.out, result.audio, result.sample_rate)
        written.append(f"{args.out} ({result.audio.shape[1] / rate:.2f} s, "
                       f"{result.audio.shape[0]} channel(s), {rate} Hz)")
    print(f"transformed {len(result.windows)} window(s) in {result.seconds:.1f} s: "
          f"{', '.join(written)}")
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    """Handler of ``riff interpolate``."""
    import numpy as np

    from engine.dsp.audio_io import write_audio
    from engine.dsp.spectrogram import save_image

    if not 2 <= args.count <= 100:
        raise InvalidRequest(f"--count must be between 2 and 100, not {args.count}")
    if not 1 <= args.batch <= 16:
        raise InvalidRequest(f"--batch must be between 1 and 16, not {args.batch}")
    if not 0.0 <= args.crossfade <= 5.0:
        raise InvalidRequest(f"--crossfade must be between 0 and 5 seconds, not {args.crossfade}")
    _check_outputs(args.out, None)
    request = build_request(args)
    generator = _load(args)
    alphas = [float(a) for a in np.linspace(0.0, 1.0, args.count)]
    if args.image_dir is not None:
        args.image_dir.mkdir(parents=True, exist_ok=True)
    bar = _Progress(not args.no_progress and not args.quiet, "interpolate")
    start = time.perf_counter()
    pieces = []
    sample_rate = 44100
    try:
        for first in range(0, len(alphas), args.batch):
            chunk = alphas[first : first + args.batch]
            for n, result in enumerate(generator.generate_alphas(request, chunk, progress=bar)):
                audio, params = _audio(generator, result.image, args.phase)
                sample_rate = params.sample_rate
                pieces.append(audio)
                if args.image_dir is not None:
                    save_image(result.image, args.image_dir / f"clip_{first + n:03d}.png")
    finally:
        bar.close()
    joined = join_audio(pieces, round(args.crossfade * sample_rate))
    write_audio(args.out, joined, sample_rate)
    seconds = time.perf_counter() - start
    print(
        f"rendered {len(pieces)} clips in {seconds:.1f} s: "
        f"{args.out} ({joined.shape[1] / sample_rate:.2f} s)"
    )
    return 0


def run_tiny_model(args: argparse.Namespace) -> int:
    """Handler of ``riff tiny-model``."""
    from engine.model.tiny import save_tiny_model

    if args.folder.exists() and any(args.folder.iterdir()):
        raise InvalidRequest(f"{args.folder} exists and is not empty")
    save_tiny_model(args.folder)
    print(f"wrote the tiny random model to {args.folder} (use it with --model {args.folder})")
    return 0


def join_audio(pieces: list[Any], fade: int) -> Any:
    """Concatenate (channels, samples) pieces with an equal-power crossfade of ``fade``."""
    import numpy as np

    out = pieces[0]
    for piece in pieces[1:]:
        n = min(fade, out.shape[1], piece.shape[1])
        if n == 0:
            out = np.concatenate([out, piece], axis=1)
            continue
        ramp = np.linspace(0.0, np.pi / 2, n, dtype=np.float32)
        mixed = out[:, -n:] * np.cos(ramp) + piece[:, :n] * np.sin(ramp)
        out = np.concatenate([out[:, :-n], mixed, piece[:, n:]], axis=1)
    return out.astype(np.float32)
