"""JACK MIDI input: a JACK port whose events reach the asyncio loop with sample timestamps.

One client: under ``riff run`` the ports live on the engine's own JACK client (``riff:midi_in``,
``host=`` the :class:`~protocols.audio.jack_output.JackOutput`), and its process callback
handles them in the same cycle as the audio: no second client, no second callback. Without a
host (tests, tools) the input opens a client of its own. Either way the ports are registered
after the client is active, so they are connectable the moment they appear.

The JACK process callback copies each event (up to 3 bytes; SysEx is counted and skipped)
into a preallocated ring and, when the ring was idle, writes one byte to a non-blocking pipe
that wakes the loop. The loop drains the ring and hands ``(bytes, seconds)`` to the handler,
where seconds is the event's JACK frame time / sample rate: sample-accurate, which the MIDI
clock's tempo estimate uses.

The ring is single producer (JACK thread) / single consumer (loop): the producer only moves
the write count, the consumer only the read count.

Under the compiled player (:mod:`protocols.audio.jack_table`) the host's process callback is
compiled code without the GIL: it does the same with the same rings (their counters in shared
int64 memory, :class:`~engine.live.ring.SharedSpscRing`) and the same wake-up pipe, through
this input's *slot* (port pointers, ring addresses, the pipe), so the loop side is unchanged.

With ``feedback=True`` the client also has a ``midi_out`` port: :meth:`JackMidiInput.send`
(loop thread) queues short messages in a second preallocated ring that the process callback
writes out at the start of the next period (motorised faders, LED rings).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jack
import numpy as np

from engine.live.ring import SharedSpscRing

log = logging.getLogger(__name__)

MidiHandler = Callable[[bytes, float], None]
_WAKE = b"\x01"
_FRAME_WRAP = 1 << 32


#: One short MIDI message in a ring: up to three bytes, their count, and its JACK frame time
#: (aligned: 16 bytes, the frame at byte 8, as the compiled callback writes it).
MIDI_EVENT = np.dtype([("data", np.uint8, (3,)), ("size", np.uint8), ("frame", np.int64)],
                      align=True)


class JackMidiInput:
    """A MIDI input port (and with ``feedback`` a ``midi_out`` port) feeding ``handler`` on
    the asyncio loop: on ``host``'s JACK client when given, else on a client of its own.

    Threads: the constructor, :meth:`start`, :meth:`close`, :meth:`send` and the draining run
    on the asyncio loop; :meth:`process` runs on JACK's process thread (called by the host's
    callback, or by its own client's).
    """

    def __init__(self, handler: MidiHandler, *, client_name: str = "riff-midi",
                 port_name: str = "midi_in", connect: Sequence[str] = (),
                 servername: str | None = None, capacity: int = 4096,
                 feedback: bool = False, host: Any = None) -> None:
        self.handler = handler
        self._host = host
        self.port_name_short = port_name
        self.feedback = feedback
        self.port: Any = None
        self.out_port: Any = None
        self.capacity = capacity
        self._in = SharedSpscRing(capacity, dtype=MIDI_EVENT)  # JACK thread -> loop
        from protocols.audio import jack_table

        self._jt = jack_table
        #: What the compiled callback reads and writes (see jack_table's MIDI slot); the
        #: Python callback keeps its wake-up flag and SysEx count here too.
        self._slot = np.zeros(jack_table.MIDI_SLOT, np.int64)
        self._table: Any = None
        self._connect = tuple(connect)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._own: Any = None
        if host is None:
            self._own = jack.Client(client_name, no_start_server=True, servername=servername)
        self.samplerate = float(self.client.samplerate)
        self._out = SharedSpscRing(capacity, dtype=MIDI_EVENT)  # loop -> JACK thread
        slot, jt = self._slot, jack_table
        slot[jt.M_IN_BUF] = self._in.buffer.ctypes.data
        slot[jt.M_IN_CNT] = self._in.counters.ctypes.data
        slot[jt.M_IN_CAP] = capacity
        slot[jt.M_OUT_BUF] = self._out.buffer.ctypes.data
        slot[jt.M_OUT_CNT] = self._out.counters.ctypes.data
        slot[jt.M_OUT_CAP] = capacity
        slot[jt.M_FD] = self._wfd
        slot[jt.M_ONE] = 1
        self._out_refused = 0
        self._last_raw: int | None = None
        self._frame_base = 0
        self._xruns = 0
        self.shutdown_reason: str | None = None
        if self._own is not None:
            self._own.set_process_callback(self.process)
            self._own.set_xrun_callback(self._xrun)
            self._own.set_shutdown_callback(self._shutdown)

    @property
    def _wake_pending(self) -> bool:
        """A wake-up byte is in the pipe (set by the JACK thread, cleared by the loop)."""
        return bool(self._slot[self._jt.M_WAKE])

    @_wake_pending.setter
    def _wake_pending(self, value: bool) -> None:
        self._slot[self._jt.M_WAKE] = int(value)

    @property
    def skipped_sysex(self) -> int:
        """Events longer than three bytes (SysEx) skipped by the JACK thread."""
        return int(self._slot[self._jt.M_SYSEX])

    def use_table(self, table: Any) -> None:
        """Be served by the host's compiled callback through ``table`` (a
        :class:`~protocols.audio.jack_table.VoiceTable`), or no longer (None). Loop thread,
        called by the host before :meth:`register` and after :meth:`unregister`."""
        if self._table is not None:
            self._table.remove_midi(self._slot)
        self._table = table
        if table is not None:
            self._publish_ports()
            table.add_midi(self._slot)

    def _publish_ports(self) -> None:
        """Put the current ports' C pointers (0: none) in the slot (loop thread)."""
        from protocols.audio.jack_rt import raw_pointer

        jt = self._jt
        self._slot[jt.M_OUT] = raw_pointer(self.out_port) if self.out_port is not None else 0
        self._slot[jt.M_IN] = raw_pointer(self.port) if self.port is not None else 0

    @property
    def xruns(self) -> int:
        """Xruns reported to the client the ports live on (a missed period loses its
        events)."""
        return self._xruns if self._host is None else int(self._host.xruns)

    @property
    def client(self) -> Any:
        """The JACK client the ports live on (the host's current one, which a server restart
        replaces)."""
        return self._own if self._host is None else self._host.client

    # ---- PortOwner (protocols.audio.jack_output): the host calls these -------------------

    def register(self, client: Any) -> None:
        """Register the ports on ``client`` (active already: connectable at once). Loop
        thread; the host calls it again after a server restart."""
        port = client.midi_inports.register(self.port_name_short)
        out = client.midi_outports.register(self._out_name()) if self.feedback else None
        self.out_port = out
        self.port = port  # last: the process callback checks it
        if self._table is not None:
            self._publish_ports()

    def unregister(self) -> None:
        """Unregister the ports (loop thread)."""
        port, out = self.port, self.out_port
        self.port = self.out_port = None
        self._publish_ports()
        for p in (out, port):
            if p is not None:
                p.unregister()

    def port_names(self) -> list[str]:
        """The short names of the ports."""
        return [self.port_name_short] + ([self._out_name()] if self.feedback else [])

    def _out_name(self) -> str:
        return self.port_name_short.replace("midi_in", "midi_out", 1) \
            if "midi_in" in self.port_name_short else f"{self.port_name_short}_out"

    @property
    def drained(self) -> bool:
        """Whether every event the JACK thread received has been handed over (loop thread)."""
        return self._in.readable() == 0

    @property
    def overflows(self) -> int:
        """Incoming events lost to a full ring (the loop fell behind)."""
        return self._in.dropped_rows

    @property
    def out_dropped(self) -> int:
        """Feedback events not sent: a full ring, no output port, or a malformed message."""
        return self._out.dropped_rows + self._out_refused

    @property
    def port_name(self) -> str:
        """The port's full name (``client:port``) for connecting to it."""
        return str(self.port.name)

    def start(self) -> None:
        """Register the ports (on the host, or on its own client after activating it) on the
        running loop and connect the configured source ports."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._rfd, self._drain)
        if self._host is not None:
            self._host.add_ports(self)
            for source in self._connect:  # the host re-makes them after a server restart
                self._host.connect(self.port_name_short, source, source=False)
                log.info("JACK MIDI: %s -> %s", source, self.port_name)
            return
        self._own.activate()
        self.register(self._own)
        for source in self._connect:
            self._own.connect(source, self.port)
            log.info("JACK MIDI: %s -> %s", source, self.port_name)

    def close(self) -> None:
        """Remove the ports from the host (or deactivate and close its own client), close
        the pipe (loop thread)."""
        if self._loop is not None:
            self._loop.remove_reader(self._rfd)
        if self._host is not None:
            self._host.remove_ports(self)
        else:
            self._own.deactivate()
            self._own.close()
        os.close(self._rfd)
        os.close(self._wfd)
        if self.overflows or self.skipped_sysex or self.xruns:
            log.warning("JACK MIDI: %d events lost to a full ring, %d SysEx skipped, "
                        "%d xruns", self.overflows, self.skipped_sysex, self.xruns)

    def send(self, data: bytes) -> None:
        """Loop thread: queue one short message (1-3 bytes) for the ``midi_out`` port."""
        if self.out_port is None or not 1 <= len(data) <= 3:
            self._out_refused += 1
            return
        slot = self._out.reserve()
        if slot < 0:
            return
        event = self._out.buffer[slot]
        event["data"][:len(data)] = tuple(data)
        event["size"] = len(data)
        self._out.commit()

    def _xrun(self, delay_usecs: float) -> None:
        """JACK notification thread: count (a missed period loses that period's events)."""
        self._xruns += 1

    def _shutdown(self, status: Any, reason: str) -> None:
        """JACK thread, when the server drops this client: remember and log (no JACK calls)."""
        self.shutdown_reason = reason
        log.error("JACK MIDI input %s was shut down by the server: %s", self.port_name, reason)

    def process(self, frames: int) -> None:
        """JACK process thread: copy events into/out of the rings; no locks, logging, waits.
        Called by the host's process callback (or its own client's)."""
        port = self.port
        if port is None:
            return
        if self.out_port is not None:
            self.out_port.clear_buffer()
            out = self._out
            while (slot := out.peek()) >= 0:
                event = out.buffer[slot]
                self.out_port.write_midi_event(0, event["data"][:event["size"]].tobytes())
                out.release()
        base = self.client.last_frame_time
        ring = self._in
        before = ring.head
        for offset, buf in port.incoming_midi_events():
            size = len(buf)
            if size > 3 or size == 0:
                self._slot[self._jt.M_SYSEX] += 1
                continue
            slot = ring.reserve()
            if slot < 0:
                continue
            event = ring.buffer[slot]
            raw = bytes(buf)
            for i in range(size):
                event["data"][i] = raw[i]
            event["size"] = size
            event["frame"] = base + offset
            ring.commit()
        if ring.head != before and not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wfd, _WAKE)
            except BlockingIOError:
                pass  # the pipe already holds a wake-up byte

    def _drain(self) -> None:
        """Loop thread: deliver every event in the ring to the handler, in order."""
        try:
            os.read(self._rfd, 4096)
        except BlockingIOError:
            pass
        self._wake_pending = False  # clear before reading the count: no lost wake-ups
        ring = self._in
        for _ in range(ring.readable()):
            event = ring.buffer[ring.peek()]
            data = event["data"][:event["size"]].tobytes()
            seconds = self._unwrap(int(event["frame"])) / self.samplerate
            ring.release()
            self.handler(data, seconds)

    def _unwrap(self, raw: int) -> int:
        raw %= _FRAME_WRAP
        if self._last_raw is not None and raw < self._last_raw - _FRAME_WRAP // 2:
            self._frame_base += _FRAME_WRAP
        self._last_raw = raw
        return self._frame_base + raw
