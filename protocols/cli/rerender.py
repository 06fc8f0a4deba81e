"""``riff rerender``: replay a recorded set's control log offline at studio quality."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``riff rerender``."""
    p = subparsers.add_parser(
        "rerender",
        help="re-render a recorded set from its control log (.jsonl), offline",
        description=(
            "Replay a control log written while recording: every clip that was heard is "
            "generated again (optionally with more steps, a better phase reconstruction or "
            "another model) and placed on the same bar timeline with the same crossfades. "
            "The same log and settings always give the same audio."
        ),
    )
    p.add_argument("log", type=Path, help="control log (the .jsonl beside a recording)")
    p.add_argument("--out", type=Path, required=True, help="output file, .wav (float) or .flac")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps for every clip (default: as recorded)")
    p.add_argument("--model", default=None,
                   help="model id, folder or 'tiny' (default: the one named in the log)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--phase", default="quality", choices=("riffusion", "fast", "quality"),
                   help="phase reconstruction (default: quality)")
    p.add_argument("--seed-images", type=Path, action="append", default=[], metavar="DIR",
                   help="extra folder of seed/mask images (the take's own NAME.seeds folder "
                        "of captured seed images is searched without it)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the log, load the model, render, report."""
    from engine.errors import InvalidRequest
    from engine.model.loading import DEFAULT_MODEL
    from engine.takes.control_log import read_control_log
    from engine.takes.render import Renderer
    from engine.takes.rerender import RerenderSettings, rerender

    if args.out.suffix.lower() not in (".wav", ".flac"):
        raise InvalidRequest(f"--out must end in .wav or .flac, not {args.out.name!r}")
    if args.out.exists() and not args.force:
        raise InvalidRequest(f"{args.out} exists (use --force to overwrite)")
    settings = RerenderSettings(steps=args.steps)
    control = read_control_log(args.log)
    model = args.model or str(control.header.info.get("model") or DEFAULT_MODEL)
    renderer = Renderer.load(model, device=args.device,
                             seed_image_dirs=[*args.seed_images, *take_seed_folders(args.log)],
                             phase=args.phase)
    started = time.perf_counter()
    result = rerender(control, args.out, renderer.render_clip, settings,
                      progress=_progress_bar)
    seconds = result.frames / result.sample_rate
    print(f"riff rerender: wrote {result.path} ({seconds:.2f} s, {result.clips} clips, "
          f"{time.perf_counter() - started:.1f} s to render)")
    return 0


def _progress_bar(done: int, total: int) -> None:
    """Main thread: one self-overwriting progress line on stderr."""
    width = 30
    filled = round(width * done / max(total, 1))
    end = "\n" if done >= total else ""
    print(f"\rrerender: [{'#' * filled}{'.' * (width - filled)}] clip {done}/{total}",
          end=end, file=sys.stderr, flush=True)


def take_seed_folders(log: Path) -> list[Path]:
    """The seed images kept with a take (``<take>.seeds/`` beside its control log: the
    captured ones it was played with), when that folder exists."""
    folder = log.with_name(f"{log.stem}.seeds")
    return [folder] if folder.is_dir() else []
