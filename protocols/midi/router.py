"""MIDI input routing: CC, notes, program change and clock -> engine commands, plus learn.

Inputs (:mod:`protocols.midi.jack_input` for JACK MIDI ports, :mod:`protocols.midi.rtmidi_input` for
rtmidi) deliver raw MIDI bytes with a timestamp to :meth:`MidiRouter.handle` on the asyncio
loop; the router looks them up in the :class:`~protocols.midi.map.MidiMap` and drives the
engine through :class:`~protocols.control_target.Commands`, exactly as OSC does, so a MIDI
message can never do what an OSC message could not.

MIDI learn: :meth:`MidiRouter.start_learn` (``/riff/midi/learn <address>``) arms the router;
the next CC that arrives is bound to that address over the parameter's whole range and the map
is saved to ``learn_path`` (the surfaces pass the map's own file, or a file of the same name in
the user's presets folder for a built-in map), else back to the file it was read from unless that
is a shipped map (then a file of the same name in the user's folder), else to
``maps/learned.toml`` in the user's presets folder. The shipped files are never written.

Thread: everything here runs on the asyncio loop.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from engine.errors import InvalidRequest, RiffError
from engine.live.state import ADDRESSES, PARAMETERS
from protocols.control_target import Commands
from protocols.midi.clock import MidiClock
from protocols.midi.map import CcBinding, MidiMap, NoteBinding

log = logging.getLogger(__name__)

CONTROL_CHANGE, NOTE_ON, PROGRAM_CHANGE = 0xB0, 0x90, 0xC0


@dataclasses.dataclass
class MidiCounters:
    """Message totals: received = applied + errors + ignored (+ learn captures)."""

    received: int = 0
    applied: int = 0
    errors: int = 0
    ignored: int = 0
    learned: int = 0


class MidiRouter:
    """Applies MIDI messages to the engine according to a map."""

    def __init__(self, commands: Commands, midi_map: MidiMap, *,
                 clock: MidiClock | None = None, learn_path: Path | None = None) -> None:
        self.commands = commands
        self.clock = clock
        self.counters = MidiCounters()
        self.learn_path = learn_path
        self.learning: str | None = None
        self._msb: dict[tuple[int, int], int] = {}
        self._buttons_down: dict[tuple[int, int], bool] = {}
        self.map = midi_map
        self._index()

    def _index(self) -> None:
        self._by_cc: dict[int, list[CcBinding]] = {}
        for b in self.map.cc:
            for number in (b.cc, b.lsb):
                if number is not None:
                    self._by_cc.setdefault(number, []).append(b)

    def start_learn(self, address: str) -> None:
        """Bind the next CC to ``address`` (validated by Commands.start_learn)."""
        if address not in ADDRESSES:
            raise InvalidRequest(f"{address} is not a parameter address")
        self.learning = address
        log.info("MIDI learn: move a control to bind it to %s", address)

    def handle(self, data: bytes | tuple[int, ...], t: float) -> None:
        """Handle one MIDI message (asyncio loop); never raises for bad input."""
        self.counters.received += 1
        try:
            applied = self._route(data, t)
        except RiffError as exc:
            self.counters.errors += 1
            log.warning("MIDI %s not applied: %s", bytes(data).hex(" "), exc)
            return
        if applied:
            self.counters.applied += 1
        else:
            self.counters.ignored += 1

    def _route(self, data: bytes | tuple[int, ...], t: float) -> bool:
        if not data or data[0] < 0x80:
            return False
        status = data[0]
        if status >= 0xF0:
            return self.clock is not None and self.clock.handle(data, t)
        kind, channel = status & 0xF0, status & 0x0F
        if kind == CONTROL_CHANGE and len(data) == 3:
            return self._control_change(channel, data[1], data[2])
        if kind == NOTE_ON and len(data) == 3 and data[2] > 0:
            return self._note(channel, data[1])
        if kind == PROGRAM_CHANGE and len(data) >= 2:
            return self._program(data[1])
        return False

    def _control_change(self, channel: int, cc: int, value: int) -> bool:
        if self.learning is not None:
            self._learn(channel, cc)
            return True
        for button in self.map.buttons:
            if button.matches(channel, cc):
                was_down = self._buttons_down.get((channel, cc), False)
                self._buttons_down[(channel, cc)] = down = value >= 64
                if down and not was_down:
                    self._note_action(button, cc)
                    return True
                return False
        applied = False
        for b in self._by_cc.get(cc, ()):
            if not b.matches(channel):
                continue
            if b.lsb is None:
                x = value / 127.0
            elif cc == b.cc:  # MSB: coarse value now, the LSB refines it
                self._msb[(channel, b.cc)] = value
                x = (value << 7) / 16383.0
            else:
                x = ((self._msb.get((channel, b.cc), 0) << 7) | value) / 16383.0
            self.commands.set_address(b.address, b.value(x))
            applied = True
        return applied

    def _note(self, channel: int, note: int) -> bool:
        for b in self.map.notes:
            if b.matches(channel, note):
                self._note_action(b, note)
                return True
        return False

    def _note_action(self, b: NoteBinding, note: int) -> None:
        if b.action == "seed_image":
            self.commands.set_address("/riff/seed_image", b.value)
        elif b.action == "preset":
            self.commands.load_preset(b.value)
        elif b.action == "prompt":
            prompt_set = self.commands.presets.prompt_set(b.list)
            self.commands.set_address("/riff/prompt", prompt_set.pick(note - b.note + b.index))
        elif b.action == "play":
            self.commands.play()
        elif b.action == "stop":
            self.commands.stop()
        elif b.action == "capture":
            bars = b.bars or int(self.commands.state.get("bars"))
            job, _ = self.commands.capture(bars)
            log.info("MIDI: capture %s armed for bar %d", job.name, job.bar)

    def _program(self, program: int) -> bool:
        if program >= len(self.map.programs):
            return False
        self.commands.load_preset(self.map.programs[program])
        return True

    def _learn(self, channel: int, cc: int) -> None:
        address, self.learning = self.learning, None
        assert address is not None
        spec = PARAMETERS[ADDRESSES[address]]
        lo = float(spec.lo) if spec.lo is not None else 0.0
        hi = float(spec.hi) if spec.hi is not None else 1.0
        binding = CcBinding(cc=cc, address=address, min=lo, max=hi, channel=channel)
        new_map = self.map.with_cc(binding)
        path = new_map.save(self.learn_path or
                            self.commands.presets.writable_map_path(self.map.path))
        self.map = dataclasses.replace(new_map, path=path)
        self._index()
        self.counters.learned += 1
        log.info("MIDI learn: CC %d on channel %d -> %s (saved to %s)", cc, channel + 1,
                 address, path)
