"""MIDI maps: which CC drives which parameter, what notes and program changes do.

A map is a TOML file in ``presets/maps/``::

    description = "Generic 8-knob controller"
    channel = 0                  # optional: listen on this channel only (0-15); omit for all

    [[cc]]                       # CC 1 -> alpha, linear over the whole range
    cc = 1
    address = "/riff/alpha"

    [[cc]]                       # 14-bit pair: CC 2 is the MSB, CC 34 the LSB
    cc = 2
    lsb = 34
    address = "/riff/guidance"
    min = 2.0
    max = 14.0
    curve = "exp"                # linear, exp (fine control at the low end) or log

    [[note]]                     # notes 48..55 pick prompts 0..7 of a prompt set
    note = 48
    last = 55
    action = "prompt"
    list = "lofi"

    [[note]]
    note = 36
    action = "seed_image"        # also: preset, play, stop
    value = "og_beat"

    [[note]]                     # capture the next 2 bars of the audio input as the seed
    note = 37                    # image (riff run --input); bars defaults to /riff/bars
    action = "capture"
    bars = 2

    [[button]]                   # a CC button (value >= 64 presses it) -> a note action
    cc = 41
    action = "play"

    [program]                    # program change n loads presets[n]
    presets = ["lofi", "ambient"]

Everything is validated when the map is read, so a typo is an error at start, not a silent
no-op on stage. Saving (MIDI learn) edits the file it was read from as a TOML document
(tomlkit), so the user's comments, order and layout survive: bindings still in the map keep
their tables, new ones are appended, dropped ones are removed. Thread: maps are immutable;
build and save them on the asyncio loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table

from engine import limits
from engine.errors import InvalidRequest
from engine.live.state import ADDRESSES, PARAMETERS, Value
from engine.model.request import check_plain_id
from engine.presets import read_toml, write_text_atomic

CURVES = ("linear", "exp", "log")
NOTE_ACTIONS = ("seed_image", "preset", "prompt", "play", "stop", "capture")
_K = 4.0  # curvature of exp/log; e**4 ~ 55:1 between the ends' slopes


def shape(x: float, curve: str) -> float:
    """Map 0..1 to 0..1 along ``curve`` (both ends fixed)."""
    if curve == "exp":
        return (math.exp(_K * x) - 1.0) / (math.exp(_K) - 1.0)
    if curve == "log":
        return math.log1p((math.exp(_K) - 1.0) * x) / _K
    return x


def _int(data: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None = None
         ) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(f"MIDI map: {key} must be an integer {lo}..{hi}, not {value!r}")
    return value


def _numeric_address(address: object) -> str:
    if not isinstance(address, str) or address not in ADDRESSES:
        raise InvalidRequest(f"MIDI map: {address!r} is not a parameter address")
    if PARAMETERS[ADDRESSES[address]].kind in ("str", "id"):
        raise InvalidRequest(f"MIDI map: {address} takes text; a CC cannot drive it")
    return address


@dataclasses.dataclass(frozen=True)
class CcBinding:
    """CC (or a 14-bit MSB/LSB pair) -> a numeric parameter, scaled over min..max."""

    cc: int
    address: str
    min: float
    max: float
    curve: str = "linear"
    lsb: int | None = None
    channel: int | None = None

    def __post_init__(self) -> None:
        spec = PARAMETERS[ADDRESSES[_numeric_address(self.address)]]
        for end in (self.min, self.max):  # InvalidRequest when outside the parameter's range
            if not math.isfinite(end):
                raise InvalidRequest(f"MIDI map: min/max for {self.address} must be finite")
            spec.coerce(round(end) if spec.kind in ("int", "bool") else end)
        if self.curve not in CURVES:
            raise InvalidRequest(f"MIDI map: curve must be one of {', '.join(CURVES)}")
        if self.lsb is not None and self.lsb == self.cc:
            raise InvalidRequest("MIDI map: lsb must differ from cc")

    @classmethod
    def from_data(cls, data: Mapping[str, Any], channel: int | None) -> CcBinding:
        """From one ``[[cc]]`` table; min/max default to the parameter's range."""
        extra = set(data) - {"cc", "address", "min", "max", "curve", "lsb", "channel"}
        if extra:
            raise InvalidRequest(f"MIDI map: unknown cc keys {', '.join(sorted(extra))}")
        address = _numeric_address(data.get("address"))
        spec = PARAMETERS[ADDRESSES[address]]
        lo = data.get("min", spec.lo if spec.lo is not None else 0)
        hi = data.get("max", spec.hi if spec.hi is not None else 1)
        for v in (lo, hi):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidRequest(f"MIDI map: min/max for {address} must be numbers")
        cc = _int(data, "cc", 0, 127)
        if cc is None:
            raise InvalidRequest("MIDI map: every [[cc]] needs cc")
        return cls(cc=cc, address=address, min=float(lo), max=float(hi),
                   curve=str(data.get("curve", "linear")), lsb=_int(data, "lsb", 0, 127),
                   channel=_int(data, "channel", 0, 15, channel))

    def to_data(self) -> dict[str, Any]:
        """As a ``[[cc]]`` table."""
        out: dict[str, Any] = {"cc": self.cc, "address": self.address, "min": self.min,
                               "max": self.max, "curve": self.curve}
        if self.lsb is not None:
            out["lsb"] = self.lsb
        if self.channel is not None:
            out["channel"] = self.channel
        return out

    def matches(self, channel: int) -> bool:
        """Whether a message on ``channel`` concerns this binding."""
        return self.channel is None or self.channel == channel

    def value(self, x: float) -> Value:
        """The parameter value for controller position ``x`` in 0..1."""
        spec = PARAMETERS[ADDRESSES[self.address]]
        y = self.min + (self.max - self.min) * shape(min(max(x, 0.0), 1.0), self.curve)
        if spec.kind == "bool":
            return y >= (self.min + self.max) / 2 if self.max != self.min else bool(self.max)
        if spec.kind == "int":
            return round(y)
        return y


