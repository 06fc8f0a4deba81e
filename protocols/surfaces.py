"""Start and stop every control surface (OSC, MIDI inputs, MIDI clock) for ``riff run``.

``riff run`` calls :func:`add_control_arguments` on its parser, builds a
:class:`ControlConfig` with :func:`control_config_from_args`, then, on its asyncio loop::

    surfaces = await start_control_surfaces(engine, config)
    ...
    await surfaces.close()

``engine`` is anything with the :class:`~protocols.control_target.ControlTarget` shape
(``engine.live.control.Engine``). Pass ``clock_observer`` (an object with
``observe(ClockObservation)``) to let MIDI clock drive something else; without it,
``--midi-clock`` locks the engine's transport to the master through its ``sync``
(``engine.live.sync.MasterSync``: tempo and bar phase, stop behaviour, master lost) when the
engine has one, else sets the tempo parameter and plays/stops the engine. ``frame_offset``
(``riff run`` passes ``JackOutput.frame_offset`` when it plays into JACK) makes JACK MIDI clock
phase sample-exact: an event's frame time minus the offset is its sample on the audio clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequest, RiffError
from engine.model.seed_images import SeedImageLibrary
from engine.presets import PresetLibrary
from protocols.control_target import Commands, ControlTarget, library_id_check
from protocols.midi.clock import (
    AgeTimebase,
    ClockObserver,
    FrameTimebase,
    MidiClock,
    StateFollower,
    Timebase,
    TransportFollower,
)
from protocols.midi.feedback import MidiFeedback
from protocols.midi.map import MidiMap
from protocols.midi.router import MidiRouter
from protocols.osc.server import OscConfig, OscServer
from protocols.web.server import WebConfig, WebServer, start_web

log = logging.getLogger(__name__)


class SurfaceUnavailable(RiffError):
    """A control surface cannot start (no JACK server, no such MIDI port)."""


@dataclasses.dataclass(frozen=True)
class ControlConfig:
    """Which control surfaces run and where.

    ``midi_in`` entries: ``jack`` (a JACK MIDI port to connect to yourself), ``jack:PORT``
    (also connect from that JACK output port), ``rtmidi`` (a virtual rtmidi port),
    ``rtmidi:NAME`` (open the named rtmidi port). ``midi_map``: a map id from
    ``presets/maps`` or a path to a ``.toml`` file. ``check_image_ids``: seed image and mask
    ids are refused when they arrive unless the library (``seed_image_dirs`` plus the built-in
    seeds, as the local worker has it) holds them; turn it off when another process (a remote
    generator) owns the library.
    """

    osc: OscConfig | None = dataclasses.field(default_factory=OscConfig)
    midi_in: tuple[str, ...] = ()
    midi_map: str | None = None
    midi_clock: bool = False
    midi_feedback: bool = False
    preset_dirs: tuple[Path, ...] = ()
    client_name: str = "riff"
    rtmidi_api: str = "UNIX_JACK"
    jack_server: str | None = None
    seed_image_dirs: tuple[Path, ...] = ()
    check_image_ids: bool = True
    web: WebConfig | None = None
    link: bool = False

    def __post_init__(self) -> None:
        for spec in self.midi_in:
            kind = spec.split(":", 1)[0]
            if kind not in ("jack", "rtmidi"):
                raise InvalidRequest(f"--midi-in {spec!r}: use jack, jack:PORT, rtmidi or "
                                     "rtmidi:NAME")


def add_control_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the control-surface options to ``riff run`` (or any command that serves)."""
    group = parser.add_argument_group("control surfaces")
    group.add_argument("--osc-host", default="127.0.0.1",
                       help="interface for OSC over UDP (default 127.0.0.1: this machine "
                            "only; 0.0.0.0 listens on every interface)")
    group.add_argument("--osc-port", type=int, default=9000,
                       help="OSC UDP port (default 9000; 0 disables OSC)")
    group.add_argument("--osc-allow", action="append", default=[], metavar="CIDR",
                       help="serve OSC from this network only (repeatable, e.g. "
                            "192.168.1.0/24 or 10.0.0.7); others are dropped and counted "
                            "(default: loopback when --osc-host is loopback, else this "
                            "machine's networks)")
    writes = group.add_mutually_exclusive_group()
    writes.add_argument("--osc-readonly-files", action="store_true",
                        help="refuse OSC commands that write files (/riff/record/*, "
                             "/riff/preset/save, /riff/midi/learn)")
    writes.add_argument("--osc-allow-file-writes", action="store_true",
                        help="allow those commands when --osc-host is not loopback (off by "
                             "default there)")
    group.add_argument("--midi-in", action="append", default=[], metavar="SOURCE",
                       help="MIDI input, repeatable: 'jack' (a JACK MIDI port), 'jack:PORT' "
                            "(connected from that JACK port), 'rtmidi' (a virtual port), "
                            "'rtmidi:NAME' (an existing port)")
    group.add_argument("--midi-map", metavar="MAP",
                       help="MIDI map: an id from presets/maps (generic8, nanokontrol2, "
                            "mpkmini) or a .toml file (default generic8 when MIDI is on)")
    group.add_argument("--midi-clock", action="store_true",
                       help="follow MIDI clock in: tempo, start/stop, song position")
    group.add_argument("--midi-feedback", action="store_true",
                       help="send mapped parameters back as CC (motorised faders, LED rings): "
                            "a midi_out port next to each JACK input, an output port for rtmidi")
    group.add_argument("--link", action="store_true",
                       help="join an Ableton Link session: follow its tempo and beat phase "
                            "(quantum = beats per bar), send /riff/tempo to it, share "
                            "start/stop with peers that enable it")
    group.add_argument("--http", type=int, default=None, metavar="PORT", dest="http_port",
                       help="serve the monitor page (http://HOST:PORT/monitor: timeline, "
                            "position, counters and controls, live over a WebSocket) and "
                            "OSCQuery on this TCP port (default: off; 0 picks a free port)")
    group.add_argument("--http-host", default=None, metavar="HOST",
                       help="interface for --http (default 127.0.0.1: this machine only, as "
                            "the page can change the engine; 0.0.0.0 for every interface, "
                            "WebSockets then accepted from --osc-allow networks)")
    group.add_argument("--oscquery-port", type=int, default=None, metavar="PORT",
                       help="the same as --http PORT, but on the --osc-host interface "
                            "unless --http-host is given (an OSCQuery client must reach it "
                            "where it reaches OSC)")
    group.add_argument("--no-oscquery-advertise", action="store_true",
                       help="do not advertise OSCQuery by mDNS/zeroconf (it is never "
                            "advertised when the web side listens on a loopback address)")
    group.add_argument("--preset-dir", action="append", default=[], type=Path, metavar="DIR",
                       help="your presets folder (searched first; presets and learned MIDI maps "
                            "are saved here; default: riffusion-engine/presets in your config "
                            "directory, $XDG_CONFIG_HOME or ~/.config)")


