"""JACK output: a client with stereo output ports whose process callback plays a :class:`Player`.

Why here and not in ``engine``: JACK is a wire protocol like OSC; the engine only knows the
player, whose :meth:`~engine.live.player.Player.render` is what the callback runs.

Threads: the constructor, :meth:`JackOutput.start` and :meth:`JackOutput.close` run on the
control thread. JACK calls :meth:`JackOutput._process` on its real-time thread and the xrun
and shutdown callbacks on its notification thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from engine.errors import RiffError
from engine.live.player import Player
from engine.takes.recording import TakeController

log = logging.getLogger(__name__)

#: How many callback durations are kept for :meth:`JackOutput.callback_durations`.
TIMING_RING = 1 << 16

TRANSPORT_NONE, TRANSPORT_STOPPED, TRANSPORT_ROLLING = 0, 1, 2
TRANSPORT_NAMES = {TRANSPORT_NONE: "none", TRANSPORT_STOPPED: "stopped",
                   TRANSPORT_ROLLING: "rolling"}

START_HINT = (
    "start one first, e.g. `jackd -d alsa` (a sound card), `jackd -d dummy -r 48000 -p 256` "
    "(no sound card), or with qjackctl; or render to a file with --output FILE.wav"
)


def _jack_error(message: str) -> None:
    """libjack's error messages. Thread: any libjack thread; only logs at debug level."""
    log.debug("libjack: %s", message)


def _jack_info(message: str) -> None:
    """libjack's info messages. Thread: any libjack thread; only logs at debug level."""
    log.debug("libjack: %s", message)


class PortOwner(Protocol):
    """A part with ports on the :class:`JackOutput` client (a JACK MIDI input, the audio
    input)."""

    def register(self, client: Any) -> None:
        """Register its ports on ``client`` (control thread; again after a server restart)."""

    def unregister(self) -> None:
        """Unregister its ports (control thread)."""

    def port_names(self) -> list[str]:
        """Short names of its ports."""

    def process(self, frames: int) -> None:
        """Its share of the process callback (JACK's process thread: no locks, no waits)."""


class NoJackServer(RiffError):
    """No JACK server answers under the requested name."""


