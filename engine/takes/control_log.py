"""The control log: what was played, as data, so a live set can be re-rendered offline.

A JSON Lines file beside a recording. The first line is a header (sample rate, transport,
the full parameter state at the start); then, in order, every accepted command with the
sample and bar position where it took effect, every generation request it caused (the
complete :class:`~engine.model.request.InferenceRequest` plus the clip spec), the sample where each
generated clip started to play, and an ``end`` line when the recording stops cleanly.

Lines are flushed to the OS as they are written, so after a crash the log reads back up to
its last whole line; :func:`read_control_log` ignores a torn last line and reports
``complete=False`` when the ``end`` line is missing.

Line format (one JSON object each; ``type`` first)::

    {"type": "header", "version": 1, "sample_rate": 48000, "channels": 2, "audio": "set.wav",
     "started": "2026-01-01T20:00:00+00:00", "state": {...}, "info": {...}}
    {"type": "command", "sample": 96000, "bar": 1.0, "name": "/riff/prompt",
     "args": ["jazz"], "source": "osc"}
    {"type": "generation", "sample": 96000, "bar": 1.0, "job": "7", "request": {...},
     "clip": {...}}
    {"type": "clip_start", "sample": 192000, "bar": 2.0, "job": "7"}
    {"type": "end", "sample": 480000, "bar": 5.0}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from engine.errors import InvalidRequest
from engine.live.wire import parse_request
from engine.model.request import InferenceRequest

log = logging.getLogger(__name__)

VERSION = 1
#: Scalars a command argument may be; commands carry OSC/MIDI-like values only.
_SCALARS = (str, int, float, bool, type(None))


@dataclasses.dataclass(frozen=True)
class LogHeader:
    """The log's first line: the context every later position is relative to."""

    sample_rate: int
    channels: int = 2
    audio: str | None = None
    started: str = ""
    state: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    version: int = VERSION

    def __post_init__(self) -> None:
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or not (
            8000 <= self.sample_rate <= 384000
        ):
            raise InvalidRequest(f"header sample_rate {self.sample_rate!r} is out of range")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or not (
            1 <= self.channels <= 32
        ):
            raise InvalidRequest(f"header channels {self.channels!r} is out of range")
        if self.version != VERSION:
            raise InvalidRequest(f"control log version {self.version!r} is not {VERSION}")
        if not isinstance(self.state, Mapping) or not isinstance(self.info, Mapping):
            raise InvalidRequest("header state and info must be JSON objects")


@dataclasses.dataclass(frozen=True)
class CommandEvent:
    """An accepted command (an OSC address or parameter name with its arguments)."""

    sample: int
    bar: float
    name: str
    args: tuple[Any, ...] = ()
    source: str | None = None


@dataclasses.dataclass(frozen=True)
class GenerationEvent:
    """A generation request the engine issued; ``clip`` is the clip spec as JSON data."""

    sample: int
    bar: float
    job: str
    request: InferenceRequest
    clip: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ClipStartEvent:
    """A generated clip started to play at ``sample`` (a bar line, or a beat line for a
    lattice clip, which is read from the earlier sample ``origin``: it came in mid-loop)."""

    sample: int
    bar: float
    job: str
    origin: int | None = None


@dataclasses.dataclass(frozen=True)
class EndEvent:
    """The recording stopped cleanly at ``sample``."""

    sample: int
    bar: float


Event = CommandEvent | GenerationEvent | ClipStartEvent | EndEvent


@dataclasses.dataclass(frozen=True)
class ControlLog:
    """A control log read back: header, events in file order, and whether it ended cleanly."""

    header: LogHeader
    events: tuple[Event, ...]
    complete: bool

    def of_type(self, kind: type) -> list[Any]:
        """The events of one class, in order."""
        return [e for e in self.events if isinstance(e, kind)]


