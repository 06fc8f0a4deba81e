"""OSC feedback: rate-limited, latest-wins updates to subscribed controllers.

A TouchOSC fader follows the engine when the engine sends the parameter's new value to the
same address the fader sends on. A knob turned quickly changes a parameter hundreds of times a
second; feedback is coalesced per address to at most ``rate_hz`` sends (30 Hz by default) and
the latest value always wins, so the controller ends on the right value.

Thread: all of this runs on the asyncio loop (state listeners are called there too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from engine.live.state import PARAMETERS, Value

log = logging.getLogger(__name__)

Args = tuple[Any, ...]
#: The status keys sent as ``/riff/status/<key>``.
STATUS_KEYS = ("bar", "queue", "late", "progress", "clip", "repeated", "xruns", "underruns")


class Cancellable(Protocol):
    """What ``loop.call_later`` returns."""

    def cancel(self) -> None: ...


def wire_value(value: Value) -> int | float | str:
    """A parameter value as sent in OSC (booleans as 0/1 ints, which every client reads)."""
    if isinstance(value, bool):
        return int(value)
    return value


class Coalescer:
    """Per-key rate limiter: send at most once per ``period`` seconds, latest value wins.

    ``send(key, args)`` is called at once when the key was quiet for a period, else once at the
    end of the period with the newest args offered meanwhile. ``clock`` and ``call_later`` are
    the loop's (``loop.time``, ``loop.call_later``); tests pass fakes.
    """

    def __init__(self, period: float, send: Callable[[str, Args], None],
                 clock: Callable[[], float],
                 call_later: Callable[[float, Callable[[], None]], Cancellable]) -> None:
        self.period = period
        self._send = send
        self._clock = clock
        self._call_later = call_later
        self._last: dict[str, float] = {}
        self._pending: dict[str, Args] = {}
        self._timers: dict[str, Cancellable] = {}
        self.superseded = 0

    def offer(self, key: str, args: Args) -> None:
        """Queue ``args`` for ``key``; sends now or at the end of the current period."""
        if key in self._timers:
            self.superseded += key in self._pending
            self._pending[key] = args
            return
        now = self._clock()
        last = self._last.get(key)
        if last is None or now - last >= self.period:
            self._last[key] = now
            self._send(key, args)
            return
        self._pending[key] = args
        self._timers[key] = self._call_later(last + self.period - now, lambda: self._flush(key))

    def _flush(self, key: str) -> None:
        self._timers.pop(key, None)
        args = self._pending.pop(key, None)
        if args is not None:
            self._last[key] = self._clock()
            self._send(key, args)

    def close(self) -> None:
        """Cancel pending sends."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._pending.clear()


Peer = tuple[str, int]


@dataclasses.dataclass
class FeedbackCounters:
    """Feedback totals (read by the server's stats and tests)."""

    sent: int = 0
    status_errors: int = 0


class Feedback:
    """Subscribers, parameter-change feedback and status polling.

    ``send(peer, address, args)`` sends one OSC message; ``status()`` is the engine's.
    """

    def __init__(self, send: Callable[[Peer, str, Args], None],
                 status: Callable[[], Mapping[str, Any]], *, rate_hz: float = 30.0,
                 status_hz: float = 10.0, max_subscribers: int = 64) -> None:
        loop = asyncio.get_running_loop()
        self._send_one = send
        self._status = status
        self._status_period = 1.0 / status_hz
        self.max_subscribers = max_subscribers
        self.subscribers: set[Peer] = set()
        self.coalescer = Coalescer(1.0 / rate_hz, self._broadcast, loop.time, loop.call_later)
        self.counters = FeedbackCounters()
        self._last_status: dict[str, Any] = {}
        self._poller: asyncio.Task[None] | None = None

    def subscribe(self, peer: Peer) -> bool:
        """Add ``peer``; False when the subscriber table is full."""
        if peer not in self.subscribers and len(self.subscribers) >= self.max_subscribers:
            return False
        self.subscribers.add(peer)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_status())
        return True

    def unsubscribe(self, peer: Peer) -> bool:
        """Remove ``peer``; False when it was not subscribed."""
        if peer not in self.subscribers:
            return False
        self.subscribers.discard(peer)
        return True

    def on_change(self, name: str, value: Value) -> None:
        """State listener (asyncio loop): queue the new value for every subscriber."""
        if self.subscribers:
            self.coalescer.offer(PARAMETERS[name].address, (wire_value(value),))

    def _broadcast(self, address: str, args: Args) -> None:
        for peer in tuple(self.subscribers):
            self._send_one(peer, address, args)
            self.counters.sent += 1

    def status_now(self) -> dict[str, Any]:
        """The status values sent as feedback (only keys in STATUS_KEYS)."""
        status = self._status()
        return {key: status[key] for key in STATUS_KEYS if key in status}

    async def _poll_status(self) -> None:
        while True:
            await asyncio.sleep(self._status_period)
            if not self.subscribers:
                continue
            try:
                status = self.status_now()
            except Exception:
                self.counters.status_errors += 1
                log.exception("engine status() failed; status feedback skipped")
                continue
            for key, value in status.items():
                if self._last_status.get(key) != value:
                    self._last_status[key] = value
                    self.coalescer.offer(f"/riff/status/{key}", (wire_value(value),))

    def close(self) -> None:
        """Stop polling and cancel pending sends."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        self.coalescer.close()
