"""Ableton Link as a clock source for ``riff run --link`` (through ``engine.live.sync``).

Why: Link is the common clock of Ableton Live, Bitwig, TidalCycles, Sonic Pi, SuperCollider's
LinkClock and many apps; unlike MIDI clock or JACK transport it is peer-to-peer: every peer
may change the session's tempo, and start/stop is shared only between peers that enable it.

How it maps onto the engine's one master-sync policy (:class:`engine.live.sync.MasterSync`):

- Position: every ``poll_s`` the session's beat is read with its Link clock time and turned
  into a :class:`~engine.live.transport.BBTObservation` with quantum = beats per bar (bar =
  beat // quantum, so bar lines are where Link's phase is 0, as in every other Link app). The
  Link time becomes an audio-clock sample through
  :class:`~protocols.midi.clock.AgeTimebase` (the audio clock moves in whole periods; the
  timebase takes the steady offset between the two clocks). The transport's hysteresis
  decides when the grid moves; a tempo step re-anchors at once.
- Tempo and meter: while Link rules, ``/riff/tempo`` (any surface, presets too) is not
  refused but set on the session (:meth:`MasterSync.forward_to`), and ``/riff/meter`` sets the
  quantum; the grid follows the session's next position.
- Start/stop: start/stop sync is enabled on this peer (``start_stop_sync_enabled``), so the
  session's playing state is shared with the peers that enable it too: a session stop goes to
  ``MasterSync.stopped`` (``--on-master-stop``), a start to ``started`` (the engine starts on
  the session's grid), and the engine's own play and stop are sent to the session.
- Alone in a session, the engine still follows Link (its own tempo then is the session's), so
  a peer that joins later finds the engine's tempo and phase.

Thread: :meth:`LinkClock.start`, :meth:`~LinkClock.close` and the poll task run on the
asyncio loop; aalink calls nothing back here (callbacks are not used; the loop polls).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

from engine.errors import RiffError
from engine.live.sync import MasterSync
from engine.live.transport import BBTObservation
from protocols.midi.clock import AgeTimebase

log = logging.getLogger(__name__)

SOURCE = "Ableton Link"


def _link_factory(tempo: float) -> Any:
    import aalink

    return aalink.Link(tempo)


class LinkClock:
    """A Link peer that drives ``sync`` (see the module docstring).

    ``playing``: whether the engine plays now (to send local play/stop to the session).
    ``link_factory(tempo)`` makes the ``aalink.Link`` (tests may pass their own peer)."""

    def __init__(self, sync: MasterSync, *, playing: Callable[[], bool],
                 link_factory: Callable[[float], Any] = _link_factory,
                 poll_s: float = 0.01) -> None:
        self.sync = sync
        self.transport = sync.transport
        self.playing = playing
        self.poll_s = poll_s
        self.link = link_factory(self.transport.tempo)
        self.link.quantum = self.transport.beats_per_bar
        self.link.start_stop_sync_enabled = True
        self.timebase = AgeTimebase(self.transport.sample_rate, self.transport.now,
                                    self._link_seconds)
        self.errors = 0
        self._task: asyncio.Task[None] | None = None
        self._link_playing: bool | None = None
        self._engine_playing = False

    def _link_seconds(self) -> float:
        """Link's clock now, in seconds."""
        return float(self.link.time.total_seconds())

    def start(self) -> None:
        """Join the session and follow it (asyncio loop)."""
        self.link.enabled = True
        self.sync.forward_to(self._forward)
        self._engine_playing = self.playing()
        self._task = asyncio.ensure_future(self._run())
        log.info("Ableton Link enabled: quantum %d, %.2f BPM", self.link.quantum,
                 self.link.tempo)

    async def close(self) -> None:
        """Leave the session; the engine goes back to its own clock at the last tempo."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sync.forward_to(None)
        self.sync.lost("Link disabled")
        self.link.enabled = False

    def _forward(self, name: str, value: float) -> None:
        """``/riff/tempo`` and ``/riff/meter`` while Link rules: to the session."""
        if name == "tempo":
            self.link.tempo = float(value)
            log.info("Link: session tempo set to %.2f BPM", value)
        elif name == "meter":
            self.link.quantum = int(value)
            log.info("Link: quantum set to %d", int(value))

    async def _run(self) -> None:
        while True:
            try:
                self.poll()
            except RiffError as exc:
                self.errors += 1
                log.warning("Link position ignored: %s", exc)
            await asyncio.sleep(self.poll_s)

    def observe(self) -> BBTObservation:
        """The session's position now, on the audio clock."""
        t = self._link_seconds()
        beat = float(self.link.beat)
        tempo = float(self.link.tempo)
        quantum = round(float(self.link.quantum))
        bar = math.floor(beat / quantum)
        in_bar = min(max(beat - bar * quantum, 0.0), quantum - 1e-9)
        return BBTObservation(sample=self.timebase.to_sample(t), bar=bar, beat=in_bar,
                              tempo=tempo, beats_per_bar=quantum)

    def poll(self) -> None:
        """One look at the session (the poll task; tests call it directly).

        The grid follows the session's beat whether or not it plays (Link's beat time always
        runs); start/stop transitions of the session go to the sync policy, and the engine's
        own play/stop go to the session."""
        engine_playing = self.playing()
        link_playing = bool(self.link.playing)
        if engine_playing != self._engine_playing and engine_playing != link_playing:
            self.link.playing = engine_playing  # our play/stop, to the session
            link_playing = engine_playing
        elif self._link_playing is not None and link_playing != self._link_playing:
            if link_playing:
                self.sync.started()
            else:
                self.sync.stopped()
        self._link_playing = link_playing
        self.sync.position(self.observe(), SOURCE)
        # Read again: the sync calls above may have started or stopped the engine, and that
        # is the session's doing, not a local play/stop to send back.
        self._engine_playing = self.playing()
