"""MIDI feedback out: bound parameters are sent back as CC, so motorised faders and LED rings
show the engine's values (changed by OSC, presets, MIDI clock or another controller).

The value goes through the binding backwards: range, then the inverse curve (``exp`` and
``log`` are each other's inverse), then 7 or 14 bits. Sends are coalesced per CC to at most
``rate_hz`` a second, latest value wins, like OSC feedback.

Thread: a state listener; runs on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from engine.live.state import PARAMETERS, Value
from protocols.midi.map import CcBinding, MidiMap, shape
from protocols.osc.feedback import Args, Coalescer

log = logging.getLogger(__name__)

_INVERSE = {"linear": "linear", "exp": "log", "log": "exp"}


def cc_messages(binding: CcBinding, value: Value, default_channel: int) -> list[bytes]:
    """The CC message(s) that put a controller at ``value`` for ``binding``."""
    v = float(value)
    span = binding.max - binding.min
    t = 0.0 if span == 0 else min(max((v - binding.min) / span, 0.0), 1.0)
    x = shape(t, _INVERSE[binding.curve])
    channel = binding.channel if binding.channel is not None else default_channel
    status = 0xB0 | channel
    if binding.lsb is None:
        return [bytes([status, binding.cc, round(x * 127)])]
    n = round(x * 16383)
    return [bytes([status, binding.cc, n >> 7]), bytes([status, binding.lsb, n & 0x7F])]


class MidiFeedback:
    """State listener that sends CC for every binding of the changed parameter.

    ``current_map()`` returns the map in use (it changes with MIDI learn); ``send(data)`` sends
    one MIDI message.
    """

    def __init__(self, current_map: Callable[[], MidiMap], send: Callable[[bytes], None], *,
                 rate_hz: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        self._map = current_map
        self._send = send
        self.coalescer = Coalescer(1.0 / rate_hz, self._flush, loop.time, loop.call_later)
        self.sent = 0

    def on_change(self, name: str, value: Value) -> None:
        """State listener (asyncio loop)."""
        address = PARAMETERS[name].address
        midi_map = self._map()
        for b in midi_map.cc:
            if b.address == address:
                messages = cc_messages(b, value, midi_map.channel or 0)
                self.coalescer.offer(f"{b.channel}:{b.cc}", tuple(messages))

    def _flush(self, key: str, args: Args) -> None:
        for data in args:
            self._send(data)
            self.sent += 1

    def close(self) -> None:
        """Cancel pending sends."""
        self.coalescer.close()
