"""rtmidi input (through mido): a virtual port others connect to, or a named port.

rtmidi's ALSA backend needs ``/dev/snd/seq``; the JACK backend (``UNIX_JACK``, the default
here) works wherever JACK runs. Other APIs (``LINUX_ALSA``, ``MACOSX_CORE``) are a parameter.

rtmidi calls back on its own thread; the callback only timestamps the message and hands it to
the asyncio loop with ``call_soon_threadsafe``.

With ``feedback=True`` an output port is opened too (virtual ``<name>_out``, or the named
port's output of the same name) for MIDI feedback; :meth:`RtMidiInput.send` runs on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MidiHandler = Callable[[bytes, float], None]


class RtMidiInput:
    """One rtmidi input; ``port=None`` opens a virtual port named ``name``."""

    def __init__(self, handler: MidiHandler, *, port: str | None = None,
                 name: str = "midi_in", client_name: str = "riff-rtmidi",
                 api: str = "UNIX_JACK", feedback: bool = False) -> None:
        self.handler = handler
        self.port_arg = port
        self.name = name
        self.client_name = client_name
        self.api = api
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: Any = None
        self._out: Any = None
        self.feedback = feedback
        self.dropped = 0

    def start(self) -> None:
        """Open the port on the running loop's behalf."""
        import mido

        self._loop = asyncio.get_running_loop()
        backend = mido.Backend(f"mido.backends.rtmidi/{self.api}", load=True)
        if self.port_arg is None:
            self._port = backend.open_input(self.name, virtual=True, callback=self._callback,
                                            client_name=self.client_name)
        else:
            self._port = backend.open_input(self.port_arg, callback=self._callback,
                                            client_name=self.client_name)
        log.info("rtmidi (%s) input %s", self.api, self.port_arg or
                 f"{self.client_name}:{self.name} (virtual)")
        if self.feedback:
            if self.port_arg is None:
                self._out = backend.open_output(f"{self.name}_out", virtual=True,
                                                client_name=f"{self.client_name}-out")
            else:
                self._out = backend.open_output(self.port_arg,
                                                client_name=f"{self.client_name}-out")

    def send(self, data: bytes) -> None:
        """Loop thread: send one MIDI message out of the feedback port."""
        import mido

        if self._out is not None:
            self._out.send(mido.Message.from_bytes(list(data)))

    def _callback(self, message: Any) -> None:
        """rtmidi's thread: timestamp and hand over to the loop; never blocks."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self.handler, bytes(message.bytes()), time.monotonic())
        except RuntimeError:  # the loop closed while the port was still open
            self.dropped += 1

    def close(self) -> None:
        """Close the port."""
        for port in (self._port, self._out):
            if port is not None:
                port.close()
        self._port = self._out = None