@dataclasses.dataclass(frozen=True)
class NoteBinding:
    """Note-on (or a range ``note..last``) -> an action."""

    note: int
    action: str
    last: int | None = None
    value: str = ""
    list: str = ""
    index: int = 0
    channel: int | None = None
    #: ``capture``: bars to capture (0: the current ``/riff/bars``).
    bars: int = 0

    def __post_init__(self) -> None:
        if self.action not in NOTE_ACTIONS:
            raise InvalidRequest(f"MIDI map: note action must be one of "
                                 f"{', '.join(NOTE_ACTIONS)}, not {self.action!r}")
        if self.last is not None and self.last < self.note:
            raise InvalidRequest("MIDI map: last must not be below note")
        if self.action in ("seed_image", "preset"):
            if self.last is not None:
                raise InvalidRequest(f"MIDI map: a {self.action} note takes no range")
            check_plain_id(self.value, f"MIDI map {self.action}")
        if self.action == "prompt":
            check_plain_id(self.list, "MIDI map prompt list")
        if self.action == "capture" and self.last is not None:
            raise InvalidRequest("MIDI map: a capture note takes no range")
        if self.bars and self.action != "capture":
            raise InvalidRequest("MIDI map: bars goes with the capture action only")
        if self.bars:
            lo, hi = limits.CONTROL_BARS
            if not lo <= self.bars <= hi:
                raise InvalidRequest(f"MIDI map: capture bars must be {lo}..{hi}, not "
                                     f"{self.bars}")

    @classmethod
    def from_data(cls, data: Mapping[str, Any], channel: int | None) -> NoteBinding:
        """From one ``[[note]]`` table, or a ``[[button]]`` table (``cc`` for ``note``)."""
        if "cc" in data and "note" not in data:
            data = {("note" if k == "cc" else k): v for k, v in data.items()}
        extra = set(data) - {"note", "last", "action", "value", "list", "index", "channel",
                             "bars"}
        if extra:
            raise InvalidRequest(f"MIDI map: unknown note keys {', '.join(sorted(extra))}")
        note = _int(data, "note", 0, 127)
        if note is None:
            raise InvalidRequest("MIDI map: every [[note]] needs note")
        for key in ("action", "value", "list"):
            if not isinstance(data.get(key, ""), str):
                raise InvalidRequest(f"MIDI map: note {key} must be a string")
        return cls(note=note, action=str(data.get("action", "")),
                   last=_int(data, "last", 0, 127), value=str(data.get("value", "")),
                   list=str(data.get("list", "")), index=_int(data, "index", 0, 511, 0) or 0,
                   channel=_int(data, "channel", 0, 15, channel),
                   bars=_int(data, "bars", 0, 64, 0) or 0)

    def to_data(self) -> dict[str, Any]:
        """As a ``[[note]]`` table."""
        out: dict[str, Any] = {"note": self.note, "action": self.action}
        for key, value in (("last", self.last), ("channel", self.channel)):
            if value is not None:
                out[key] = value
        for key, text in (("value", self.value), ("list", self.list)):
            if text:
                out[key] = text
        if self.index:
            out["index"] = self.index
        if self.bars:
            out["bars"] = self.bars
        return out

    def matches(self, channel: int, note: int) -> bool:
        """Whether this binding handles ``note`` on ``channel``."""
        last = self.note if self.last is None else self.last
        return (self.channel is None or self.channel == channel) and self.note <= note <= last


