"""The ``riff`` command line.

Each group of subcommands lives in its own module with a ``register(subparsers)`` function that
adds its parsers and sets ``func`` to a handler ``(args) -> int``. Modules import heavy packages
(torch, diffusers) inside their handlers so ``riff --help`` stays fast.

Errors a user can cause (:class:`engine.errors.RiffError`, unreadable files) print one line on
stderr and exit with status 1; usage errors exit with status 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from engine import __version__
from engine.errors import RiffError

#: Modules that contribute subcommands, in the order they appear in ``riff --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "protocols.cli.run",
    "protocols.cli.render",
    "protocols.cli.serve",
    "protocols.cli.rerender",
    "protocols.cli.control",
    "protocols.cli.codec",
    "protocols.cli.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="riff",
        description=(
            "riffusion-engine: play a Riffusion model like an instrument. Controllers send OSC "
            "or MIDI, the engine generates tempo-locked, seamlessly looping clips and streams "
            "them into JACK. It also reads and writes Riffusion's spectrogram images."
        ),
    )
    parser.add_argument("--version", action="version", version=f"riff {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``riff`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except RiffError as exc:
        print(f"riff {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"riff {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"riff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