class JackOutput:
    """A JACK client ``name`` with ports ``out_L``/``out_R`` (``out_1..n`` for other counts).

    Life cycle. The constructor opens the client; :meth:`activate` (or :meth:`start`, which
    also attaches the player) activates it at once and only then registers the ports, so every
    port is connectable the moment it appears (JACK refuses connections to the ports of an
    inactive client, which is what a patchbay that connects on "port registered" trips over).
    Until a player is attached the ports play silence; until the player's first clip it plays
    silence by itself.

    Latency. Output ports report a capture latency of ``latency_frames`` (the engine's
    look-ahead: how far its output lags its own clock, 0 for the player, which renders the
    frame JACK asks for); JACK propagates their playback latency from what they feed.

    Server restarts. When the server goes away (its shutdown callback) :attr:`shutdown_reason`
    says so; :meth:`reconnect` (the control thread retries it with backoff) opens the client
    again under the same name, activates it, registers the same ports and re-makes the
    connections this object made itself. The player keeps its state meanwhile (its clock
    stands still while nothing renders).
    """

    def __init__(self, name: str = "riff", server: str | None = None, channels: int = 2,
                 follow_transport: bool = False, latency_frames: int | None = None,
                 render_ahead: int = 0, max_render_ahead: int | None = None,
                 compiled_player: bool = True) -> None:
        import jack  # lazily: `riff --help` and file output do not need libjack

        self._jack = jack
        # libjack prints its own diagnostics on stderr; route them to the log instead, so a
        # missing server is one clear line, not a screenful.
        jack.set_error_function(_jack_error)
        jack.set_info_function(_jack_info)
        self.server = server
        self.port_names = (["out_L", "out_R"] if channels == 2
                           else [f"out_{i + 1}" for i in range(channels)])
        if render_ahead and follow_transport and not compiled_player:
            raise ValueError("following JACK transport needs the compiled player or the "
                             "Python callback (render_ahead=0)")
        #: Frames the render thread keeps ahead of the compiled callback (0: the Python
        #: callback renders the player itself).
        self.render_ahead = int(render_ahead)
        #: How far the render thread may fill ahead while it is being starved (adaptive
        #: look-ahead, see :class:`~protocols.audio.jack_rt.RenderAhead`); ``render_ahead``
        #: when not given (fixed).
        self.max_render_ahead = max(self.render_ahead, int(
            self.render_ahead if max_render_ahead is None else max_render_ahead))
        self.latency_frames = int(self.render_ahead if latency_frames is None
                                  else latency_frames)
        #: With render-ahead: the callback mixes the player's clips itself from a table of
        #: voices (:mod:`protocols.audio.jack_table`), or (False) copies frames a Python
        #: thread rendered into a ring (:mod:`protocols.audio.jack_rt`).
        self.compiled_player = bool(compiled_player)
        self._rt: Any = None
        self._render: Any = None
        self._ring_origin = 0
        self._player: Player | None = None
        self._takes: TakeController | None = None
        self._durations = np.zeros(TIMING_RING, np.int64)
        self._entry = np.zeros(TIMING_RING, np.int64)
        self._calls = 0
        self._first_frame_time = -1
        self._frame_offset = 0
        #: The player's clock and the JACK frame time at the first frame of the current
        #: (Python callback) cycle, for the parts hosted on this client (audio input):
        #: -1 while no player renders. Written by the process thread only.
        self.cycle_position = -1
        self.cycle_frame = 0
        #: Why the server dropped this client ("" while connected).
        self.shutdown_reason = ""
        #: Times :meth:`reconnect` brought the client back after the server went away.
        self.reconnects = 0
        #: Xruns the server reported to this client.
        self.xruns = 0
        self._active = False
        #: (our port's short name, the other port's full name, we are the source) for every
        #: connection this object made, re-made after a server restart.
        self._connections: list[tuple[str, str, bool]] = []
        self.follow_transport = follow_transport
        # Seqlock-published JACK transport BBT: seq, sample, bar, beat, tempo, beats per bar.
        self._bbt = np.zeros(6, np.float64)
        self._rolling = jack.ROLLING
        self._bbt_flag = jack._lib.JackPositionBBT
        #: JACK transport as seen in the last cycle: TRANSPORT_NONE (no timebase master gives
        #: BBT), TRANSPORT_STOPPED or TRANSPORT_ROLLING (a one-element array the process
        #: thread writes; -1 before the first cycle).
        self._transport_state = np.full(1, -1, np.int64)
        #: The registered output ports; empty until :meth:`activate`.
        self.ports: list[Any] = []
        self._ports: tuple[Any, ...] = ()  # what the process callback reads
        self._latency_handle: Any = None
        #: Parts with ports of their own on this client (JACK MIDI inputs, the audio input):
        #: registered on activation and after a server restart; their ``process`` runs in
        #: the Python callback, the compiled one serves them through the voice table.
        self._owners: list[PortOwner] = []
        self._hooks: tuple[Callable[[int], None], ...] = ()
        self.client = self._open(name, exact=False)
        self.name = self.client.name
        self.sample_rate = int(self.client.samplerate)
        self.blocksize = int(self.client.blocksize)
        if self.render_ahead and self.compiled_player and self.render_ahead < 3 * self.blocksize:
            # The planner publishes at least two periods past the callback, plus one to plan.
            log.info("JACK: the compiled player publishes 3 periods (%d frames) ahead, not %d",
                     3 * self.blocksize, self.render_ahead)
            if latency_frames is None:
                self.latency_frames = 3 * self.blocksize
            self.render_ahead = 3 * self.blocksize

    @property
    def frame_offset(self) -> int:
        """JACK frame time minus player position of the same sample, as of the latest cycle
        (moves on xruns and, with render-ahead, on underruns). Any thread."""
        if self._rt is None:
            return self._frame_offset
        played = self._rt.played_at()
        if played is None:
            return 0
        frame, ring_frame = played
        return frame - (ring_frame + self._ring_origin)

    @property
    def first_frame_time(self) -> int:
        """The JACK frame time of the first cycle; -1 before it. Any thread."""
        if self._rt is None:
            return self._first_frame_time
        return 0 if self._rt.calls else -1

    def _open(self, name: str, exact: bool) -> Any:
        """Open a client and install every callback (control thread); raises NoJackServer."""
        jack = self._jack
        try:
            client = jack.Client(name, use_exact_name=exact, no_start_server=True,
                                 servername=self.server)
        except jack.JackOpenError as exc:
            where = f"named {self.server!r} " if self.server else ""
            raise NoJackServer(f"no JACK server {where}is running ({exc}); {START_HINT}") from None
        if self.render_ahead and self.compiled_player:
            from protocols.audio import jack_table

            if self._rt is None:
                self._rt = jack_table.VoiceTable(len(self.port_names))
                if self.follow_transport:
                    self._rt.set_transport(self._bbt, self._transport_state)
            from protocols.audio.jack_rt import raw_pointer

            self._rt.set_client(raw_pointer(client))  # no stale pointers once it runs
            jack_table.install(client, self._rt)
        elif self.render_ahead:
            from protocols.audio import jack_rt

            if self._rt is None:
                ring = 1 << max(12, (self.max_render_ahead
                                      + 2 * int(client.blocksize)).bit_length())
                self._rt = jack_rt.RtTable(len(self.port_names), ring)
            jack_rt.install(client, self._rt)
        else:
            client.set_process_callback(self._process)
        client.set_xrun_callback(self._xrun)
        client.set_shutdown_callback(self._shutdown)
        from protocols.audio import jack_c

        self._latency_handle = jack_c.set_latency_callback(client, self._latency)
        return client

    # ---- control thread ---------------------------------------------------------------------

    def activate(self) -> None:
        """Activate the client, then register its ports (connectable as soon as they exist).
        Safe to call twice. Control thread."""
        if self._active:
            return
        self.client.activate()
        self._active = True
        for name in self.port_names:
            port = self.client.outports.register(name)
            self.ports.append(port)
            self._ports = (*self._ports, port)  # published whole: the callback sees old or new
        if self._rt is not None:
            from protocols.audio import jack_rt

            self._rt.set_ports(jack_rt.raw_pointer(self.client),
                               [jack_rt.raw_pointer(p) for p in self.ports])
        for owner in self._owners:
            owner.register(self.client)

    def add_ports(self, owner: PortOwner) -> None:
        """Host ``owner``'s ports on this client (a JACK MIDI input, the audio input):
        ``owner.register(client)`` now if active (and after every server restart); with the
        Python callback ``owner.process(frames)`` in every callback after the audio, with the
        compiled player ``owner.use_table(table)``, after which the compiled callback serves
        the owner's ports itself (without the GIL). Control thread."""
        if self.render_ahead:
            use_table = getattr(owner, "use_table", None)
            if not self.compiled_player or use_table is None:
                raise RiffError(f"{type(owner).__name__} ports on the engine's client need the "
                                "compiled player or the Python callback (render_ahead=0)")
            use_table(self._rt)  # the compiled callback serves it: no Python hook
        self._owners.append(owner)
        if self._active:
            owner.register(self.client)
        if not self.render_ahead:
            self._hooks = (*self._hooks, owner.process)

    def remove_ports(self, owner: PortOwner) -> None:
        """Stop hosting ``owner``: no more callbacks, its ports unregistered. Control thread."""
        self._hooks = tuple(h for h in self._hooks if h != owner.process)
        self._owners.remove(owner)
        self._connections = [c for c in self._connections if c[0] not in owner.port_names()]
        if self._active and not self.shutdown_reason:
            owner.unregister()
        if self.render_ahead:
            owner.use_table(None)  # type: ignore[attr-defined]

    def start(self, player: Player, connect: bool = True,
              takes: TakeController | None = None) -> list[str]:
        """Play ``player`` (activating the client first if needed); connect to the system
        playback ports unless ``connect`` is false. ``takes`` gets every period's port
        buffers after the player filled them (recording; see also :meth:`set_takes`).
        Returns the ports connected to (control thread)."""
        if player.config.sample_rate != self.sample_rate:
            raise ValueError(f"player runs at {player.config.sample_rate} Hz, JACK at "
                             f"{self.sample_rate} Hz")
        self._takes = takes
        self._player = player
        if self._rt is not None and self._render is None and self.compiled_player:
            from protocols.audio import jack_table

            self._rt.ctl[jack_table.CHANNELS] = player.config.channels
            self._rt.start_at(player.position())
            self._render = jack_table.Planner(self._rt, player, self.render_ahead,
                                              self.blocksize, outputs=len(self.port_names))
            self._render.tap = self._tap
            self._render.step()  # the first cycles find their voices published
            self._render.start()
        elif self._rt is not None and self._render is None:
            from protocols.audio import jack_rt

            self._ring_origin = player.position() - int(self._rt.ctl[jack_rt.WRITE])
            self._render = jack_rt.RenderAhead(self._rt, player.render, self.render_ahead,
                                               self.blocksize, self.sample_rate,
                                               max_ahead=self.max_render_ahead)
            self._render.position = player.position
            self._render.tap = self._tap
            self._render.fill()  # the first cycles find frames ready
            self._render.start()
        self.activate()
        connected: list[str] = []
        if connect:
            targets = self.client.get_ports(is_physical=True, is_input=True, is_audio=True)
            for port, target in zip(self.ports, targets, strict=False):
                self.connect(port.shortname, target.name)
                connected.append(target.name)
            if not targets:
                log.warning("no physical playback ports to connect to; connect %s:%s yourself",
                            self.name, self.port_names[0])
        return connected

    def set_takes(self, takes: TakeController | None) -> None:
        """Tap every period's output into ``takes`` from the next cycle on (control thread)."""
        self._takes = takes

    def _tap(self, buffers: list[np.ndarray], position: int) -> None:
        """Render-ahead: hand each rendered block to the take (render thread)."""
        takes = self._takes
        if takes is not None:
            takes.write_channels(buffers, position)

    def connect(self, port: str, other: str, source: bool = True) -> None:
        """Connect our port ``port`` (short name) to ``other`` (a full port name; ``source``
        false: from ``other`` to ours), and remember it for a server restart. Control thread."""
        ours = f"{self.name}:{port}"
        if source:
            self.client.connect(ours, other)
        else:
            self.client.connect(other, ours)
        self._connections.append((port, other, source))

    def connections(self) -> list[tuple[str, str, bool]]:
        """The connections this object made: (our port, the other port, we are the source)."""
        return list(self._connections)

    def set_latency(self, frames: int) -> None:
        """Report ``frames`` of capture latency on the output ports from now on (control
        thread); the server recomputes the graph's latencies."""
        self.latency_frames = int(frames)
        if self._active and not self.shutdown_reason:
            from protocols.audio import jack_c

            jack_c.recompute_latencies(self.client)

    def reconnect(self) -> bool:
        """After the server went away: open the client again under the same name, activate
        it, register the same ports and re-make this object's connections. False (and
        nothing changed) while no server answers. Control thread."""
        if not self.shutdown_reason:
            return True
        # Release the dead client before libjack opens another (libjack crashes otherwise);
        # closing is idempotent, so every retry may do it.
        self._ports = ()
        self.ports = []
        self._active = False
        self.client.close()
        try:
            client = self._open(self.name, exact=True)
        except NoJackServer:
            return False
        if int(client.samplerate) != self.sample_rate:
            rate = int(client.samplerate)
            client.close()
            raise RiffError(f"the JACK server came back at {rate} Hz, not {self.sample_rate} "
                            "Hz: restart the engine")
        self.client = client
        self.blocksize = int(client.blocksize)
        self.shutdown_reason = ""
        self.activate()
        for port, other, source in self._connections:
            ours = f"{self.name}:{port}"
            try:
                if source:
                    client.connect(ours, other)
                else:
                    client.connect(other, ours)
            except self._jack.JackError as exc:  # the other client is not back (yet)
                log.warning("JACK: cannot re-make the connection %s %s %s: %s", ours,
                            "->" if source else "<-", other, exc)
        self.reconnects += 1
        return True

    def close(self) -> None:
        """Deactivate and close the client (ports disappear); safe to call twice."""
        if self._render is not None:
            self._render.stop()
        if self._active:
            self._active = False
            if not self.shutdown_reason:
                try:
                    self.client.deactivate()
                except self._jack.JackError as exc:  # the server may be gone already
                    log.warning("deactivating the JACK client failed: %s", exc)
        self.client.close()

    def callback_durations(self) -> np.ndarray:
        """Durations of the most recent process callbacks in nanoseconds (a copy)."""
        if self._rt is not None:
            from protocols.audio import jack_rt

            n = min(self._rt.calls, jack_rt.DURATIONS, len(self._rt.durations))
            return self._rt.durations[:n] * 1000
        n = min(self._calls, TIMING_RING)
        return self._durations[:n].copy()

    def cycle_finish_us(self) -> np.ndarray:
        """For the most recent callbacks: microseconds from the start of the JACK cycle to the
        end of our callback (waiting for the GIL included). Under the period means this
        client was never the reason for an xrun."""
        if self._rt is not None:  # no cycle-start offset is measured there
            return self.callback_durations() / 1e3
        n = min(self._calls, TIMING_RING)
        return self._entry[:n] * (1e6 / self.sample_rate) + self._durations[:n] / 1e3

    def timing_summary(self) -> dict[str, float]:
        """Callback duration and cycle finish statistics in microseconds, and the period."""
        d = self.callback_durations() / 1e3
        f = self.cycle_finish_us()
        if d.size == 0:
            return {"callbacks": 0, "period_us": self.blocksize / self.sample_rate * 1e6}
        return {"callbacks": int(d.size),
                "period_us": self.blocksize / self.sample_rate * 1e6,
                "duration_p50_us": float(np.percentile(d, 50)),
                "duration_p99_us": float(np.percentile(d, 99)),
                "duration_max_us": float(d.max()),
                "finish_p99_us": float(np.percentile(f, 99)),
                "finish_max_us": float(f.max())}

    @property
    def callbacks(self) -> int:
        """Process callbacks run so far."""
        return self._rt.calls if self._rt is not None else self._calls

    @property
    def render_error(self) -> BaseException | None:
        """Render-ahead: the exception that ended the render thread, if it died."""
        return self._render.error if self._render is not None else None

    def render_stats(self) -> dict[str, float]:
        """Render-ahead: how the render thread kept up (its wakes, the longest gap between
        two in ms, the fewest frames a wake found in the ring, wakes that found it under a
        quarter full, its look-ahead target now); empty with the Python callback. Any
        thread (a snapshot of plain counters)."""
        r = self._render
        if r is None:
            return {}
        if self.compiled_player:
            return {"max_gap_ms": round(r.max_gap_s * 1e3, 2), "skips": r.skips,
                    "late_records": self._rt.late_records,
                    "records": self._rt.records}
        return {"wakes": r.wakes, "max_gap_ms": round(r.max_gap_s * 1e3, 2),
                "min_level_frames": r.min_level, "late_wakes": r.late_wakes,
                "target_frames": r.target}

    @property
    def ring_underruns(self) -> int:
        """Render-ahead: periods the compiled callback found the ring short (0 otherwise)."""
        if self._rt is None or self.compiled_player:  # the voice table has no ring
            return 0
        return int(self._rt.underruns)

    # ---- JACK threads -----------------------------------------------------------------------

    def _process(self, frames: int) -> None:
        """Copy the player's next ``frames`` into the output port buffers (silence before a
        player is attached).

        Thread: JACK's real-time process thread. Must not block, take locks, log, print, do
        I/O or allocate audio buffers; it only renders from preallocated slots and counts.
        Port buffers are fetched per call (JACK 2 may move them between cycles).
        """
        t0 = time.perf_counter_ns()
        client = self.client
        entry = client.frames_since_cycle_start  # includes any wait for the GIL
        if self._first_frame_time < 0:
            self._first_frame_time = client.last_frame_time
        player = self._player
        ports = self._ports
        if player is None:
            self.cycle_position = -1
            for port in ports:
                port.get_array().fill(0.0)
        else:
            self.cycle_frame = client.last_frame_time
            self.cycle_position = player.position()
            self._frame_offset = self.cycle_frame - self.cycle_position
            if self.follow_transport:
                self._publish_bbt(player.position())
            buffers = [port.get_array() for port in ports]
            if len(buffers) == len(self.port_names):
                player.render(buffers)
                if self._takes is not None:
                    self._takes.write_channels(buffers, player.position())
            else:  # ports still being registered: silence until all exist
                for buf in buffers:
                    buf.fill(0.0)
        for hook in self._hooks:
            hook(frames)
        i = self._calls & (TIMING_RING - 1)
        self._durations[i] = time.perf_counter_ns() - t0
        self._entry[i] = entry
        self._calls += 1

    def _publish_bbt(self, sample: int) -> None:
        """Publish the transport's state (no timebase master, stopped, rolling) and, when a
        timebase master provides them and the transport rolls, its bar/beat/tempo at this
        cycle's first sample. Thread: JACK's process thread; reads a preallocated position
        struct and writes preallocated arrays."""
        state, pos = self.client.transport_query_struct()
        if not pos.valid & self._bbt_flag or pos.ticks_per_beat <= 0:
            self._transport_state[0] = TRANSPORT_NONE
            return
        if state != self._rolling:
            self._transport_state[0] = TRANSPORT_STOPPED
            return
        self._transport_state[0] = TRANSPORT_ROLLING
        bbt = self._bbt
        bbt[0] += 1  # odd: writing
        bbt[1] = sample
        bbt[2] = pos.bar - 1
        bbt[3] = pos.beat - 1 + pos.tick / pos.ticks_per_beat
        bbt[4] = pos.beats_per_minute
        bbt[5] = pos.beats_per_bar
        bbt[0] += 1  # even: complete

    def transport_bbt(self) -> tuple[int, int, float, float, int] | None:
        """The latest JACK transport position ``(sample, bar, beat, tempo, beats_per_bar)``
        (0-based bar and beat, on the player's clock), or None when there is none.
        Thread: the control thread."""
        for _ in range(4):
            seq = self._bbt[0]
            values = self._bbt[1:].copy()
            if seq > 0 and seq % 2 == 0 and self._bbt[0] == seq:
                return (int(values[0]), int(values[1]), float(values[2]), float(values[3]),
                        round(values[4]))
        return None

    def transport_state(self) -> str:
        """``"rolling"``, ``"stopped"`` (a timebase master gives BBT, the transport is
        stopped), ``"none"`` (no timebase master) or ``""`` (no cycle yet).
        Thread: the control thread."""
        return TRANSPORT_NAMES.get(int(self._transport_state[0]), "")

    def _xrun(self, delay_usecs: float) -> None:
        """Count an xrun. Thread: JACK's notification thread; must not block."""
        self.xruns += 1
        if self._player is not None:
            self._player.count_xrun()

    def _shutdown(self, status: Any, reason: str) -> None:
        """Remember that the server went away. Thread: JACK's notification thread; must not
        call back into JACK or block."""
        self.shutdown_reason = reason or "JACK server shut down"

    def _latency(self, mode: int) -> None:
        """Report the output ports' capture latency (the engine's look-ahead); their playback
        latency is what JACK computed from the ports they feed. Thread: JACK's notification
        thread (never the process thread)."""
        from protocols.audio import jack_c

        if mode == jack_c.CAPTURE:
            for port in self._ports:
                jack_c.set_port_latency(port, jack_c.CAPTURE, self.latency_frames,
                                        self.latency_frames)
