"""``riff run``: the daemon. Control plane + generator worker + player + JACK (or a file).

What runs where: the asyncio loop (this process's main thread) runs the engine facade, the
worker client, the status log and the control surfaces; the generator is a separate process
(it holds torch); the player renders in JACK's process thread, or in the file output's thread
with ``--output``. SIGINT/SIGTERM stop it cleanly: engine stopped, ports closed, worker
stopped, exit status 0.

Control surfaces: when :mod:`protocols.surfaces` is present its options are added to this
command and its surfaces (OSC, MIDI) start with the engine (:func:`_start_surfaces` is the one
hook). ``--stdin`` also takes ``NAME VALUE`` lines (``tempo 140``, ``prompt jazz piano``),
``play`` and ``stop`` on standard input, for scripts and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from engine.errors import InvalidRequest, RiffError
from engine.live.quality import QUALITY_PRESETS, quality_preset

log = logging.getLogger("riff.run")

#: Built-in run options; a config file's [run] table and then the command line override them.
RUN_DEFAULTS: dict[str, Any] = {
    "model": "riffusion/riffusion-model-v1",
    "device": "auto",
    "phase_method": "fast",
    "jack_server": None,
    "client_name": "riff",
    "no_connect": False,
    "crossfade_ms": 10.0,
    "sample_rate": 48000,
    "on_master_stop": "stop",
    "quality": None,
    "render_ahead": 2048,
    "lattice": None,
}

#: Lattice points when ``--lattice`` is not given and the generator runs on CUDA. On a GPU a
#: clip takes a fraction of a bar and batched alphas share their UNet calls, so the idle time
#: renders 9 alphas (0, 0.125 ... 1: a knob is never more than 1/16 away from one) within a
#: few clips' time; elsewhere (CPU, a remote server) the lattice is off by default: a CPU
#: clip takes many seconds, so 9 extra clips would keep the cores busy for minutes per prompt
#: pair, beside the audio thread, and would rarely be complete before the next change.
LATTICE_CUDA = 9


def _prefer_audio() -> None:
    """Help JACK's process thread get the GIL in time (control thread, once at start).

    The callback runs at JACK's real-time priority but needs the GIL, which the asyncio
    thread may hold: ask holders to hand it over every 0.5 ms (Python's default, 5 ms, is a
    whole period at 256 frames), and, where allowed, raise this process's priority so a GIL
    holder is not preempted by unrelated work. The generator process stays at normal priority
    (see ``WorkerConfig.nice``).
    """
    sys.setswitchinterval(0.0005)
    try:
        os.nice(-10)
    except OSError as exc:  # not permitted: run at normal priority
        log.debug("cannot raise the daemon's priority: %s", exc)


def _surfaces_module() -> Any:
    """:mod:`protocols.surfaces`, imported when first needed (it loads mido and python-osc)."""
    return importlib.import_module("protocols.surfaces")


def register(subparsers: Any) -> None:
    """Add ``riff run``."""
    p = subparsers.add_parser(
        "run", help="run the engine: play generated, tempo-locked loops into JACK",
        description="Run the engine as a daemon: the jam planner generates clips with the "
                    "model in a worker process and the player streams them, locked to the "
                    "tempo and changing on bar lines, into JACK (or into a file with "
                    "--output). Runs until Ctrl-C / SIGTERM.")
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="TOML file: engine parameters at the top level (prompt, tempo, bars, "
                        "...) and run options in a [run] table (model, device, jack_server, "
                        "crossfade_ms, ...); command-line options win")
    p.add_argument("--model", help="hub id, local diffusers folder, or 'tiny' (noise, for "
                                   "tests) (default riffusion/riffusion-model-v1)")
    p.add_argument("--device", help="cuda, cuda:N, cpu or auto (default auto)")
    p.add_argument("--phase-method", choices=("riffusion", "fast", "quality"),
                   help="phase reconstruction (default fast)")
    p.add_argument("--quality", choices=tuple(QUALITY_PRESETS), help=_quality_help())
    p.add_argument("--tempo", type=float, help="beats per minute (default 120)")
    p.add_argument("--bars", type=int, help="clip length in bars (default 2)")
    p.add_argument("--meter", type=int, help="beats per bar (default 4)")
    p.add_argument("--prompt", help="what to play (default 'lo-fi hip hop beat')")
    p.add_argument("--seed", type=int, help="first seed of the seed walk (default 42)")
    p.add_argument("--seed-image", help="seed image id (default og_beat)")
    p.add_argument("--steps", type=int, help="denoising steps per clip (default 50)")
    p.add_argument("--lattice", type=int, metavar="N",
                   help="manual mode: render the current prompt pair at N alphas (0, 1/(N-1) "
                        "... 1) in idle generator time, so a knob move is heard at the next "
                        "beat from the nearest one while the exact alpha renders; N extra "
                        "clips per prompt pair; 0 = off (default 9 when the worker runs on "
                        "CUDA, else 0)")
    p.add_argument("--generator", metavar="URL",
                   help="generate on a remote 'riff serve' at http://HOST:PORT instead of a "
                        "local worker process (bearer token from $RIFF_TOKEN); --model and "
                        "--device are then the server's")
    out = p.add_argument_group("output")
    out.add_argument("--jack-server", metavar="NAME", help="JACK server name (default: the "
                                                          "default server)")
    out.add_argument("--client-name", metavar="NAME", help="JACK client name (default riff)")
    out.add_argument("--no-connect", action="store_true", default=None,
                     help="do not connect riff:out_L/out_R to the system playback ports")
    out.add_argument("--jack-transport", action="store_true",
                     help="follow JACK transport (tempo, bars, beats) when a timebase master "
                          "such as a DAW provides it")
    out.add_argument("--on-master-stop", choices=("stop", "play"),
                     help="when the external master (JACK transport with --jack-transport, MIDI "
                          "clock with --midi-clock) stops: stop too (default), or play on at "
                          "its last tempo on the internal clock")
    out.add_argument("--crossfade-ms", type=float, help="crossfade at clip changes (default 10)")
    out.add_argument("--render-ahead", type=int, metavar="FRAMES",
                     help="frames ahead of JACK's compiled, GIL-free callback that the "
                          "player's decisions are published (default 2048, at least 3 "
                          "periods; reported as the ports' latency); the compiled callback "
                          "also serves JACK MIDI ports, --input and --jack-transport; 0: a "
                          "Python callback renders each period itself")
    out.add_argument("--input", action="store_true",
                     help="give the client audio inputs riff:in_L/in_R (connected from the "
                          "system capture ports unless --no-connect) for /riff/capture: the "
                          "next N bars of what arrives there become the seed image (copied "
                          "by the same GIL-free callback that plays)")
    out.add_argument("--capture-dir", type=Path, metavar="DIR", default=Path("captures"),
                     help="with --input: where captured seed images go (default ./captures, "
                          "created on the first capture); searched first for seed images")
    out.add_argument("--output", type=Path, metavar="FILE.wav",
                     help="render into this audio file instead of JACK")
    out.add_argument("--offline", action="store_true",
                     help="with --output: render as fast as the generator allows instead of in "
                          "real time (every clip on time, the same file on every run)")
    out.add_argument("--duration-bars", type=int, metavar="N",
                     help="with --output: stop after N bars")
    out.add_argument("--sample-rate", type=int, help="with --output: sample rate "
                                                      "(default 48000)")
    p.add_argument("--record", type=Path, metavar="DIR",
                   help="record the output from the start into DIR (float WAV plus a control "
                        "log for 'riff rerender'); /riff/record/stop and /riff/record/start "
                        "[name] stop and start takes there")
    p.add_argument("--takes-dir", type=Path, metavar="DIR", default=Path("takes"),
                   help="without --record: where /riff/record/start [name] puts takes "
                        "(default ./takes, created on the first take)")
    p.add_argument("--stdin", action="store_true",
                   help="read 'NAME VALUE', 'play' and 'stop' lines from standard input")
    _surfaces_module().add_control_arguments(p)
    p.set_defaults(func=run)


# ---- options ----------------------------------------------------------------------------------


def _load_config(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(engine parameters, run options) from a TOML file."""
    if path is None:
        return {}, {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{path}: not valid TOML: {exc}") from None
    run_opts = data.pop("run", {})
    if not isinstance(run_opts, dict):
        raise InvalidRequest(f"{path}: [run] must be a table")
    unknown = sorted(set(run_opts) - set(RUN_DEFAULTS))
    if unknown:
        raise InvalidRequest(f"{path}: unknown [run] option(s): {', '.join(unknown)}")
    return data, run_opts


def _quality_help() -> str:
    """``--quality``'s help: each preset's steps, scheduler, phase method and cost."""
    own = "the model's scheduler"
    presets = "; ".join(f"{q.name}: {q.steps} steps, {q.scheduler or own}, {q.phase_method} "
                        f"phase ({q.cost})" for q in QUALITY_PRESETS.values())
    return (f"speed preset. {presets}. Default: 50 steps, {own}, fast phase. --steps and "
            "--phase-method win over it")


def _options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    params, run_opts = _load_config(args.config)
    opts = {**RUN_DEFAULTS, **run_opts}
    for key in RUN_DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    for name, arg in (("tempo", "tempo"), ("bars", "bars"), ("meter", "meter"),
                      ("prompt", "prompt"), ("seed", "seed"), ("seed_image", "seed_image"),
                      ("steps", "steps")):
        value = getattr(args, arg)
        if value is not None:
            params[name] = value
    if opts["quality"] is not None:
        preset = quality_preset(str(opts["quality"]))
        params.setdefault("steps", preset.steps)
        if args.phase_method is None and "phase_method" not in run_opts:
            opts["phase_method"] = preset.phase_method
        opts["scheduler"] = preset.scheduler
    else:
        opts["scheduler"] = None
    if "prompt" in params:  # manual mode endpoints follow the prompt unless set
        params.setdefault("prompt_a", params["prompt"])
        params.setdefault("prompt_b", params["prompt"])
    if args.generator is not None:
        from protocols.remote import RemoteConfig

        RemoteConfig(args.generator)  # a bad URL is refused before anything starts
    from engine.live.sync import SyncConfig

    SyncConfig(on_stop=opts["on_master_stop"])  # a bad config value is refused here too
    ahead = opts["render_ahead"]
    if isinstance(ahead, bool) or not isinstance(ahead, int) or not 0 <= ahead <= 65536:
        raise InvalidRequest(f"--render-ahead must be 0..65536 frames, not {ahead!r}")
    if getattr(args, "input", False) and args.output is not None:
        raise InvalidRequest("--input needs JACK: it does not go with --output")
    if getattr(args, "input", False) and args.generator is not None:
        raise InvalidRequest("--input does not go with --generator: captured seed images are "
                             "written here, where a remote generator cannot read them")
    lattice = opts["lattice"]
    if lattice is not None and (isinstance(lattice, bool) or not isinstance(lattice, int)
                                or not (lattice == 0 or 2 <= lattice <= 33)):
        raise InvalidRequest(f"--lattice must be 0 (off) or 2..33 alphas, not {lattice!r}")
    if args.offline and args.output is None:
        raise InvalidRequest("--offline needs --output FILE")
    if args.duration_bars is not None and (args.output is None or args.duration_bars < 1):
        raise InvalidRequest("--duration-bars needs --output FILE and at least 1 bar")
    return params, opts


def run(args: argparse.Namespace) -> int:
    """Handler of ``riff run``."""
    params, opts = _options(args)
    from engine.live.state import EngineState

    state = EngineState(params)  # validates every parameter before anything starts
    return asyncio.run(_main(args, state, opts))


# ---- the daemon -------------------------------------------------------------------------------


async def _main(args: argparse.Namespace, state: Any, opts: dict[str, Any]) -> int:
    """The daemon's life on the asyncio loop: open the output and the generator, play until
    SIGINT/SIGTERM (or the output ends), close everything, then log the summary."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    d = _open_daemon(args, opts, loop, stop)
    try:
        if not await _run_daemon(d, state):
            return 0
    finally:
        await _close_daemon(d)
    _log_summary(d)
    if d.file_out is not None and d.file_out.error is not None:
        raise RiffError(f"writing {args.output} failed: {d.file_out.error}")
    return 0


@dataclasses.dataclass
class _Daemon:
    """The parts of one ``riff run`` (owned by the loop thread); the ones made while it starts
    stay None until then, so that shutdown closes exactly what was opened."""

    args: argparse.Namespace
    opts: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    jack_out: Any
    rate: int
    player: Any
    client: Any
    file_out: Any = None
    capture_tap: Any = None
    takes: Any = None
    engine: Any = None
    engine_task: asyncio.Task[None] | None = None
    closers: list[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=list)


def _open_daemon(args: argparse.Namespace, opts: dict[str, Any],
                 loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> _Daemon:
    """The JACK client (or the file output's rate), the player and the generator client.

    With JACK the client is activated here, before the model loads: its ports exist and
    are connectable from now on and play silence until the first clip (a patchbay or session
    manager that wires the engine when its ports appear finds them ready). Loop thread."""
    from engine.live.player import Player, PlayerConfig

    jack_out = None
    if args.output is None:
        from protocols.audio.jack_output import JackOutput

        _prefer_audio()
        jack_out = JackOutput(opts["client_name"], server=opts["jack_server"],
                              follow_transport=args.jack_transport,
                              render_ahead=int(opts["render_ahead"]))
        rate = jack_out.sample_rate
    else:
        rate = int(opts["sample_rate"])
    player = Player(PlayerConfig.with_crossfade_ms(rate, float(opts["crossfade_ms"])))
    tap = _add_input(jack_out, rate, player.config.channels) if args.input else None
    client = _make_generator(args, opts)
    if jack_out is not None:
        # Keep what exists now out of the collector's full passes, which would otherwise
        # hold the GIL for milliseconds while JACK's thread waits for it. The one full
        # collection runs here, before the JACK client is activated, never while it plays.
        gc.collect()
        gc.freeze()
        connected = jack_out.start(player, connect=not opts["no_connect"])
        if tap is not None:
            _connect_input(jack_out, connect=not opts["no_connect"])
        log.info("JACK: %s active at %d Hz, %d frames per period, %s, silent until the "
                 "first clip%s", ", ".join(p.name for p in jack_out.ports), rate,
                 jack_out.blocksize,
                 f"compiled player (clips published {jack_out.render_ahead} frames ahead)"
                 if jack_out.render_ahead else "Python callback",
                 f" -> {', '.join(connected)}" if connected else " (not connected)")
    return _Daemon(args, opts, loop, stop, jack_out, rate, player, client, capture_tap=tap)


def _add_input(jack_out: Any, rate: int, channels: int) -> Any:
    """``--input``: input ports on the engine's client feeding a preallocated capture tap
    (the longest capture's frames, allocated here once). Loop thread, before activation."""
    from engine.live.capture import CaptureTap, capacity_frames
    from protocols.audio.jack_input import JackAudioInput

    tap = CaptureTap(channels, capacity_frames(rate))
    jack_out.add_ports(JackAudioInput(jack_out, tap, channels))
    return tap


def _connect_input(jack_out: Any, connect: bool) -> None:
    """Connect the system capture ports to ``in_L``/``in_R`` (unless ``--no-connect``) and
    log the input ports. Loop thread."""
    names = [f"{jack_out.name}:{n}" for n in ("in_L", "in_R")]
    sources: list[str] = []
    if connect:
        physical = jack_out.client.get_ports(is_physical=True, is_output=True, is_audio=True)
        for port, source in zip(("in_L", "in_R"), physical, strict=False):
            jack_out.connect(port, source.name, source=False)
            sources.append(source.name)
    log.info("JACK: audio input on %s%s (for /riff/capture)", ", ".join(names),
             f" <- {', '.join(sources)}" if sources else " (not connected)")


async def _run_daemon(d: _Daemon, state: Any) -> bool:
    """Start the generator, the engine, the outputs and the surfaces, then log status until
    stopped. False when stopped while the model was still loading. Loop thread."""
    args, opts = d.args, d.opts
    if args.generator is None:
        log.info("starting the generator (model %s, device %s)", opts["model"],
                 opts["device"])
    else:
        log.info("connecting to the generator at %s", args.generator)
    if not await _until_stopped(d.client.start(), d.stop):
        log.info("stopped while the model was loading")
        return False
    _build_engine(d, state)
    if d.jack_out is None:
        gc.collect()  # JACK is not running: one full collection, then keep it out of passes
    gc.freeze()
    _start_playing(d)
    d.engine_task = asyncio.ensure_future(d.engine.run())
    d.closers.extend(await _start_surfaces(args, d.engine, opts, d.jack_out))
    # Everything long-lived exists now: freeze it too (no collection: JACK is running).
    gc.freeze()
    if args.stdin:
        _read_stdin(d.engine, d.loop)
    await _status_loop(d.engine, d.player, d.client, d.jack_out, d.file_out, d.stop)
    return True


def _build_engine(d: _Daemon, state: Any) -> None:
    """The engine facade, with recording taps between it and the generator and player, and
    the take controller (``--record`` / ``--takes-dir``). Loop thread."""
    from engine.live.cache import DEFAULT_CLIPS
    from engine.live.control import Engine
    from engine.live.scheduler import SchedulerConfig
    from engine.live.sync import SyncConfig
    from engine.model.seed_images import SeedImageLibrary
    from engine.takes.recording import RecordingTaps, TakeController

    args, opts = d.args, d.opts
    taps = RecordingTaps()
    lattice = _lattice_points(opts, str(getattr(d.client, "device", "")))
    if lattice:
        log.info("lattice: %d alphas per prompt pair in idle generator time (--lattice)",
                 lattice)
    library = SeedImageLibrary(_seed_folders(args))
    d.engine = engine = Engine(taps.generator(d.client), taps.sink(d.player), sample_rate=d.rate,
                               state=state, sink_stats=d.player.counters,
                               config=SchedulerConfig(
                                   lead_s=d.player.config.crossfade_samples / d.rate,
                                   lattice=lattice,
                                   cache_clips=max(DEFAULT_CLIPS, 2 * lattice)),
                               seed_loops=library,
                               sync=SyncConfig(on_stop=d.opts["on_master_stop"]),
                               scheduler=d.opts["scheduler"])
    taps.transport = engine.transport
    state.add_listener(taps.on_state_change)
    d.takes = TakeController(
        taps, args.record if args.record is not None else args.takes_dir,
        sample_rate=d.rate, channels=d.player.config.channels, state=state.snapshot,
        info={"model": opts["model"] if args.generator is None else d.client.model,
              "generator": args.generator,
              "crossfade_samples": d.player.config.crossfade_samples,
              "phase_method": opts["phase_method"]})
    engine.takes = d.takes
    if d.capture_tap is not None:
        from engine.live.capture import CaptureConfig, Capturer

        engine.capture = Capturer(
            d.capture_tap, CaptureConfig(sample_rate=d.rate, folder=args.capture_dir,
                                         channels=d.player.config.channels),
            engine.transport, state, library, keep=d.takes.keep_seed_image)
        engine.capture.warm_up()


def _seed_folders(args: argparse.Namespace) -> tuple[Path, ...]:
    """Seed image folders searched before the built-in ones: the capture folder with
    ``--input`` (for the engine, the worker and the surfaces' id checks alike)."""
    return (args.capture_dir,) if getattr(args, "input", False) else ()


def _lattice_points(opts: dict[str, Any], device: str) -> int:
    """``--lattice``, or by default :data:`LATTICE_CUDA` when the generator's device is
    CUDA and 0 (off) elsewhere (see there why)."""
    if opts["lattice"] is not None:
        return int(opts["lattice"])
    return LATTICE_CUDA if device.startswith("cuda") else 0


def _start_playing(d: _Daemon) -> None:
    """Tap JACK's output for takes (the client is active since :func:`_open_daemon`) or
    start the file output, start playing and, with ``--record``, recording. Loop thread; the
    player renders in the output's thread."""
    args, engine = d.args, d.engine
    if d.jack_out is not None:
        d.jack_out.set_takes(d.takes)
        ports = ", ".join(p.name for p in d.jack_out.ports)
        log.info("JACK: playing on %s at %d Hz, %d frames per period", ports, d.rate,
                 d.jack_out.blocksize)
    engine.play()
    if args.record is not None:
        engine.record_start()
    if args.output is not None:
        from protocols.audio.file_output import FileOutput

        end = engine.transport.bar_start(args.duration_bars) if args.duration_bars else None
        gate = _offline_gate(engine, d.player, d.loop) if args.offline else None
        d.file_out = FileOutput(d.player, args.output, offline=args.offline, end_sample=end,
                                gate=gate, takes=d.takes)
        d.file_out.start()
        log.info("rendering to %s (%s, %d Hz)%s", args.output,
                 "offline" if args.offline else "real time", d.rate,
                 f", {args.duration_bars} bars" if args.duration_bars else "")


async def _close_daemon(d: _Daemon) -> None:
    """Close what was opened, in reverse order: stdin, surfaces, file output, the take, the
    engine, JACK, the generator. Loop thread, also after an error while starting."""
    if d.args.stdin:
        with contextlib.suppress(ValueError, OSError):
            d.loop.remove_reader(sys.stdin.fileno())
    for close in reversed(d.closers):
        await close()
    if d.file_out is not None:
        d.file_out.stop()
    if d.takes is not None and d.takes.recording:
        try:
            await d.engine.record_stop()
        except Exception:  # the rest must still be closed; the take's error is logged
            log.exception("stopping the recording failed")
    if d.takes is not None:
        await d.takes.drain()  # takes stopped over OSC just before: their files complete
    if d.engine_task is not None:
        await d.engine.close()
    if d.jack_out is not None:
        d.jack_out.close()
    await d.client.close()


def _log_summary(d: _Daemon) -> None:
    """The closing log lines: JACK callback timing, the player's and worker's counters and
    the remote generator's requests."""
    c = d.player.counters()
    if d.jack_out is not None:
        t = d.jack_out.timing_summary()
        if t["callbacks"]:
            log.info("JACK callback: %d calls, duration p50 %.0f us, p99 %.0f us, max %.0f us; "
                     "finished within the cycle by at most %.0f us of a %.0f us period",
                     t["callbacks"], t["duration_p50_us"], t["duration_p99_us"],
                     t["duration_max_us"], t["finish_max_us"], t["period_us"])
        if d.jack_out.render_ahead:
            r = d.jack_out.render_stats()
            log.info("JACK compiled player: %d records published, the planning thread held "
                     "up at most %.0f ms, %d times past what it had published (the clips in "
                     "force went on)", r["records"], r["max_gap_ms"], r["skips"])
    # "late" is the scheduler's (clips that missed their bar line), as in the per-bar status
    # lines and /riff/status/late; silence by design is counted apart from underruns.
    s = d.engine.scheduler.counters
    log.info("stopped: %d clips started, %d late, %d xruns, %d worker restarts, "
             "%d underruns, %d silent blocks (before the first clip or after stop), "
             "%d repeated bar lines, %d generated, %d from the clip cache, %d re-conformed, "
             "%d started after their bar line",
             c["started"], s.late, c["xruns"], d.client.restarts, c["underruns"], c["silent"],
             s.repeated, s.generated, s.cached, s.reconformed, c["late"])
    if d.engine.scheduler.config.lattice:
        log.info("lattice: %d clips rendered, %d knob moves heard from one, %d dropped",
                 s.lattice, s.lattice_jumps, s.lattice_dropped)
    if d.args.generator is not None:
        log.info("remote generator: %d requests, %d failed, %d retried", d.client.attempts,
                 d.client.failures, d.client.retried)


def _make_generator(args: argparse.Namespace, opts: dict[str, Any]) -> Any:
    """The clip generator: a local worker process, or a remote ``riff serve``
    (``--generator URL``). Both have ``start``, ``close``, ``generate`` and ``restarts``."""
    if args.generator is not None:
        from protocols.remote import make_remote_generator

        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per clip
        return make_remote_generator(args.generator,
                                     token=os.environ.get("RIFF_TOKEN") or None)
    from engine.live.worker import WorkerClient, WorkerConfig

    return WorkerClient(WorkerConfig(model=opts["model"], device=opts["device"],
                                     phase_method=opts["phase_method"],
                                     seed_folders=tuple(str(f) for f in _seed_folders(args))))


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await ``work`` unless ``stop`` is set first (then cancel it); True when it finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()  # raises the start's error, if any
    return True


async def _start_surfaces(args: argparse.Namespace, engine: Any, opts: dict[str, Any],
                          jack_out: Any = None) -> list[Callable[[], Awaitable[None]]]:
    """Start the control surfaces (OSC, MIDI); with JACK audio the JACK MIDI ports live on
    the same client (``riff:midi_in``), handled in the same process callback, and MIDI clock
    events land on the audio clock by frame time (sample-exact phase)."""
    surfaces = _surfaces_module()
    config = surfaces.control_config_from_args(args)
    if dataclasses.is_dataclass(config) and hasattr(config, "jack_server"):
        config = dataclasses.replace(cast(Any, config), jack_server=opts["jack_server"],
                                     client_name=opts["client_name"])
    if dataclasses.is_dataclass(config) and hasattr(config, "check_image_ids"):
        # A remote generator has its own seed image library: it checks the ids itself.
        config = dataclasses.replace(cast(Any, config),
                                     check_image_ids=args.generator is None,
                                     seed_image_dirs=(*cast(Any, config).seed_image_dirs,
                                                      *_seed_folders(args)))
    if jack_out is None:
        started = await surfaces.start_control_surfaces(engine, config)
    else:  # JACK MIDI ports go on the engine's own client
        started = await surfaces.start_control_surfaces(
            engine, config, frame_offset=lambda: jack_out.frame_offset, jack_host=jack_out)
    return [started.close]


async def _status_loop(engine: Any, player: Any, client: Any, jack_out: Any, file_out: Any,
                       stop: asyncio.Event) -> None:
    """Log clip starts and one status line per bar until ``stop`` (or the output ends)."""
    from protocols.audio.jack_transport import JackTransportFollower

    last_bar = -1
    follower = JackTransportFollower(engine.sync) if jack_out is not None and \
        jack_out.follow_transport else None
    last_error = ""
    rejoin = _JackRejoin(jack_out) if jack_out is not None else None
    while not stop.is_set():
        events = player.poll()
        if follower is not None:
            follower.poll(jack_out.transport_state(), jack_out.transport_bbt())
        for clip, start in events.started:
            frame = (f", JACK frame {start + jack_out.frame_offset}"
                     if jack_out is not None and jack_out.first_frame_time >= 0 else "")
            log.info("clip %d started at sample %d (bar %d%s)", clip.job_id, start,
                     engine.transport.bar_at(start), frame)
        status = engine.status()
        error = str(status.get("error", ""))
        if error != last_error:  # at once, not at the next bar line
            last_error = error
            if error:
                log.error("status error: %s", error)
        if status["bar"] != last_bar and status["bar"] >= 0:
            last_bar = int(status["bar"])
            log.info("bar %d | clip %s | %.1f BPM | queue %s | progress %.0f%% | late %s | "
                     "repeated %s | failed %s | xruns %s | underruns %s | worker restarts %d%s",
                     last_bar, status["clip"], status["tempo"], status["queue"],
                     100 * float(status["progress"]), status["late"], status["repeated"],
                     status["failed"], status["xruns"], status["underruns"], client.restarts,
                     _take_line(status))
        if file_out is not None and file_out.done:
            log.info("output finished: %s", file_out.path)
            return
        if rejoin is not None:
            rejoin.poll()
            if jack_out.render_error is not None:
                raise RiffError(f"the JACK planning thread failed: {jack_out.render_error!r}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def _take_line(status: Any) -> str:
    """The status line's recording part: whether a take runs, its dropped frames, and why
    the last one failed (empty when nothing is or was recorded)."""
    if not status.get("recording") and not status.get("record_error"):
        return ""
    text = f" | recording {'on' if status.get('recording') else 'off'}, dropped " \
           f"{status.get('record_dropped', 0)}"
    if status.get("record_error"):
        text += f", failed: {status['record_error']}"
    return text


class _JackRejoin:
    """Survives the JACK server going away: logs it, retries with backoff (0.25 s doubling
    to 5 s) and logs when the client is back on the same ports. The engine, the player and
    the worker keep their state meanwhile (the player's clock stands still). Loop thread."""

    FIRST_S, MAX_S = 0.25, 5.0

    def __init__(self, jack_out: Any) -> None:
        self.jack_out = jack_out
        self.down_since = -1.0
        self.next_try = 0.0
        self.wait_s = self.FIRST_S
        self.tries = 0

    def poll(self) -> None:
        """Check once per status tick; at most one reconnection attempt when due."""
        out = self.jack_out
        if not out.shutdown_reason:
            return
        now = time.monotonic()
        if self.down_since < 0:
            log.error("JACK server went away (%s); the engine keeps its state and reconnects "
                      "as %s when a server is back", out.shutdown_reason, out.name)
            self.down_since, self.next_try, self.wait_s, self.tries = now, now, self.FIRST_S, 0
        if now < self.next_try:
            return
        self.tries += 1
        if out.reconnect():
            log.info("JACK: back on %s after %.1f s (%d tries)%s",
                     ", ".join(p.name for p in out.ports), now - self.down_since, self.tries,
                     ", connections re-made" if out.connections() else "")
            self.down_since = -1.0
            return
        self.next_try = now + self.wait_s
        self.wait_s = min(self.wait_s * 2, self.MAX_S)


def _offline_gate(engine: Any, player: Any, loop: asyncio.AbstractEventLoop
                  ) -> Callable[[int, int], int]:
    """Offline rendering: frames the file thread may render from ``pos`` now.

    It never reaches a bar line's decision deadline (the line minus the scheduler's margin)
    before every planned clip is ready, so the scheduler never has to repeat a clip because
    the generator was slower than real time. Evaluated on the loop (the scheduler's thread);
    called from the file thread, which blocks meanwhile.
    """
    rate = player.config.sample_rate

    async def allowance(pos: int, n: int) -> int:
        margin = engine.scheduler.config.deadline_samples(rate)
        while True:
            sched = engine.scheduler
            if not sched.running or sched.head_ready():
                return n
            _, line = engine.transport.next_bar_line(pos + margin)
            room = line - margin - pos - 1  # stay before the deadline
            if room > 0:
                return min(n, room)
            await asyncio.sleep(0.01)

    def gate(pos: int, n: int) -> int:
        """Thread: the file output's thread; blocks until the loop answers."""
        return asyncio.run_coroutine_threadsafe(allowance(pos, n), loop).result()

    return gate


def _read_stdin(engine: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Apply ``NAME VALUE`` / ``play`` / ``stop`` lines from stdin (loop thread)."""

    def on_line() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            return
        words = line.strip().split(None, 1)
        if not words:
            return
        try:
            if words[0] == "play":
                engine.play()
            elif words[0] == "stop":
                engine.stop()
            elif len(words) == 2:
                engine.state.set(words[0], _parse_value(words[1]))
                log.info("stdin: %s = %s", words[0], words[1])
            else:
                raise InvalidRequest(f"expected 'NAME VALUE', 'play' or 'stop', not {line!r}")
        except RiffError as exc:
            log.warning("stdin: %s", exc)

    loop.add_reader(sys.stdin.fileno(), on_line)


def _parse_value(text: str) -> str | int | float:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
