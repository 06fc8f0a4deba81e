"""Following JACK transport: what a timebase master (a DAW) says, turned into engine calls.

:class:`JackTransportFollower` is polled by ``riff run``'s status loop with what
:class:`~protocols.audio.jack_output.JackOutput` published from its process callback (the
transport state and the latest BBT position on the player's clock) and drives the engine's
``engine.live.sync.MasterSync`` exactly as MIDI clock does (``protocols.midi.clock``): rolling
positions go to ``position`` (the transport's hysteresis ignores jitter-free repeats of the same
grid), a transport that starts rolling is ``started``, one that stops is ``stopped`` (stop, or
keep playing on the internal clock: the engine's setting), and a timebase master that goes away
is ``lost`` (back to the internal clock at the last tempo, no jump). A master that is there,
rolling or stopped, is a heartbeat.

Thread: the control thread (asyncio loop), like everything that touches the engine.
"""

from __future__ import annotations

import logging
from typing import Protocol

from engine.errors import RiffError
from engine.live.transport import BBTObservation

log = logging.getLogger(__name__)

SOURCE = "JACK transport"

#: ``(sample, bar, beat, tempo, beats_per_bar)`` as ``JackOutput.transport_bbt`` gives it.
BBT = tuple[int, int, float, float, int]


class Master(Protocol):
    """The slice of ``engine.live.sync.MasterSync`` this follower drives."""

    def heartbeat(self) -> None: ...

    def position(self, obs: BBTObservation, source: str = ...) -> bool: ...

    def started(self) -> None: ...

    def stopped(self) -> None: ...

    def lost(self, reason: str) -> None: ...


class JackTransportFollower:
    """Turns polled JACK transport states and positions into master-sync calls."""

    def __init__(self, sync: Master) -> None:
        self.sync = sync
        self.state = ""
        self.errors = 0
        self._last: BBT | None = None

    def poll(self, state: str, bbt: BBT | None) -> None:
        """Take the transport ``state`` (``rolling``/``stopped``/``none``/``""``) and latest
        ``bbt``; call on every pass of the status loop (control thread)."""
        previous, self.state = self.state, state
        if state == "rolling":
            if previous != "rolling":
                self.sync.started()
            self.sync.heartbeat()
            if bbt is not None and bbt != self._last:
                self._last = bbt
                sample, bar, beat, tempo, beats_per_bar = bbt
                try:
                    self.sync.position(BBTObservation(sample=sample, bar=bar, beat=beat,
                                                      tempo=tempo,
                                                      beats_per_bar=beats_per_bar), SOURCE)
                except RiffError as exc:
                    self.errors += 1
                    log.warning("JACK transport position ignored: %s", exc)
        elif state == "stopped":
            self.sync.heartbeat()
            if previous == "rolling":
                self.sync.stopped()
        elif state == "none" and previous in ("rolling", "stopped"):
            self.sync.lost("the JACK timebase master went away")