def control_config_from_args(args: argparse.Namespace) -> ControlConfig:
    """The :class:`ControlConfig` for parsed ``add_control_arguments`` options."""
    file_writes = (False if args.osc_readonly_files else
                   True if args.osc_allow_file_writes else None)
    osc = None if args.osc_port == 0 else OscConfig(
        host=args.osc_host, port=args.osc_port, allow=tuple(args.osc_allow),
        file_writes=file_writes)
    return ControlConfig(osc=osc, midi_in=tuple(args.midi_in), midi_map=args.midi_map,
                         midi_clock=args.midi_clock, midi_feedback=args.midi_feedback,
                         preset_dirs=tuple(args.preset_dir), web=web_config_from_args(args),
                         link=bool(getattr(args, "link", False)))


def web_config_from_args(args: argparse.Namespace) -> WebConfig | None:
    """The web side's config: ``--http PORT`` on ``--http-host`` (default loopback), or its
    older spelling ``--oscquery-port PORT``, whose host defaults to ``--osc-host``; None when
    neither is given. Both at once must name the same port."""
    http_port = getattr(args, "http_port", None)
    oscquery_port = getattr(args, "oscquery_port", None)
    if http_port is not None and oscquery_port is not None and http_port != oscquery_port:
        raise InvalidRequest(f"--http {http_port} and --oscquery-port {oscquery_port} name "
                             "one server: give one port")
    port = http_port if http_port is not None else oscquery_port
    if port is None:
        return None
    host = getattr(args, "http_host", None)
    if host is None:
        host = "127.0.0.1" if http_port is not None else args.osc_host
    return WebConfig(host=host, port=port, allow=tuple(args.osc_allow),
                     advertise=not getattr(args, "no_oscquery_advertise", False))