@dataclasses.dataclass(frozen=True)
class MidiMap:
    """A validated map; ``path`` is where MIDI learn saves it."""

    cc: tuple[CcBinding, ...] = ()
    notes: tuple[NoteBinding, ...] = ()
    buttons: tuple[NoteBinding, ...] = ()
    programs: tuple[str, ...] = ()
    channel: int | None = None
    description: str = ""
    path: Path | None = None

    def __post_init__(self) -> None:
        for name in self.programs:
            check_plain_id(name, "MIDI map program preset")
        seen: set[tuple[int | None, int]] = set()
        for b in self.cc:
            for number in (b.cc, b.lsb):
                if number is None:
                    continue
                if (b.channel, number) in seen:
                    raise InvalidRequest(f"MIDI map: CC {number} is bound twice")
                seen.add((b.channel, number))
        for button in self.buttons:
            if (button.channel, button.note) in seen or (None, button.note) in seen:
                raise InvalidRequest(f"MIDI map: CC {button.note} is a control and a button")

    @classmethod
    def from_data(cls, data: Mapping[str, Any], path: Path | None = None) -> MidiMap:
        """From a parsed TOML document."""
        extra = set(data) - {"description", "channel", "cc", "note", "button", "program"}
        if extra:
            raise InvalidRequest(f"MIDI map: unknown keys {', '.join(sorted(extra))}")
        channel = _int(data, "channel", 0, 15)
        program = data.get("program", {})
        if not isinstance(program, Mapping) or not isinstance(program.get("presets", []), list):
            raise InvalidRequest("MIDI map: [program] needs presets = [...]")
        return cls(
            cc=tuple(CcBinding.from_data(_table(t), channel) for t in _tables(data, "cc")),
            notes=tuple(NoteBinding.from_data(_table(t), channel)
                        for t in _tables(data, "note")),
            buttons=tuple(NoteBinding.from_data(_table(t), channel)
                          for t in _tables(data, "button")),
            programs=tuple(program.get("presets", [])), channel=channel,
            description=str(data.get("description", "")), path=path)

    @classmethod
    def load(cls, path: Path) -> MidiMap:
        """Read and validate a map file."""
        return cls.from_data(read_toml(path, "MIDI map"), path=path)

    def to_data(self) -> dict[str, Any]:
        """As a TOML-ready document."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        if self.channel is not None:
            out["channel"] = self.channel
        if self.programs:
            out["program"] = {"presets": list(self.programs)}
        if self.cc:
            out["cc"] = [b.to_data() for b in self.cc]
        if self.notes:
            out["note"] = [b.to_data() for b in self.notes]
        if self.buttons:
            out["button"] = [_note_to_cc(b.to_data()) for b in self.buttons]
        return out

    def save(self, path: Path | None = None) -> Path:
        """Write atomically to ``path`` (default: where it was read from).

        The document written is the file the map was read from (:attr:`path`), edited to
        match this map (see the module docstring), so comments survive; a map read from no
        file is written fresh."""
        target = path or self.path
        if target is None:
            raise InvalidRequest("MIDI map has no file to save to")
        write_text_atomic(target, tomlkit.dumps(self.to_document()))
        return target

    def to_document(self) -> tomlkit.TOMLDocument:
        """This map as a TOML document: the source file's, edited, or a new one."""
        doc: tomlkit.TOMLDocument | None = None
        if self.path is not None and self.path.is_file():
            try:
                doc = tomlkit.parse(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomlkit.exceptions.ParseError):
                doc = None  # the file changed under us: write this map fresh
        if doc is None:
            doc = tomlkit.document()
            doc.add(tomlkit.comment("riffusion-engine MIDI map"))
        old_channel = doc.get("channel")
        old_channel = old_channel if isinstance(old_channel, int) else None
        data = self.to_data()
        for key in ("description", "channel"):
            if key in data:
                if doc.get(key) != data[key]:
                    doc[key] = data[key]
            elif key in doc:
                del doc[key]
        if "program" in data:
            if not isinstance(doc.get("program"), Mapping) or \
                    list(doc["program"].get("presets", [])) != list(self.programs):
                doc["program"] = data["program"]
        elif "program" in doc:
            del doc["program"]
        _sync_tables(doc, "cc", list(self.cc),
                     lambda t: CcBinding.from_data(t, old_channel), CcBinding.to_data)
        _sync_tables(doc, "note", list(self.notes),
                     lambda t: NoteBinding.from_data(t, old_channel), NoteBinding.to_data)
        _sync_tables(doc, "button", list(self.buttons),
                     lambda t: NoteBinding.from_data(t, old_channel),
                     lambda b: _note_to_cc(b.to_data()))
        return doc

    def with_cc(self, binding: CcBinding) -> MidiMap:
        """A copy where ``binding`` replaces any binding of the same CC or address."""
        def clashes(b: CcBinding) -> bool:
            same_channel = (b.channel is None or binding.channel is None
                            or b.channel == binding.channel)
            shared = ({b.cc, b.lsb} & {binding.cc, binding.lsb}) - {None}
            return b.address == binding.address or (same_channel and bool(shared))

        kept = tuple(b for b in self.cc if not clashes(b))
        return dataclasses.replace(self, cc=(*kept, binding))


