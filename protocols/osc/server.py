"""OSC server: the ``/riff`` namespace over UDP, with error replies and feedback.

Why its own asyncio datagram protocol rather than python-osc's server: the socket gets a 4 MiB
receive buffer (``SO_RCVBUF``) so bursts from a sequencer are not dropped, replies go back to
each sender's address, and timetagged bundles are scheduled on the loop (``call_later``) rather
than slept on in the receive path. python-osc still does the parsing and its
``Dispatcher(strict_timing=False)`` matches address patterns (``/riff/seed*``, ``{a,b}``).

Every message is checked for address, arity and wire type here and for range by
:class:`~engine.live.state.EngineState` (seed image and mask ids also against the seed image
library, by :class:`~protocols.control_target.Commands`); a bad one gets
``/riff/error <address> <reason>`` back, a log line and a counter, and changes nothing. A
datagram that cannot be parsed is answered with address ``""``. Replies (errors, pong, state,
recording) go where :meth:`~protocols.osc.feedback.Feedback.reply_targets` says: the sender,
and for a sender that is not subscribed (a throwaway port) also the subscribers listening for
its host.

Buttons: a TouchOSC button sends ``1.0`` on press and ``0.0`` on release, so every address
that takes no argument (``/riff/play``, ``/riff/stop``, ``/riff/state``, ``/riff/ping``)
also takes one number: non-zero acts like the bare message, 0 is ignored. ``/riff/subscribe``
and ``/riff/unsubscribe`` take a port, so there ``0`` is the release (ignored), ``1`` the
press (the sender's own port; port 1 is never an OSC listener) and 2..65535 a port.

Access: a datagram from outside the allowed networks (``OscConfig.allow``, default: see
:mod:`protocols.osc.access`) is dropped before parsing, unanswered, counted (``denied``) and
logged at a limited rate. Commands that write files (``/riff/record/*``,
``/riff/preset/save``, ``/riff/midi/learn``) are refused with ``/riff/error`` when file writes
are off (``OscConfig.file_writes``; default off unless bound to loopback). Feedback only ever
goes to the sender's own host (``/riff/subscribe`` takes a port, not a host), which has passed
the allow-list.

Thread: everything runs on the asyncio loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from engine.errors import InvalidRequest, RiffError
from engine.live.state import ADDRESSES, PARAMETERS
from protocols.control_target import Commands
from protocols.osc.access import AccessControl, default_networks, is_loopback_host, parse_networks
from protocols.osc.feedback import Args, Feedback, Peer, wire_value

log = logging.getLogger(__name__)

_PATTERN_CHARS = frozenset("*?[]{}")
Handler = Callable[[Peer, str, tuple[Any, ...]], None]


@dataclasses.dataclass(frozen=True)
class OscConfig:
    """Where and how the OSC server listens."""

    host: str = "127.0.0.1"
    port: int = 9000
    rcvbuf_bytes: int = 4 * 1024 * 1024
    feedback_hz: float = 30.0
    status_hz: float = 10.0
    #: Bundles timetagged further ahead than this are refused.
    max_schedule_s: float = 3600.0
    #: Scheduled (future) messages held at most; more are refused and counted as dropped.
    max_scheduled: int = 10_000
    #: Seconds the peer moving an address gets no feedback for it (0: echo everything).
    feedback_hold_s: float = 0.5
    #: Networks (CIDR) whose datagrams are served; empty: the default for ``host`` (loopback
    #: for a loopback bind, else this machine's networks; see protocols.osc.access).
    allow: tuple[str, ...] = ()
    #: Whether OSC may write files (record, preset save, MIDI learn); None: only when bound
    #: to loopback.
    file_writes: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(self.allow))
        parse_networks(self.allow)  # raises InvalidRequest for a bad CIDR
        if not 0 <= self.port <= 65535:
            raise InvalidRequest(f"OSC port must be 0..65535, not {self.port}")
        if self.feedback_hz <= 0 or self.status_hz <= 0 or self.rcvbuf_bytes <= 0:
            raise InvalidRequest("OSC rates and buffer size must be positive")
        if not 0 <= self.feedback_hold_s <= 60:
            raise InvalidRequest("the OSC feedback hold must be 0..60 s")


@dataclasses.dataclass
class OscCounters:
    """Message totals: ``received`` = applied + errors + dropped + still scheduled;
    ``denied`` counts datagrams from outside the allowed networks (not in ``received``)."""

    received: int = 0
    applied: int = 0
    errors: int = 0
    dropped: int = 0
    denied: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for logs and status)."""
        return dataclasses.asdict(self)