def load_midi_map(library: PresetLibrary, ident: str | None) -> MidiMap:
    """A map by id (``presets/maps``) or path; ``None``: ``generic8`` if present, else empty."""
    if ident is None:
        return MidiMap.load(library.map_path("generic8")) if "generic8" in \
            library.map_ids() else MidiMap()
    if ident.endswith(".toml") or "/" in ident:
        path = Path(ident)
        if not path.is_file():
            raise InvalidRequest(f"MIDI map file {ident} does not exist")
        return MidiMap.load(path)
    return MidiMap.load(library.map_path(ident))


class ControlSurfaces:
    """The running surfaces; :meth:`close` stops them all."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands
        self.osc: OscServer | None = None
        self.router: MidiRouter | None = None
        self.inputs: list[Any] = []
        self.feedback: list[MidiFeedback] = []
        self.web: WebServer | None = None
        self.link: Any = None

    def stats(self) -> dict[str, int]:
        """OSC and MIDI counters, prefixed ``osc_`` and ``midi_`` (JSON-ready)."""
        out: dict[str, int] = {}
        if self.osc is not None:
            out.update({f"osc_{k}": v for k, v in self.osc.stats().items()})
        if self.router is not None:
            out.update({f"midi_{k}": v
                        for k, v in dataclasses.asdict(self.router.counters).items()})
        if self.web is not None:
            out.update({f"web_{k}": v for k, v in self.web.stats().items()})
        return out

    async def close(self) -> None:
        """Stop the web side, MIDI inputs and the OSC server (asyncio loop)."""
        if self.web is not None:
            await self.web.close()
            self.web = None
        if self.link is not None:
            await self.link.close()
            self.link = None
        for fb in self.feedback:
            self.commands.state.remove_listener(fb.on_change)
            fb.close()
        self.feedback.clear()
        for midi_input in self.inputs:
            try:
                midi_input.close()
            except Exception:
                log.exception("closing MIDI input %r failed", midi_input)
        self.inputs.clear()
        self.commands.learn = None
        if self.osc is not None:
            await self.osc.close()
            self.osc = None
        if self.router is not None:
            log.info("MIDI: %s", dataclasses.asdict(self.router.counters))


async def start_control_surfaces(engine: ControlTarget, config: ControlConfig, *,
                                 clock_observer: ClockObserver | None = None,
                                 frame_offset: Callable[[], int] | None = None,
                                 jack_host: Any = None) -> ControlSurfaces:
    """Start OSC and MIDI per ``config`` on the running loop; see the module docstring.
    ``jack_host``: the engine's JACK client (``JackOutput``), which then holds the JACK MIDI
    ports (``riff:midi_in``) instead of a client of their own."""
    library = PresetLibrary(config.preset_dirs)
    image_ids = (library_id_check(SeedImageLibrary(config.seed_image_dirs))
                 if config.check_image_ids else None)
    commands = Commands(engine, library, image_ids=image_ids)
    surfaces = ControlSurfaces(commands)
    try:
        if config.midi_in:
            midi_map = load_midi_map(library, config.midi_map)
            clock = None
            if config.midi_clock:
                observer = clock_observer or _default_clock_observer(
                    engine, commands, _clock_timebase(engine, config, surfaces, frame_offset))
                clock = MidiClock(observer)
            router = MidiRouter(commands, midi_map, clock=clock,
                                learn_path=_learn_path(library, midi_map, config.midi_map))
            surfaces.router = router
            commands.learn = router.start_learn
            for n, spec in enumerate(config.midi_in):
                midi_input = _open_input(spec, n, router, config, jack_host)
                surfaces.inputs.append(midi_input)
                if config.midi_feedback:
                    fb = MidiFeedback(lambda: router.map, midi_input.send)
                    commands.state.add_listener(fb.on_change)
                    surfaces.feedback.append(fb)
        if config.osc is not None:
            surfaces.osc = await OscServer.start(commands, config.osc)
        if config.link:
            surfaces.link = _start_link(engine)
        if config.web is not None:
            osc_address = surfaces.osc.address if surfaces.osc is not None else None
            surfaces.web = await start_web(commands, config.web, osc_address)
    except BaseException:
        await surfaces.close()
        raise
    return surfaces


def _start_link(engine: ControlTarget) -> Any:
    """Join Ableton Link through the engine's master sync (``riff run --link``)."""
    sync = getattr(engine, "sync", None)
    scheduler = getattr(engine, "scheduler", None)
    if sync is None or scheduler is None:
        raise SurfaceUnavailable("--link needs the engine's transport (riff run)")
    try:
        from protocols.link import LinkClock

        link = LinkClock(sync, playing=lambda: bool(scheduler.running))
    except ImportError as exc:
        raise SurfaceUnavailable(f"--link needs the aalink package: {exc}") from exc
    link.start()
    return link


