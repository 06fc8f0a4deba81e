"""The monitor page: what plays, what comes, bar and beat, tempo, queue, counters, GPU.

``GET /monitor`` serves one static HTML page (``monitor.html`` next to this module, no build
step, no external resources); its script polls ``GET /monitor/status`` every 250 ms and
redraws. The page only reads: it sends no commands, so serving it adds no way to change the
engine.

``/monitor/status`` (JSON): ``status`` (``engine.status()``: bar, tempo, meter, clock, queue,
progress, late, repeated, failed, xruns, ...), ``beat`` (position inside the bar, from 0),
``parameters`` (every parameter's value), ``timeline`` (``Scheduler.timeline()``: the clip
playing and the planned ones, when the engine has a scheduler) and ``gpu``: the playing clip's
generation time against its duration (``ratio`` below 1 keeps up) and ``keeping_up``.

Thread: :meth:`Monitor.handle` runs on the asyncio loop.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from protocols.web.http import Request, Response

PAGE_PATH = "/monitor"
STATUS_PATH = "/monitor/status"


def _finite(value: Any) -> Any:
    """JSON cannot carry NaN or infinities: they become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Monitor:
    """Builds the status document from the engine (any object; missing parts are left out)."""

    def __init__(self, engine: Any, values: Callable[[], Mapping[str, Any]]) -> None:
        self.engine = engine
        self.values = values
        self._page = resources.files(__package__).joinpath("monitor.html").read_bytes()

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
        """The JSON the page polls."""
        status = {k: _finite(v) for k, v in dict(self.engine.status()).items()}
        timeline_of = getattr(getattr(self.engine, "scheduler", None), "timeline", None)
        timeline = timeline_of() if callable(timeline_of) else None
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

    def handle(self, request: Request) -> Response | None:
        """``/monitor`` and ``/monitor/status``; None for other paths."""
        if request.path in (PAGE_PATH, PAGE_PATH + "/"):
            return Response(200, self._page, "text/html; charset=utf-8")
        if request.path == STATUS_PATH:
            body = json.dumps(self.document(), separators=(",", ":"), default=str)
            return Response(200, body.encode("utf-8"))
        return None