def build_message(address: str, args: Args) -> bytes:
    """One OSC message as bytes."""
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


_BUNDLE = b"#bundle\0"


def _check_bundle(data: bytes, depth: int = 0) -> None:
    """Raise ValueError unless a bundle's element sizes tile it exactly (nested ones too).

    Why: python-osc slices each element by its declared size without checking it, so a
    bundle whose element claims more bytes than there are would still be applied."""
    if not data.startswith(_BUNDLE):
        return
    if depth > 8:
        raise ValueError("bundles nested too deeply")
    pos = 16  # "#bundle\0" and the timetag
    if len(data) < pos:
        raise ValueError("bundle shorter than its header")
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("bundle element size cut short")
        size = int.from_bytes(data[pos:pos + 4], "big", signed=True)
        pos += 4
        if size <= 0 or size % 4 or pos + size > len(data):
            raise ValueError(f"bundle element size {size} does not fit the bundle")
        _check_bundle(data[pos:pos + size], depth + 1)
        pos += size


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class OscServer(asyncio.DatagramProtocol):
    """The ``/riff`` OSC endpoint; create with :meth:`start`, stop with :meth:`close`."""

    def __init__(self, commands: Commands, config: OscConfig, *, source: str = "OSC") -> None:
        self.commands = commands
        self.config = config
        #: Who sends, in log lines ("OSC", or "monitor page" for the web's commands).
        self.source = source
        self.counters = OscCounters()
        self.transport: asyncio.DatagramTransport | None = None
        self.feedback: Feedback | None = None
        self.rcvbuf_bytes = 0
        self._scheduled: set[asyncio.TimerHandle] = set()
        self._handlers: dict[str, Handler] = {}
        self.dispatcher = Dispatcher(strict_timing=False)
        self._register()
        self.access = AccessControl(parse_networks(config.allow)
                                    or default_networks(config.host))
        self.file_writes = (config.file_writes if config.file_writes is not None
                            else is_loopback_host(config.host))

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, commands: Commands, config: OscConfig | None = None) -> OscServer:
        """Bind the socket (large receive buffer) and start serving on the running loop."""
        config = config or OscConfig()
        server = cls(commands, config)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET,
                             socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.rcvbuf_bytes)
            sock.bind((config.host, config.port))
        except OSError:
            sock.close()
            raise
        # Linux reports twice the granted size (bookkeeping); the cap is net.core.rmem_max.
        server.rcvbuf_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if server.rcvbuf_bytes < config.rcvbuf_bytes:
            log.warning("OSC receive buffer is %d bytes, asked for %d (raise "
                        "net.core.rmem_max); bursts may be dropped",
                        server.rcvbuf_bytes, config.rcvbuf_bytes)
        transport, _ = await loop.create_datagram_endpoint(lambda: server, sock=sock)
        server.transport = transport
        server.feedback = Feedback(server.send, commands.engine.status,
                                   rate_hz=config.feedback_hz, status_hz=config.status_hz,
                                   hold_s=config.feedback_hold_s)
        commands.state.add_listener(server.feedback.on_change)
        log.info("OSC listening on udp %s:%d; from %s; file writes %s", *server.address[:2],
                 server.access.describe(), "on" if server.file_writes else "off")
        return server

    @property
    def address(self) -> Peer:
        """The bound (host, port); the port is real when 0 was asked for."""
        assert self.transport is not None, "server not started"
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def stats(self) -> dict[str, int]:
        """Counters plus feedback totals (for logs and the daemon's status)."""
        out = self.counters.as_dict()
        out["scheduled"] = len(self._scheduled)
        if self.feedback is not None:
            out["subscribers"] = len(self.feedback.subscribers)
            out["feedback_sent"] = self.feedback.counters.sent
            out["feedback_coalesced"] = self.feedback.coalescer.superseded
            out["feedback_held"] = self.feedback.counters.held
        return out

    async def close(self) -> None:
        """Stop serving: cancel scheduled messages and feedback, close the socket."""
        for handle in self._scheduled:
            handle.cancel()
            self.counters.dropped += 1
        self._scheduled.clear()
        if self.feedback is not None:
            self.commands.state.remove_listener(self.feedback.on_change)
            self.feedback.close()
        if self.transport is not None:
            self.transport.close()
        log.info("OSC stopped: %s", self.stats())

    # -- asyncio.DatagramProtocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by the loop when the socket is ready."""
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        """Called by the loop for ICMP errors (a subscriber went away): log and count."""
        self.counters.dropped += 1
        log.debug("OSC send error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Called by the loop for each datagram: parse, then dispatch or schedule."""
        peer: Peer = (addr[0], addr[1])
        if not self.access.allows(peer[0]):
            self.counters.denied += 1
            self.access.deny(peer)
            return
        try:
            if len(data) % 4:
                # OSC packets are 4-byte aligned; python-osc pads a truncated float instead.
                raise ValueError("length is not a multiple of 4")
            _check_bundle(data)
            packet = OscPacket(data)
        except Exception as exc:  # python-osc raises several types for garbage
            self.counters.received += 1
            self._error(peer, "", f"malformed OSC datagram ({exc})")
            return
        now = time.time()
        for timed in packet.messages:
            self.counters.received += 1
            delay = timed.time - now
            if delay <= 0.0005:
                self._dispatch(peer, timed.message)
            elif delay > self.config.max_schedule_s:
                self._error(peer, timed.message.address,
                            f"timetag is more than {self.config.max_schedule_s:g} s ahead")
            elif len(self._scheduled) >= self.config.max_scheduled:
                self.counters.dropped += 1
                self._error(peer, timed.message.address, "too many scheduled messages",
                            count=False)
            else:
                self._schedule(delay, peer, timed.message)

    def _schedule(self, delay: float, peer: Peer, message: OscMessage) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._scheduled.discard(handle)
            self._dispatch(peer, message)

        handle = loop.call_later(delay, fire)
        self._scheduled.add(handle)

    # -- sending ---------------------------------------------------------------------------

    def send(self, peer: Peer, address: str, args: Args) -> None:
        """Send one message to ``peer`` (asyncio loop only)."""
        if self.transport is None or self.transport.is_closing():
            self.counters.dropped += 1
            return
        try:
            data = build_message(address, args)
        except Exception:
            self.counters.dropped += 1
            log.exception("cannot build OSC reply %s %r", address, args)
            return
        self.transport.sendto(data, peer)

    def reply(self, sender: Peer, address: str, args: Args) -> None:
        """Send a reply to a message from ``sender``: to the sender and, when it is not
        subscribed, to the subscribers listening for its host (asyncio loop only)."""
        targets = self.feedback.reply_targets(sender) if self.feedback is not None else [sender]
        for target in targets:
            self.send(target, address, args)

    def _error(self, peer: Peer, address: str, reason: str, *, count: bool = True) -> None:
        self.refuse(peer, address, reason, count=count)
        self.reply(peer, "/riff/error", (address, reason))

    def refuse(self, peer: Peer, address: str, reason: str, *,
                count: bool = True) -> tuple[str, str]:
        """Count and log one refusal; returns ``(address, reason)``."""
        if count:
            self.counters.errors += 1
        log.warning("%s %s from %s:%s refused: %s", self.source, address or "datagram", *peer,
                    reason)
        return address, reason

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, peer: Peer, message: OscMessage) -> None:
        try:
            address = message.address
            args = tuple(message.params)
        except Exception as exc:
            self._error(peer, "", f"malformed OSC message ({type(exc).__name__})")
            return
        for target, reason in self.apply(peer, address, args):
            self.reply(peer, "/riff/error", (target, reason))

    def apply(self, peer: Peer, address: str, args: tuple[Any, ...]) -> list[tuple[str, str]]:
        """Check and apply one message from ``peer``: the address (patterns too), arity, wire
        types, then the state's range checks. Returns the refusals, ``(address, reason)``
        each, already counted and logged; ``[]`` when everything was applied. Sends no
        ``/riff/error`` itself (:meth:`_dispatch` does, the monitor page shows them), so the
        OSC server and the page's WebSocket share one validation path.

        Thread: the asyncio loop."""
        if not address.startswith("/"):
            return [self.refuse(peer, address, "an OSC address starts with '/'")]
        targets: list[tuple[str, Handler]] = []
        if _PATTERN_CHARS.isdisjoint(address):
            handler = self._handlers.get(address)
            if handler is not None:
                targets.append((address, handler))
        else:
            targets = [(h.args[0], h.callback) for h in self.dispatcher.handlers_for_address(
                address)]
        if not targets:
            return [self.refuse(peer, address, "unknown address")]
        refused: list[tuple[str, str]] = []
        for target, handler in targets:
            try:
                handler(peer, target, args)
            except RiffError as exc:
                refused.append(self.refuse(peer, target, str(exc)))
            except Exception as exc:
                refused.append(self.refuse(peer, target,
                                            f"internal error: {type(exc).__name__}"))
                log.exception("OSC handler for %s failed", target)
            else:
                self.counters.applied += 1
        return refused

    def _register(self) -> None:
        table: dict[str, Handler] = {
            "/riff/play": self._play, "/riff/stop": self._stop,
            "/riff/state": self._state, "/riff/ping": self._ping,
            "/riff/preset/load": self._preset_load, "/riff/preset/save": self._preset_save,
            "/riff/midi/learn": self._learn,
            "/riff/subscribe": self._subscribe, "/riff/unsubscribe": self._unsubscribe,
            "/riff/record/start": self._record_start, "/riff/record/stop": self._record_stop,
        }
        for address in ADDRESSES:
            table[address] = self._set_parameter
        self._handlers = table
        for address, handler in table.items():
            # python-osc keeps fixed args with the handler; we use them to know the target.
            self.dispatcher.map(address, handler, address)

    # -- handlers (asyncio loop; raise RiffError for bad input) ------------------------------

    @staticmethod
    def _arity(address: str, args: tuple[Any, ...], lo: int, hi: int) -> None:
        if not lo <= len(args) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} or {hi}"
            raise InvalidRequest(f"{address} takes {want} argument(s), got {len(args)}")

    @classmethod
    def _one_string(cls, address: str, args: tuple[Any, ...]) -> str:
        cls._arity(address, args, 1, 1)
        if not isinstance(args[0], str):
            raise InvalidRequest(f"{address} takes a string, got {type(args[0]).__name__}")
        return args[0]

    def _set_parameter(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        spec = PARAMETERS[ADDRESSES[address]]
        self._arity(address, args, 1, 1)
        value = args[0]
        if spec.kind in ("str", "id"):
            if not isinstance(value, str):
                raise InvalidRequest(f"{address} takes a string, got {type(value).__name__}")
        elif not (_number(value) or (spec.kind == "bool" and isinstance(value, bool))):
            raise InvalidRequest(f"{address} takes a number, got {type(value).__name__}")
        if self.feedback is None:
            self.commands.set_address(address, value)
            return
        with self.feedback.moving(peer, address):
            self.commands.set_address(address, value)

    @classmethod
    def _pressed(cls, address: str, args: tuple[Any, ...]) -> bool:
        """No argument, or one number as a button sends it: 0 is the release (ignored)."""
        cls._arity(address, args, 0, 1)
        if not args:
            return True
        if not _number(args[0]) and not isinstance(args[0], bool):
            raise InvalidRequest(f"{address} takes no argument or a number, got "
                                 f"{type(args[0]).__name__}")
        return bool(args[0])

    def _play(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        if self._pressed(address, args):
            self.commands.play()

    def _stop(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        if self._pressed(address, args):
            self.commands.stop()

    def _ping(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        if self._pressed(address, args):
            self.reply(peer, "/riff/pong", ())

    def _state(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        if self._pressed(address, args):
            for target in (self.feedback.reply_targets(peer) if self.feedback is not None
                           else [peer]):
                self.send_state(target)

    def send_state(self, peer: Peer) -> None:
        """Send every parameter to ``peer`` at its own address."""
        for name, value in self.commands.state.items():
            self.send(peer, PARAMETERS[name].address, (wire_value(value),))

    def _preset_load(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        self.commands.load_preset(self._one_string(address, args))

    def _preset_save(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        """``/riff/preset/save name [overwrite]``: 1 (or T) replaces an existing user preset."""
        self._writes_files(address)
        self._arity(address, args, 1, 2)
        name = args[0]
        if not isinstance(name, str):
            raise InvalidRequest(f"{address} takes a string, got {type(name).__name__}")
        overwrite = args[1] if len(args) > 1 else 0
        if not (isinstance(overwrite, bool) or (_number(overwrite) and overwrite in (0, 1))):
            raise InvalidRequest(f"{address}: the overwrite flag is 0 or 1, not {overwrite!r}")
        self.commands.save_preset(name, overwrite=bool(overwrite))

    def _learn(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        self._writes_files(address)
        self.commands.start_learn(self._one_string(address, args))

    def _writes_files(self, address: str) -> None:
        """Refuse a command that writes files when OSC may not (see OscConfig.file_writes)."""
        if self.file_writes:
            return
        if self.config.file_writes is False:
            raise InvalidRequest(f"{address} writes files, which is off for OSC "
                                 "(riff run --osc-readonly-files)")
        raise InvalidRequest(f"{address} writes files, which is off for OSC while it listens "
                             f"on {self.config.host}, not loopback (riff run "
                             "--osc-allow-file-writes turns it on)")

    def _recorder(self) -> Any:
        engine = self.commands.engine
        if not callable(getattr(engine, "record_start", None)):
            raise InvalidRequest("this engine cannot record")
        return engine

    def _record_start(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        """Start a take (``[name]``: a plain file name); replies ``/riff/record/started``
        with the audio file's name."""
        self._writes_files(address)
        self._arity(address, args, 0, 1)
        name = self._one_string(address, args) if args else None
        path = self._recorder().record_start(name or None)
        self.reply(peer, "/riff/record/started", (str(path.name),))

    def _record_stop(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        """Stop the take; replies ``/riff/record/stopped <audio> <log>`` (file names) once
        both files are complete. The take stops at once; the files are finished off the loop
        (the engine's future), so a long take never stalls OSC, MIDI or the scheduler."""
        self._writes_files(address)
        self._arity(address, args, 0, 0)
        future = self._recorder().record_stop()
        if not isinstance(future, asyncio.Future):  # an engine that stops synchronously
            audio, control = future
            self.reply(peer, "/riff/record/stopped", (str(audio.name), str(control.name)))
            return

        def stopped(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                self._error(peer, address, "the take's stop was cancelled")
                return
            exc = f.exception()
            if isinstance(exc, RiffError):
                self._error(peer, address, str(exc))
            elif exc is not None:
                log.error("finishing the take failed", exc_info=exc)
                self._error(peer, address, f"internal error: {type(exc).__name__}")
            else:
                audio, control = f.result()
                self.reply(peer, "/riff/record/stopped", (str(audio.name), str(control.name)))

        future.add_done_callback(stopped)

    def _subscription(self, peer: Peer, address: str, args: tuple[Any, ...]) -> Peer | None:
        """The peer to (un)subscribe: the sender's own port for no argument or a button press
        (1, T), ``None`` for a button release (0, F: ignored), else (host, port 2..65535)."""
        self._arity(address, args, 0, 1)
        if not args:
            return peer
        port = args[0]
        if isinstance(port, bool):
            return peer if port else None
        if not _number(port) or not (0 <= port <= 65535 and port == int(port)):
            raise InvalidRequest(f"{address} takes a port number 2..65535 (or a button's 1 or "
                                 f"0), got {port!r}")
        if port == 0:
            return None
        if port == 1:
            return peer
        return peer[0], int(port)

    def _subscribe(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        target = self._subscription(peer, address, args)
        if target is None:
            return
        assert self.feedback is not None
        if not self.feedback.subscribe(target, sender=peer):
            raise InvalidRequest(f"too many subscribers (at most "
                                 f"{self.feedback.max_subscribers})")
        log.info("OSC feedback to %s:%d", *target)
        self.send_state(target)
        try:
            status = self.feedback.status_now()
        except Exception:
            log.exception("engine status() failed while subscribing %s:%d", *target)
            status = {}
        for key, value in status.items():
            self.send(target, f"/riff/status/{key}", (wire_value(value),))

    def _unsubscribe(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        target = self._subscription(peer, address, args)
        if target is None:
            return
        assert self.feedback is not None
        if not self.feedback.unsubscribe(target):
            raise InvalidRequest(f"{target[0]}:{target[1]} is not subscribed")
