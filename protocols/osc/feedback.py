"""OSC feedback: rate-limited, latest-wins updates to subscribed controllers.

A TouchOSC fader follows the engine when the engine sends the parameter's new value to the
same address the fader sends on. A knob turned quickly changes a parameter hundreds of times a
second; feedback is coalesced per address to at most ``rate_hz`` sends (30 Hz by default) and
the latest value always wins, so the controller ends on the right value.

Who gets what:

- Parameter changes and status go to every subscriber, except that the peer moving an address
  is skipped for that address for ``hold_s`` after its last move (0.5 s by default): a fader
  under a finger must not be pulled back by the echo of its own older value, which arrives a
  round trip and up to one coalescing period late. Other subscribers still get every value.
  When the hold ends, a peer that was skipped gets the address's latest value once, so its
  other widgets on that address (a value label) catch up and a value that another controller
  set meanwhile is not lost.
- Replies (errors, pong, state, recording) go to the sender and, when the sender is not
  itself a subscriber, also to the subscribers on the sender's host that were subscribed
  with a port (``/riff/subscribe <port>`` sent from another port). That is where clients
  that send from a throwaway port listen (Pd's ``[netsend]``, liblo's ``oscsend``), and
  nobody listens on the throwaway port. A sender that is a subscriber (TouchOSC, which
  sends and listens on one port) gets its replies once, on that port.

Thread: all of this runs on the asyncio loop (state listeners are called there too).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from engine.live.state import PARAMETERS, Value

log = logging.getLogger(__name__)

Args = tuple[Any, ...]
#: The status keys sent as ``/riff/status/<key>``.
#: ``failed`` counts failed generation attempts; ``error`` is the text of the last clip given up
#: (the engine's ``status()``), so a performer sees why nothing new is heard.
STATUS_KEYS = ("bar", "queue", "late", "progress", "clip", "repeated", "xruns", "underruns",
               "failed", "error", "capturing")


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
    #: Sends skipped because the subscriber was moving that address (the hold).
    held: int = 0


class Feedback:
    """Subscribers, parameter-change feedback, reply routing and status polling.

    ``send(peer, address, args)`` sends one OSC message; ``status()`` is the engine's.
    ``hold_s``: how long the peer that moved an address gets no feedback for it (0: never
    skipped). Created and used on the asyncio loop only.
    """

    def __init__(self, send: Callable[[Peer, str, Args], None],
                 status: Callable[[], Mapping[str, Any]], *, rate_hz: float = 30.0,
                 status_hz: float = 10.0, max_subscribers: int = 64,
                 hold_s: float = 0.5) -> None:
        loop = asyncio.get_running_loop()
        self._send_one = send
        self._status = status
        self._status_period = 1.0 / status_hz
        self._clock = loop.time
        self.max_subscribers = max_subscribers
        self.hold_s = hold_s
        self.subscribers: set[Peer] = set()
        #: Subscribers named by a port from another port: listeners for their host's senders.
        self._listeners: set[Peer] = set()
        #: address -> {sender: loop time of its last move}; entries older than hold_s expire.
        self._moved: dict[str, dict[Peer, float]] = {}
        #: address -> subscribers skipped while held, owed the latest value when it ends.
        self._owed: dict[str, set[Peer]] = {}
        #: address -> the args last broadcast there (what an owed subscriber gets).
        self._latest: dict[str, Args] = {}
        self._release_timers: dict[str, Cancellable] = {}
        self._call_later = loop.call_later
        self.coalescer = Coalescer(1.0 / rate_hz, self._broadcast, loop.time, loop.call_later)
        self.counters = FeedbackCounters()
        self._last_status: dict[str, Any] = {}
        self._poller: asyncio.Task[None] | None = None

    def subscribe(self, peer: Peer, *, sender: Peer | None = None) -> bool:
        """Add ``peer`` (``sender``: who asked; when it differs from ``peer`` the subscriber
        also gets the replies to its host's unsubscribed senders). False when the table is
        full."""
        if peer not in self.subscribers and len(self.subscribers) >= self.max_subscribers:
            return False
        self.subscribers.add(peer)
        if sender is not None and sender != peer:
            self._listeners.add(peer)
        else:
            self._listeners.discard(peer)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_status())
        return True

    def unsubscribe(self, peer: Peer) -> bool:
        """Remove ``peer``; False when it was not subscribed."""
        if peer not in self.subscribers:
            return False
        self.subscribers.discard(peer)
        self._listeners.discard(peer)
        return True

    def reply_targets(self, sender: Peer) -> list[Peer]:
        """Where a reply to ``sender`` goes: the sender, plus (when it is not a subscriber)
        the subscribers on its host that listen for it (see the module docstring)."""
        if sender in self.subscribers:
            return [sender]
        return [sender, *sorted(p for p in self._listeners if p[0] == sender[0])]

    @contextlib.contextmanager
    def moving(self, sender: Peer, address: str) -> Iterator[None]:
        """Around one change of ``address`` by ``sender``: start (or extend) its hold, so the
        change's own feedback skips it. A change that raises leaves the hold as it was."""
        if not self.subscribers or self.hold_s <= 0:
            yield
            return
        movers = self._moved.setdefault(address, {})
        self._expire(movers)
        previous = movers.get(sender)
        movers[sender] = self._clock()
        try:
            yield
        except BaseException:
            if previous is None:
                movers.pop(sender, None)
            else:
                movers[sender] = previous
            raise
        self._arm_release(address)

    def _arm_release(self, address: str) -> None:
        """(Re)schedule :meth:`_release` for when the oldest hold on ``address`` ends."""
        timer = self._release_timers.pop(address, None)
        if timer is not None:
            timer.cancel()
        movers = self._moved.get(address)
        if not movers:
            return
        due = min(movers.values()) + self.hold_s - self._clock()
        # A millisecond late, so the hold has surely expired when the timer runs.
        self._release_timers[address] = self._call_later(
            max(due, 0.0) + 0.001, lambda: self._release(address))

    def _release(self, address: str) -> None:
        """Timer (asyncio loop): send the latest value to subscribers whose hold ended."""
        self._release_timers.pop(address, None)
        held = self._held(address)
        owed = self._owed.get(address, set())
        args = self._latest.get(address)
        for peer in sorted(owed - held):
            owed.discard(peer)
            if args is not None and peer in self.subscribers:
                self._send_one(peer, address, args)
                self.counters.sent += 1
        if not owed:
            self._owed.pop(address, None)
        if held:
            self._arm_release(address)

    def _expire(self, movers: dict[Peer, float]) -> None:
        now = self._clock()
        for peer in [p for p, t in movers.items() if now - t >= self.hold_s]:
            del movers[peer]

    def _held(self, address: str) -> set[Peer]:
        """The subscribers skipped for ``address`` now: those of each peer still holding it."""
        movers = self._moved.get(address)
        if not movers:
            return set()
        self._expire(movers)
        if not movers:
            del self._moved[address]
            return set()
        held: set[Peer] = set()
        for sender in movers:
            held.update(self.reply_targets(sender))
        return held

    def on_change(self, name: str, value: Value) -> None:
        """State listener (asyncio loop): queue the new value for every subscriber."""
        if self.subscribers:
            self.coalescer.offer(PARAMETERS[name].address, (wire_value(value),))

    def _broadcast(self, address: str, args: Args) -> None:
        held = self._held(address)
        self._latest[address] = args
        for peer in tuple(self.subscribers):
            if peer in held:
                self.counters.held += 1
                self._owed.setdefault(address, set()).add(peer)
                continue
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
        for timer in self._release_timers.values():
            timer.cancel()
        self._release_timers.clear()
        self.coalescer.close()