def _learn_path(library: PresetLibrary, midi_map: MidiMap, ident: str | None) -> Path:
    """Where MIDI learn saves: a map file given by path stays put (unless it is a shipped
    map); a library map is saved under its own name in the user's folder (``--preset-dir``,
    else the user's config folder), which shadows the shipped one. Never the shipped file."""
    if ident is not None and (ident.endswith(".toml") or "/" in ident):
        return library.writable_map_path(Path(ident))
    name = midi_map.path.name if midi_map.path is not None else "learned.toml"
    return library.save_folder / "maps" / name


def _default_clock_observer(engine: ControlTarget, commands: Commands,
                            timebase: Timebase | None) -> ClockObserver:
    """The engine's master sync when it has one, else the tempo parameter."""
    state_follower = StateFollower(lambda bpm: commands.set_address("/riff/tempo", bpm),
                                   commands.play, commands.stop)
    sync = getattr(engine, "sync", None)
    if sync is not None and timebase is not None:
        return TransportFollower(sync, timebase, state_follower)
    return state_follower


def _clock_timebase(engine: ControlTarget, config: ControlConfig, surfaces: ControlSurfaces,
                    frame_offset: Callable[[], int] | None) -> Timebase | None:
    """How MIDI clock stamps become audio-clock samples (see the module docstring): exact for
    JACK MIDI into JACK audio; otherwise from the stamp's age on the input's own clock."""
    transport = getattr(engine, "transport", None)
    if transport is None:
        return None
    rate = float(transport.sample_rate)
    if config.midi_in and config.midi_in[0].split(":", 1)[0] == "jack":
        if frame_offset is not None:
            return FrameTimebase(rate, frame_offset)

        def jack_now() -> float:
            """The first JACK MIDI input's current frame time, in seconds."""
            midi_input = surfaces.inputs[0]
            return float(midi_input.client.frame_time) / float(midi_input.samplerate)

        return AgeTimebase(rate, transport.now, jack_now)
    return AgeTimebase(rate, transport.now)


def _open_input(spec: str, n: int, router: MidiRouter, config: ControlConfig,
                jack_host: Any = None) -> Any:
    try:
        return _open_input_unchecked(spec, n, router, config, jack_host)
    except RiffError:
        raise
    except Exception as exc:  # jack.JackOpenError, rtmidi/mido errors: one line for the CLI
        raise SurfaceUnavailable(f"MIDI input {spec!r} cannot start: {exc}") from exc


def _open_input_unchecked(spec: str, n: int, router: MidiRouter, config: ControlConfig,
                          jack_host: Any = None) -> Any:
    kind, _, name = spec.partition(":")
    suffix = f"-{n}" if n else ""
    if kind == "jack":
        from protocols.midi.jack_input import JackMidiInput

        jack_input = JackMidiInput(router.handle, client_name=f"{config.client_name}-midi{suffix}",
                                   port_name=f"midi_in{suffix}",
                                   connect=(name,) if name else (),
                                   servername=config.jack_server,
                                   feedback=config.midi_feedback, host=jack_host)
        jack_input.start()
        return jack_input
    from protocols.midi.rtmidi_input import RtMidiInput

    rt_input = RtMidiInput(router.handle, port=name or None,
                           client_name=f"{config.client_name}-rtmidi{suffix}",
                           api=config.rtmidi_api, feedback=config.midi_feedback)
    rt_input.start()
    return rt_input
