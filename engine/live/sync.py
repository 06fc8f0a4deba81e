"""Following an external master (JACK transport, MIDI clock): one policy for both sources.

The protocol side (``protocols.midi.clock.TransportFollower`` for MIDI clock, ``riff run``'s
JACK transport poll) only translates what the master says into four calls on
:class:`MasterSync`: ``position`` (the master rolls and is here on its grid), ``heartbeat``
(the master is still there: a clock tick, a stopped JACK transport that still has a timebase
master), ``started`` (MIDI Start/Continue, JACK transport starting to roll) and ``stopped``
(MIDI Stop, JACK transport stopping), plus ``lost`` when the source knows the master left (no
JACK timebase master any more). So both sources behave alike:

- stop: with ``on_stop="stop"`` the engine stops with the master and starts again at the
  master's next start (on the master's grid); with ``on_stop="play"`` it keeps playing on its
  own clock at the master's last tempo, and locks to the master again when it rolls.
- master lost: no word from the master for ``lost_after_s`` (audio clock), or ``lost``: the
  engine returns to its own clock at the last tempo, on the same grid (no jump), and the tempo
  parameter takes that tempo so controllers see it.
- While the master rules (``transport.external``) the engine refuses ``tempo`` and ``meter``
  changes (``engine.live.control.Engine`` installs that guard on its state), unless the
  source is a peer-to-peer session that takes them (Ableton Link: any peer may change the
  session's tempo): such a source installs a :data:`Forward` with :meth:`MasterSync.forward_to`,
  the change goes to the session, and the grid follows the session's next position.

Thread: the control plane (asyncio loop): every method, including :meth:`check`, which the
engine's loop task calls on each tick.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

from engine.errors import InvalidRequest
from engine.live.transport import BBTObservation, Transport

log = logging.getLogger(__name__)

STOP_ACTIONS = ("stop", "play")

#: Takes a transport parameter change (``"tempo"`` or ``"meter"``, the new value) to a
#: peer-to-peer master session.
Forward = Callable[[str, float], None]


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """``on_stop``: ``"stop"`` (the engine stops with the master) or ``"play"`` (it keeps
    playing on its own clock). ``lost_after_s``: silence from the master (seconds of audio
    clock) after which it counts as gone."""

    on_stop: str = "stop"
    lost_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.on_stop not in STOP_ACTIONS:
            raise InvalidRequest(f"on_stop must be one of {', '.join(STOP_ACTIONS)}, "
                                 f"not {self.on_stop!r}")
        if not math.isfinite(self.lost_after_s) or not 0.05 <= self.lost_after_s <= 60:
            raise InvalidRequest("lost_after_s must be between 0.05 and 60 seconds")


class MasterSync:
    """The engine's side of an external master (see the module docstring).

    ``play``/``stop``/``playing``: the engine's transport controls. ``adopt(tempo, meter)``:
    called when the engine returns to its own clock, so the tempo parameter shows the tempo
    that goes on.
    """

    def __init__(self, transport: Transport, *, play: Callable[[], None],
                 stop: Callable[[], None], playing: Callable[[], bool],
                 adopt: Callable[[float, int], None], config: SyncConfig | None = None) -> None:
        self.transport = transport
        self.config = config or SyncConfig()
        self._play = play
        self._stop = stop
        self._playing = playing
        self._adopt = adopt
        self.source = ""
        self.lost_count = 0
        self._last_heard: int | None = None
        self._play_pending = False
        self._forward: Forward | None = None

    @property
    def following(self) -> bool:
        """Whether a master rules the transport now."""
        return self.transport.external

    @property
    def beats_per_bar(self) -> int:
        """The grid's meter (a MIDI clock master does not send one)."""
        return self.transport.beats_per_bar

    def forward_to(self, forward: Forward | None) -> None:
        """Send tempo and meter changes to the master session instead of refusing them
        (``None``: refuse them again). Called by a peer-to-peer source (Ableton Link)."""
        self._forward = forward

    @property
    def forwards(self) -> bool:
        """Whether a master rules now and takes tempo and meter changes."""
        return self.transport.external and self._forward is not None

    def forward(self, name: str, value: float) -> None:
        """Hand a tempo or meter change to the master session (see :meth:`forward_to`)."""
        if self._forward is None:
            raise InvalidRequest(f"{name} cannot be forwarded: no master session takes it")
        self._forward(name, value)

    def heartbeat(self) -> None:
        """The master is still there (a clock tick, a stopped JACK master)."""
        self._last_heard = self.transport.now()

    def position(self, obs: BBTObservation, source: str = "external clock") -> bool:
        """The master rolls and is at ``obs``: follow it (hysteresis in ``Transport.follow``);
        start the engine if the master started it. Returns whether the grid changed."""
        self.heartbeat()
        if not self.transport.external:
            log.info("following %s (%.2f BPM)", source, obs.tempo)
        self.source = source
        changed = self.transport.follow(obs)
        if self._play_pending:
            self._play_pending = False
            if not self._playing():
                self._play()
        return changed

    def started(self) -> None:
        """MIDI Start/Continue or JACK transport rolling: play from the master's next position
        (the engine starts once the grid is locked to it)."""
        self.heartbeat()
        self._play_pending = True

    def stopped(self) -> None:
        """MIDI Stop or JACK transport stopping: stop, or go on with the internal clock."""
        self._play_pending = False
        if not self.transport.external:
            return
        if self.config.on_stop == "stop":
            if self._playing():
                log.info("%s stopped: stopping", self.source or "the master")
                self._stop()
        else:
            log.info("%s stopped: playing on at %.2f BPM on the internal clock",
                     self.source or "the master", self.transport.tempo)
            self._internal()

    def lost(self, reason: str) -> None:
        """The master is gone: back to the internal clock at the last tempo, no jump."""
        self._play_pending = False
        if not self.transport.external:
            return
        self.lost_count += 1
        log.warning("%s lost (%s): back to the internal clock at %.2f BPM",
                    self.source or "the master", reason, self.transport.tempo)
        self._internal()

    def check(self) -> None:
        """Declare the master lost when it has been silent for ``lost_after_s`` (loop task)."""
        if not self.transport.external or self._last_heard is None:
            return
        silent = self.transport.now() - self._last_heard
        if silent > self.config.lost_after_s * self.transport.sample_rate:
            self.lost(f"silent for {silent / self.transport.sample_rate:.2f} s")

    def _internal(self) -> None:
        self.transport.use_internal()
        self._last_heard = None
        self._adopt(self.transport.tempo, self.transport.beats_per_bar)