class ControlLogWriter:
    """Appends control-log lines; every method is safe from any thread except the audio thread.

    Callers are the control thread / asyncio loop (commands, generation requests) and the
    player's control side (clip starts); a lock keeps lines whole. Never call from the JACK
    process callback: writing a line does file I/O. Each line is flushed to the OS (enough to
    survive a crash of the process); ``fsync_s`` adds an fsync at most that often (enough to
    survive a power cut, at the price of a disk wait on the calling thread).
    """

    def __init__(self, path: Path | str, header: LogHeader, *,
                 fsync_s: float | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fsync_s = fsync_s
        self._last_sync = time.monotonic()
        self._file: TextIO | None = self.path.open("x", encoding="utf-8")
        self.lines = 0
        if not header.started:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            header = dataclasses.replace(header, started=now)
        self._write({"type": "header", **_jsonable(dataclasses.asdict(header), "header")})

    def command(
        self, name: str, args: Sequence[Any] = (), *, sample: int, bar: float,
        source: str | None = None,
    ) -> None:
        """Log an accepted command at its sample/bar position."""
        for value in args:
            if not isinstance(value, _SCALARS):
                raise InvalidRequest(f"command argument {value!r} is not a plain value")
        self._write({"type": "command", **_position(sample, bar), "name": str(name),
                     "args": list(args), "source": source})

    def generation(
        self, job: str | int, request: InferenceRequest, clip: Mapping[str, Any] | object = (),
        *, sample: int, bar: float,
    ) -> None:
        """Log a generation request (and its clip spec, a dataclass or mapping)."""
        if dataclasses.is_dataclass(clip) and not isinstance(clip, type):
            clip_data: Any = dataclasses.asdict(clip)
        else:
            clip_data = dict(clip) if isinstance(clip, Mapping) else {}
        self._write({"type": "generation", **_position(sample, bar), "job": str(job),
                     "request": request.to_dict(), "clip": _jsonable(clip_data, "clip")})

    def clip_start(self, job: str | int, *, sample: int, bar: float,
                   origin: int | None = None) -> None:
        """Log that the clip of ``job`` started to play (read from ``origin`` when given:
        see :class:`ClipStartEvent`)."""
        extra = {} if origin is None else {"origin": int(origin)}
        self._write({"type": "clip_start", **_position(sample, bar), "job": str(job),
                     **extra})

    def close(self, *, sample: int | None = None, bar: float = 0.0) -> None:
        """Write the ``end`` line (when ``sample`` is given) and close the file."""
        with self._lock:
            if self._file is None:
                return
        try:
            if sample is not None:
                self._write({"type": "end", **_position(sample, bar)})
            with self._lock:
                if self._file is not None:
                    self._file.flush()
                    os.fsync(self._file.fileno())
        finally:  # a full disk must not leak the file: close it, then raise
            with self._lock:
                if self._file is not None:
                    file, self._file = self._file, None
                    try:
                        file.close()
                    except OSError as exc:
                        log.warning("closing %s: %s", self.path, exc)

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        with self._lock:
            if self._file is None:
                raise RuntimeError("control log is closed")
            self._file.write(line + "\n")
            self._file.flush()
            self.lines += 1
            now = time.monotonic()
            if self._fsync_s is not None and now - self._last_sync >= self._fsync_s:
                os.fsync(self._file.fileno())
                self._last_sync = now


def read_control_log(path: Path | str) -> ControlLog:
    """Read and validate a control log; raises InvalidRequest naming the bad line."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] != "":
        log.warning("%s: ignoring a torn last line (the writer was interrupted)", path)
    lines = lines[:-1]  # the text after the last newline: "" or a torn line
    if not lines:
        raise InvalidRequest(f"{path}: control log is empty")
    header: LogHeader | None = None
    events: list[Event] = []
    complete = False
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise InvalidRequest(f"{where}: a line must be a JSON object")
        kind = record.pop("type", None)
        if number == 1:
            if kind != "header":
                raise InvalidRequest(f"{where}: the first line must be the header")
            header = _build(LogHeader, record, where)
            continue
        if complete:
            raise InvalidRequest(f"{where}: lines after the end line")
        events.append(_event(kind, record, where))
        complete = isinstance(events[-1], EndEvent)
    assert header is not None
    return ControlLog(header=header, events=tuple(events), complete=complete)


def _event(kind: object, record: dict[str, Any], where: str) -> Event:
    _check_position(record, where)
    if kind == "command":
        if not isinstance(record.get("name"), str) or not isinstance(record.get("args"), list):
            raise InvalidRequest(f"{where}: command needs a name and a list of args")
        record["args"] = tuple(record["args"])
        return _build(CommandEvent, record, where)
    if kind == "generation":
        try:
            record["request"] = parse_request(record.get("request"))
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc}") from None
        if not isinstance(record.get("clip", {}), dict):
            raise InvalidRequest(f"{where}: clip must be a JSON object")
        return _build(GenerationEvent, record, where)
    if kind == "clip_start":
        origin = record.get("origin")
        if origin is not None and (isinstance(origin, bool) or not isinstance(origin, int)
                                   or not 0 <= origin <= record["sample"]):
            raise InvalidRequest(f"{where}: origin must be an integer sample from 0 to the "
                                 "clip's start")
        return _build(ClipStartEvent, record, where)
    if kind == "end":
        return _build(EndEvent, record, where)
    raise InvalidRequest(f"{where}: unknown line type {kind!r}")


def _build(cls: Any, record: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - known)
    if unknown:
        raise InvalidRequest(f"{where}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(**record)
    except TypeError as exc:
        raise InvalidRequest(f"{where}: {exc}") from None


def _check_position(record: Mapping[str, Any], where: str) -> None:
    sample, bar = record.get("sample"), record.get("bar")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise InvalidRequest(f"{where}: sample must be a non-negative integer")
    if isinstance(bar, bool) or not isinstance(bar, int | float) or not math.isfinite(bar):
        raise InvalidRequest(f"{where}: bar must be a finite number")


def _position(sample: int, bar: float) -> dict[str, Any]:
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise InvalidRequest(f"sample position must be a non-negative integer, not {sample!r}")
    if not math.isfinite(bar):
        raise InvalidRequest(f"bar position must be finite, not {bar!r}")
    return {"sample": int(sample), "bar": float(bar)}


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (numpy scalars become Python numbers)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=_coerce))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{where} is not JSON data: {exc}") from None


def _coerce(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")
