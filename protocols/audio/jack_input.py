"""JACK audio input: ``in_L``/``in_R`` on the engine's own client, feeding the capture tap.

Why on the same client: the input frames of a cycle and the output frames the player renders
in it are the same JACK frames, so the player's clock (on which the bar grid counts) tells
exactly which input frame is on a bar line; ``/riff/capture`` records on that grid
(:mod:`engine.live.capture`).

Threads: :meth:`JackAudioInput.register` and :meth:`JackAudioInput.unregister` run on the
control thread (the host calls them on activation and after a server restart);
:meth:`JackAudioInput.process` runs in the host's Python process callback on JACK's real-time
thread, after the player rendered the cycle. Under the compiled player
(:mod:`protocols.audio.jack_table`) the host's compiled callback does the same without the
GIL, through this input's capture *slot* (the tap's state array, its ring's buffer and
counters, the port pointers), on the same timeline (the callback's sample of the cycle).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.live.capture import CaptureTap


class JackAudioInput:
    """Input ports on a :class:`~protocols.audio.jack_output.JackOutput` client whose frames
    go to ``tap`` (a :class:`~engine.live.capture.CaptureTap`) with the cycle's position on the
    player's clock. A :class:`~protocols.audio.jack_output.PortOwner`."""

    def __init__(self, host: Any, tap: CaptureTap, channels: int = 2) -> None:
        self.host = host
        self.tap = tap
        self.names = (["in_L", "in_R"] if channels == 2
                      else [f"in_{i + 1}" for i in range(channels)])
        self._ports: tuple[Any, ...] = ()
        from protocols.audio import jack_table

        if len(self.names) > jack_table.MAX_INPUTS:
            raise ValueError(f"at most {jack_table.MAX_INPUTS} input channels")
        self._jt = jack_table
        #: What the compiled callback reads (see jack_table's capture slot).
        self._slot = np.zeros(jack_table.C_SLOT, np.int64)
        self._slot[jack_table.C_STATE] = tap.state.ctypes.data
        self._slot[jack_table.C_BUF] = tap.ring.buffer.ctypes.data
        self._slot[jack_table.C_CNT] = tap.ring.counters.ctypes.data
        self._slot[jack_table.C_CAP] = tap.ring.capacity
        self._slot[jack_table.C_CH] = tap.ring.buffer.shape[1]
        self._table: Any = None

    def use_table(self, table: Any) -> None:
        """Be served by the host's compiled callback through ``table`` (a
        :class:`~protocols.audio.jack_table.VoiceTable`), or no longer (None). Control
        thread, called by the host before :meth:`register` and after :meth:`unregister`."""
        if self._table is not None:
            self._table.set_capture(None)
        self._table = table
        if table is not None:
            self._publish_ports()
            table.set_capture(self._slot)

    def _publish_ports(self) -> None:
        """The ports' C pointers into the slot, the count last (0 first). Control thread."""
        from protocols.audio.jack_rt import raw_pointer

        jt = self._jt
        self._slot[jt.C_NPORTS] = 0
        for i, port in enumerate(self._ports):
            self._slot[jt.C_PORT0 + i] = raw_pointer(port)
        self._slot[jt.C_NPORTS] = len(self._ports)

    def register(self, client: Any) -> None:
        """Register the input ports on ``client`` (control thread)."""
        self._ports = tuple(client.inports.register(name) for name in self.names)
        if self._table is not None:
            self._publish_ports()

    def unregister(self) -> None:
        """Unregister the ports (control thread)."""
        ports, self._ports = self._ports, ()
        self._publish_ports()
        for port in ports:
            port.unregister()

    def port_names(self) -> list[str]:
        """Short names of the input ports."""
        return list(self.names)

    def process(self, frames: int) -> None:
        """Hand this cycle's input buffers to the tap when a capture is armed.

        Thread: JACK's process thread, inside the host's callback after the player rendered.
        No locks, no waits, no buffer allocation (the tap copies into its preallocated ring);
        nothing at all while no capture is armed."""
        tap = self.tap
        position = self.host.cycle_position
        if not tap.armed or tap.done or position < 0:
            return
        ports = self._ports
        if len(ports) != len(self.names):
            return  # ports still being registered
        tap.write([port.get_array() for port in ports], position, self.host.cycle_frame)
