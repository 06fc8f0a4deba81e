"""The monitor page: what plays, what comes, bar and beat, tempo, counters, and controls.

``GET /monitor`` serves one static HTML page (``monitor.html`` next to this module, no build
step, no external resources). Its script opens the WebSocket ``/monitor/ws``:

- the server first sends ``{"type": "hello", "controls": [...], "actions": [...]}``: one
  control per parameter, generated from :data:`engine.live.state.PARAMETERS` (the table OSC
  and OSCQuery use: address, kind, OSCQuery type tag, range, default, description), and the
  action addresses the page may send;
- then ``{"type": "status", ...}`` (the document below) whenever it changed, checked
  :data:`PUSH_INTERVAL_S` apart and right after each command;
- the page sends commands as OSC messages in JSON, ``{"id": 7, "address": "/riff/alpha",
  "args": [0.5]}``, and gets ``{"type": "reply", "id": 7, "ok": true, "errors": []}`` back
  (``errors``: ``[{"address", "reason"}]``, the same reasons ``/riff/error`` carries over OSC).

Commands go through :meth:`protocols.osc.server.OscServer.apply`, the OSC server's own
handler table and checks (address, arity, wire types, the state's ranges, seed image ids), so
a value OSC refuses is refused here with the same reason and changes nothing. Only the
parameters and :data:`WEB_ACTIONS` are open to the page: nothing that writes files or
answers over UDP.

The status document (also ``GET /monitor/status``, JSON): ``status`` (``engine.status()``:
bar, tempo, meter, clock, queue, progress, late, repeated, failed, xruns, ...), ``beat``
(position inside the bar, from 0), ``parameters`` (every parameter's value), ``timeline``
(``Scheduler.timeline()``: the clip playing and the planned ones, when the engine has a
scheduler; each with ``image``, the URL of its spectrogram while its audio is at hand) and
``gpu``: the playing clip's generation time against its duration (``ratio`` below 1 keeps up)
and ``keeping_up``.

Thread: everything here runs on the asyncio loop (the web app's routes); nothing blocks, the
spectrogram pictures are drawn in a worker thread (:mod:`protocols.web.pictures`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from engine.live.state import ADDRESSES, PARAMETERS
from protocols.osc.feedback import Peer
from protocols.osc.server import OscServer
from protocols.web.oscquery import osc_type

PAGE_PATH = "/monitor"
STATUS_PATH = "/monitor/status"
SOCKET_PATH = "/monitor/ws"
CLIP_PATH = "/monitor/clip"
#: Seconds between checks for a changed document on each WebSocket.
PUSH_INTERVAL_S = 0.2
#: The actions the page may send besides the parameters (no file writes, no UDP replies).
WEB_ACTIONS: Mapping[str, str] = {
    "/riff/play": "start the transport",
    "/riff/stop": "stop the transport",
    "/riff/preset/load": "load a preset by name",
}
#: An integer parameter whose range is wider than this gets a number field, not a slider.
MAX_SLIDER_STEPS = 1000
#: The longest command message the page may send (characters).
MAX_COMMAND_CHARS = 16 * 1024


def _finite(value: Any) -> Any:
    """JSON cannot carry NaN or infinities: they become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def controls() -> list[dict[str, Any]]:
    """One control per parameter, in the table's order: ``name``, ``address``, ``kind``,
    ``type`` (the OSCQuery type tag), ``widget`` (``slider``, ``number``, ``toggle``,
    ``text``), ``min``/``max``/``step`` for numbers, ``default`` and ``description``."""
    out: list[dict[str, Any]] = []
    for name, spec in PARAMETERS.items():
        control: dict[str, Any] = {"name": name, "address": spec.address, "kind": spec.kind,
                                   "type": osc_type(spec), "default": spec.default,
                                   "description": spec.help or name}
        if spec.kind in ("int", "float") and spec.lo is not None and spec.hi is not None:
            control["min"], control["max"] = spec.lo, spec.hi
            if spec.kind == "int":
                control["step"] = 1
                wide = spec.hi - spec.lo > MAX_SLIDER_STEPS
                control["widget"] = "number" if wide else "slider"
            else:
                control["step"] = (spec.hi - spec.lo) / MAX_SLIDER_STEPS
                control["widget"] = "slider"
        elif spec.kind == "bool":
            control["widget"] = "toggle"
        else:
            control["widget"] = "text"
        out.append(control)
    return out