def _sync_tables(doc: tomlkit.TOMLDocument, key: str, wanted: list[Any],
                 parse: Callable[[Mapping[str, Any]], Any],
                 render: Callable[[Any], dict[str, Any]]) -> None:
    """Make ``doc[key]`` (an array of tables) hold exactly ``wanted``: a table whose binding is
    still wanted stays as it is (comments included), the others go, new bindings are
    appended."""
    remaining = list(wanted)
    existing = doc.get(key)
    if isinstance(existing, AoT):
        for i in reversed(range(len(existing))):
            try:
                binding = parse(existing[i])
            except InvalidRequest:
                binding = None
            if binding is not None and binding in remaining:
                remaining.remove(binding)
            else:
                del existing[i]
        aot = existing
    else:
        if key in doc:
            del doc[key]
        aot = tomlkit.aot()
        if remaining:
            doc[key] = aot
    for binding in remaining:
        table: Table = tomlkit.table()
        for k, v in render(binding).items():
            table[k] = v
        table.add(tomlkit.nl())
        aot.append(table)
    if key in doc and not len(aot):
        del doc[key]


def _note_to_cc(data: dict[str, Any]) -> dict[str, Any]:
    return {("cc" if k == "note" else k): v for k, v in data.items()}


def _tables(data: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise InvalidRequest(f"MIDI map: {key} must be an array of tables ([[{key}]])")
    return value


def _table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequest("MIDI map: expected a table")
    return value
