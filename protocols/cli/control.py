"""``riff preset`` and ``riff osc``: presets on disk and in a running engine, OSC from a shell.

``riff preset list|show`` read the preset folders; ``riff preset load|save`` ask a running
engine (over OSC) to load or save; ``riff osc ADDRESS [ARG...]`` sends any message and prints
the replies, so everything a controller can do can be scripted.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequest


def register(subparsers: Any) -> None:
    """Add ``preset`` and ``osc`` to the ``riff`` command line."""
    preset = subparsers.add_parser(
        "preset", help="list, show, load and save presets",
        description="Presets are TOML files of prompts and parameters (presets/*.toml and "
                    "your --preset-dir). load/save act on a running engine over OSC.")
    sub = preset.add_subparsers(dest="preset_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="list presets, prompt sets and MIDI maps")
    _dirs(p)
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="print a preset as TOML")
    p.add_argument("name", help="preset name")
    _dirs(p)
    p.set_defaults(func=_show)
    for action in ("load", "save"):
        p = sub.add_parser(action, help=f"{action} a preset in the running engine (over OSC)")
        p.add_argument("name", help="preset name (letters, digits, '_', '-', '.')")
        _target(p)
        p.set_defaults(func=_remote, address=f"/riff/preset/{action}")

    osc = subparsers.add_parser(
        "osc", help="send one OSC message to a running engine and print the replies",
        description="Send ADDRESS with ARGs and print every reply up to the engine's "
                    "/riff/pong (for /riff/ping, the pong itself). ARGs that read as integers "
                    "or floats are sent as int/float, the rest as strings; with -s/--string "
                    "every ARG is sent as a string (`riff osc -s /riff/prompt 808`). "
                    "Exit status 1 when the engine answers /riff/error.")
    osc.add_argument("address", help="e.g. /riff/alpha, /riff/state, /riff/ping")
    osc.add_argument("args", nargs="*", help="arguments")
    osc.add_argument("-s", "--string", action="store_true",
                     help="send every ARG as a string, even one that looks like a number")
    osc.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                     help="after the pong, keep printing what arrives for this long "
                          "(feedback after /riff/subscribe, for example); default 0")
    _target(osc)
    osc.set_defaults(func=_osc)


def _dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset-dir", action="append", default=[], type=Path, metavar="DIR",
                   help="also search this folder (first)")


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--osc-host", default="127.0.0.1", help="engine host (default 127.0.0.1)")
    p.add_argument("--osc-port", type=int, default=9000, help="engine OSC port (default 9000)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for replies")


def _list(args: argparse.Namespace) -> int:
    from engine.presets import PresetLibrary

    lib = PresetLibrary(args.preset_dir)
    for title, ids in (("presets", lib.ids()), ("prompt sets", lib.prompt_set_ids()),
                       ("MIDI maps", lib.map_ids())):
        print(f"{title}: {', '.join(ids) or '-'}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from engine.presets import PresetLibrary

    print(PresetLibrary(args.preset_dir).load(args.name).to_toml(), end="")
    return 0


def _remote(args: argparse.Namespace) -> int:
    return _send(args, args.address, [args.name], quiet=True)


def _osc(args: argparse.Namespace) -> int:
    values: list[Any] = list(args.args) if args.string else [_parse(a) for a in args.args]
    return _send(args, args.address, values, quiet=False, linger=max(0.0, args.wait))


def _parse(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _send(args: argparse.Namespace, address: str, values: list[Any], *, quiet: bool,
          linger: float = 0.0) -> int:
    """Send one message, then a /riff/ping (unless the message is the ping itself), and print
    the replies up to the pong (printed too when the ping was what was asked for); then keep
    printing for ``linger`` seconds."""
    from pythonosc.osc_packet import OscPacket

    from protocols.osc.server import build_message

    try:
        message = build_message(address, tuple(values))
    except Exception as exc:
        raise InvalidRequest(f"cannot build an OSC message from {address!r}: {exc}") from None
    sock = socket.socket(socket.AF_INET6 if ":" in args.osc_host else socket.AF_INET,
                         socket.SOCK_DGRAM)
    sock.settimeout(args.timeout)
    with sock:
        target = (args.osc_host, args.osc_port)
        sock.sendto(message, target)
        is_ping = address == "/riff/ping" and not values
        if not is_ping:
            sock.sendto(build_message("/riff/ping", ()), target)
        status = 0
        while True:
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                raise InvalidRequest(f"no answer from an engine at {args.osc_host}:"
                                     f"{args.osc_port} (is `riff run` running?)") from None
            except ConnectionRefusedError:
                raise InvalidRequest(f"nothing listens at {args.osc_host}:"
                                     f"{args.osc_port} (is `riff run` running?)") from None
            for timed in OscPacket(data).messages:
                msg = timed.message
                if msg.address == "/riff/pong":
                    if is_ping and not quiet:
                        print(msg.address, *msg.params)
                    if linger > 0:
                        _print_for(sock, linger)
                    return status
                if msg.address == "/riff/error":
                    print(f"riff: error: {msg.params[-1]}", file=sys.stderr)
                    status = 1
                elif not quiet:
                    print(msg.address, *msg.params)


def _print_for(sock: socket.socket, seconds: float) -> None:
    """Print every message that arrives on ``sock`` within ``seconds``."""
    import time

    from pythonosc.osc_packet import OscPacket

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65536)
        except (TimeoutError, ConnectionRefusedError):
            return
        try:
            messages = OscPacket(data).messages
        except Exception:
            continue
        for timed in messages:
            print(timed.message.address, *timed.message.params, flush=True)