def _scalar(value: object) -> bool:
    return isinstance(value, str | bool | int | float)


class Monitor:
    """Builds the status document from the engine (any object; missing parts are left out)
    and applies the page's commands through ``dispatch`` (see the module docstring)."""

    def __init__(self, engine: Any, values: Callable[[], Mapping[str, Any]],
                 dispatch: OscServer, pictures: Any = None) -> None:
        self.engine = engine
        self.values = values
        self.dispatch = dispatch
        self.pictures = pictures
        self.page = resources.files(__package__).joinpath("monitor.html").read_bytes()
        self.hello = {"type": "hello", "controls": controls(),
                      "actions": [{"address": a, "description": d}
                                  for a, d in WEB_ACTIONS.items()]}

    def _beat(self) -> float | None:
        transport = getattr(self.engine, "transport", None)
        if transport is None:
            return None
        try:
            now = transport.now()
            bar = transport.bar_at(now)
            segment = transport.segment_at(now)
            return round(float((now - transport.bar_start(bar)) / segment.samples_per_beat), 3)
        except Exception:
            return None

    def document(self) -> dict[str, Any]:
        """The status document (``/monitor/status``, and each push on the WebSocket)."""
        status = {k: _finite(v) for k, v in dict(self.engine.status()).items()}
        timeline_of = getattr(getattr(self.engine, "scheduler", None), "timeline", None)
        timeline = timeline_of() if callable(timeline_of) else None
        if timeline is not None and self.pictures is not None:
            for clip in (timeline["playing"], *timeline["upcoming"]):
                if clip is not None:
                    clip["image"] = self.pictures.url(clip["job"])
        gpu: dict[str, Any] = {"ratio": None, "keeping_up": None, "generation_s": None}
        playing = timeline.get("playing") if timeline else None
        if playing and playing.get("duration_s"):
            ratio = playing["generation_s"] / playing["duration_s"]
            late_now = any(slot.get("late") for slot in timeline["upcoming"]) \
                if timeline else False
            gpu = {"ratio": round(ratio, 3), "keeping_up": ratio < 1.0 and not late_now,
                   "generation_s": round(playing["generation_s"], 3)}
        return {"status": status, "beat": self._beat(), "parameters": dict(self.values()),
                "timeline": timeline, "gpu": gpu}

    def status_text(self) -> str:
        """The document as a pushed message (JSON text)."""
        return json.dumps({"type": "status", **self.document()}, separators=(",", ":"),
                          default=str)

    def command(self, peer: Peer, text: str) -> dict[str, Any]:
        """Apply one command message from the page (see the module docstring); returns the
        reply. Bad JSON, a bad shape or an address the page may not use is refused here;
        everything else is decided by the OSC server's handlers."""
        ident: Any = None
        try:
            if len(text) > MAX_COMMAND_CHARS:
                raise ValueError(f"a command is at most {MAX_COMMAND_CHARS} characters")
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError("a command is a JSON object")
            ident = message.get("id")
            if not (ident is None or isinstance(ident, int | str)):
                ident = None
                raise ValueError("id is a number or a string")
            address, args = message.get("address"), message.get("args", [])
            if not isinstance(address, str):
                raise ValueError("address is a string")
            if not isinstance(args, list) or not all(_scalar(a) for a in args):
                raise ValueError("args is a list of numbers, strings and booleans")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            reason = f"bad command: {exc}"
            return self._reply(ident, [self.dispatch.refuse(peer, "", reason)])
        if address not in WEB_ACTIONS and address not in ADDRESSES:
            reason = "not open to the monitor page (parameters, play, stop, preset/load)"
            return self._reply(ident, [self.dispatch.refuse(peer, address, reason)])
        return self._reply(ident, self.dispatch.apply(peer, address, tuple(args)))

    @staticmethod
    def _reply(ident: Any, errors: list[tuple[str, str]]) -> dict[str, Any]:
        return {"type": "reply", "id": ident, "ok": not errors,
                "errors": [{"address": a, "reason": r} for a, r in errors]}
