"""Bar-timeline player: loops the current clip and switches to the next one on its start sample.

Why this shape: the audio thread (the JACK process callback, or the file writer's thread) must
never wait, allocate or take a lock, while the control plane hands it clips whenever they are
ready. So the player owns a fixed pool of clip *slots*; each slot has one owner at a time,
recorded in a small numpy state array, and each state change is made by exactly one side:

    control thread:  FREE  -> READY   (after writing the audio reference, start, seq)
                     DONE  -> FREE    (reclaim, in :meth:`Player.poll`)
    audio thread:    READY -> PLAYING (start sample reached), READY -> DONE (superseded by a
                     newer clip at the same sample, or dropped by :meth:`Player.stop`),
                     PLAYING -> DONE  (replaced and faded out)

Each transition is a single element store made after the data it publishes, so no
compare-and-swap and no lock is needed (one producer, one consumer). Slots keep a reference to
the clip's audio (clips are immutable); references are dropped on the control thread, so the
audio thread never frees memory either.

Timeline semantics, in samples since the player started (:meth:`Player.position`):

- Before the first clip starts (and after :meth:`Player.stop`), the output is silence.
- The current clip loops (circular index) until the next scheduled clip takes over.
- The crossfade *ends* on the start sample: clips are loops, so the incoming clip is read
  circularly from ``crossfade_samples`` before its start (its pre-roll is its own tail, as if
  it had been looping all along) while the outgoing clip keeps looping, with an equal-power
  fade over ``[start - crossfade_samples, start)``. The new clip's sample 0 is at full level
  exactly on the start sample, so a downbeat (a kick on sample 0) is never faded. A clip
  starting from silence fades in over its pre-roll the same way (one rule for every start:
  its tail leads into the downbeat like a pickup). With ``crossfade_samples == 0`` the
  switch is hard, on the start sample.
- The player must therefore see a clip one crossfade before its start (the scheduler's
  deadline covers it: :attr:`engine.live.scheduler.SchedulerConfig.lead_s`). A clip the
  audio thread first sees inside its pre-roll window (after ``start - crossfade_samples``,
  not after ``start``) fades over what is left of the window, shorter, still ending on the
  start sample (hard on it when seen exactly there); counted in ``short_fades`` when a clip
  was sounding (a start from silence, such as a first clip at sample 0, is not counted).
  The downbeat is never moved.
- Late clips (the ``ClipSink`` contract): a clip whose start sample has already passed when
  the audio thread first sees it starts at once, at the read position it would have reached
  had it started on time (``index = now - start_sample``), so it stays phase-locked to the bar
  grid, with a full crossfade from there; it is counted in ``late``. Until then the current
  clip keeps looping: never silence.
- A clip may be read from another origin than its start (``schedule(clip, start, origin=)``):
  it still switches in on ``start`` (the crossfade ends there), read at
  ``(sample - origin) mod its length``, so it comes in mid-loop at the position the loop
  has reached since ``origin`` (the scheduler's lattice jumps to a clip of another alpha
  on a beat line, at the same position in the loop as the clip it replaces).
- Scheduling the clip that would be playing anyway (the scheduler's explicit repeat at a bar
  line) changes nothing: the loop just goes on (counted in ``repeats``), so repeats never
  crossfade a clip into itself. A clip *restarting* on a bar line (a new clip object with the
  same audio, or a re-conformed one) is a switch like any other: its sample 0 is at full
  level on the line.

The render loop, in order (what a compiled port must reproduce, sample for sample): for each
segment of the block, find the next READY slot and its switch sample (``max(start - xf, t)``
for a clip seen in time, ``t`` otherwise); at that sample begin a fade of length
``min(xf, start - t)`` (``xf`` for a stop or a late clip) with gains
``sin(k / L * pi / 2)`` in and ``cos(k / L * pi / 2)`` out for ``k = 0 .. L - 1``; every
clip is read at ``(sample - its origin) mod its length`` (its origin is its start unless
given).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from engine.errors import InvalidRequest

log = logging.getLogger(__name__)

FREE, READY, PLAYING, DONE = 0, 1, 2, 3

#: Indices into the counters array.
(UNDERRUNS, LATE_CLIPS, LOOPS, STARTED, XRUNS, BLOCKS, SUPERSEDED, DROPPED, SILENT,
 SHORT_FADES) = range(10)
COUNTER_NAMES = ("underruns", "late", "loops", "started", "xruns", "blocks", "superseded",
                 "dropped", "silent", "short_fades")


class HasAudio(Protocol):
    """What the player needs from a clip: float32 audio ``(samples, channels)``."""

    @property
    def audio(self) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class PlayerConfig:
    """Fixed sizes of the player, all in samples; validated once."""

    sample_rate: int = 48000
    channels: int = 2
    slots: int = 6
    crossfade_samples: int = 480
    max_block: int = 4096

    def __post_init__(self) -> None:
        if not 8000 <= self.sample_rate <= 384000:
            raise InvalidRequest(f"sample rate must be 8000..384000, not {self.sample_rate}")
        if not 1 <= self.channels <= 8:
            raise InvalidRequest(f"channels must be 1..8, not {self.channels}")
        if not 3 <= self.slots <= 64:
            raise InvalidRequest(f"slots must be 3..64, not {self.slots}")
        if not 0 <= self.crossfade_samples <= self.sample_rate:
            raise InvalidRequest("crossfade must be between 0 and 1 second")
        if not 16 <= self.max_block <= 65536:
            raise InvalidRequest(f"max block must be 16..65536, not {self.max_block}")

    @classmethod
    def with_crossfade_ms(cls, sample_rate: int, crossfade_ms: float, **kw: Any) -> PlayerConfig:
        """Config with the crossfade given in milliseconds (rounded to whole samples)."""
        if not (isinstance(crossfade_ms, int | float) and math.isfinite(crossfade_ms)
                and 0 <= crossfade_ms <= 1000):
            raise InvalidRequest(f"crossfade must be 0..1000 ms, not {crossfade_ms!r}")
        return cls(sample_rate=sample_rate,
                   crossfade_samples=round(crossfade_ms * sample_rate / 1000), **kw)


@dataclasses.dataclass(frozen=True)
class PlayerEvents:
    """What happened since the last :meth:`Player.poll`: clips started (with the sample they
    were scheduled for) and clips released."""

    started: list[tuple[Any, int]]
    finished: list[Any]


@dataclasses.dataclass(frozen=True)
class Voices:
    """What sounds over a stretch of the timeline, as :meth:`Player.plan` emits it: at most
    two clips, each read at ``(sample - origin) mod its length``.

    ``cur`` (None: silence) plays alone at full level, except inside the fade window
    ``[fade_begin, fade_begin + fade_len)`` (``fade_len`` 0: no fade), where sample
    ``fade_begin + k`` is ``cur * sin(k / fade_len * pi / 2) + old * cos(...)`` (``old``
    None: nothing added), both gains rounded to float32 and each product and the sum
    computed in float32, as :meth:`Player.render` does. After the window ``old`` is gone.
    """

    cur: np.ndarray | None
    cur_origin: int
    old: np.ndarray | None
    old_origin: int
    fade_begin: int
    fade_len: int


#: Receives :meth:`Player.plan`'s voices from timeline sample ``t`` on: ``sink(t, voices)``.
VoiceSink = Callable[[int, Voices], None]


class Player:
    """The bar-timeline player; implements the control plane's ``ClipSink`` protocol.

    Threads: :meth:`render` is called only by the audio thread. :meth:`schedule`,
    :meth:`stop`, :meth:`poll`, :meth:`pending` and :meth:`counters` only by the control
    thread. :meth:`position` and :meth:`count_xrun` may be called from any thread.
    """

    def __init__(self, config: PlayerConfig | None = None) -> None:
        self.config = cfg = config or PlayerConfig()
        n = cfg.slots
        self._silence = np.zeros((1, cfg.channels), np.float32)
        self._audio: list[np.ndarray] = [self._silence] * n
        self._state = np.zeros(n, np.int8)
        self._start = np.zeros(n, np.int64)
        self._origin = np.zeros(n, np.int64)
        self._length = np.ones(n, np.int64)
        self._seq = np.zeros(n, np.int64)
        self._counters = np.zeros(len(COUNTER_NAMES), np.int64)
        # Control-thread bookkeeping (the audio thread never reads these).
        self._clips: list[Any] = [None] * n
        self._reported = [False] * n
        self._next_seq = 1
        self._repeats = 0
        self._refused = 0
        self._horizon = -1
        self._scheduled = threading.Event()
        self._ev_started: list[tuple[Any, int]] = []
        self._ev_finished: list[Any] = []
        # Written by the control thread, read by the audio thread: drop READY clips with a
        # sequence number below this (stop), and fade to silence when it changes.
        self._stop_seq = 0
        # Audio-thread state (only the audio thread writes these).
        self._pos = 0
        self._event_time = 0
        self._stop_seen = 0
        self._live = False  # a clip has started and no stop came since
        self._cur = -1
        self._cur_origin = 0
        self._fading = False
        self._fade = -1
        self._fade_origin = 0
        self._fade_begin = 0
        self._fade_len = 0
        self._mix = np.zeros((cfg.channels, cfg.max_block), np.float32)
        self._tmp = np.zeros((cfg.channels, cfg.max_block), np.float32)
        # Gain tables of the fade in progress, refilled (no allocation) when a fade begins.
        xf = cfg.crossfade_samples
        self._steps = np.arange(max(xf, 1), dtype=np.float64)
        self._phase = np.zeros(max(xf, 1), np.float64)
        self._fade_in = np.zeros(max(xf, 1), np.float32)
        self._fade_out = np.zeros(max(xf, 1), np.float32)

    # ---- any thread -------------------------------------------------------------------------

    def position(self) -> int:
        """Samples rendered so far: the timeline position of the next block (any thread)."""
        return self._pos

    def count_xrun(self) -> None:
        """Count one xrun reported by the audio backend (its notification thread)."""
        self._counters[XRUNS] += 1

    # ---- control thread ---------------------------------------------------------------------

    def schedule(self, clip: HasAudio, start_sample: int, origin: int | None = None) -> None:
        """Hand ``clip`` to the audio thread, to start at ``start_sample`` (control thread),
        read from ``origin`` (default ``start_sample``; at most ``start_sample``): at
        ``start_sample`` it plays its sample ``(start_sample - origin) mod length``.

        A start in the past begins at once, phase-locked (see the module docstring). A clip
        scheduled at the same sample as an earlier one replaces it. Scheduling the clip that
        would be playing at ``start_sample`` anyway is a repeat and changes nothing. Raises
        :class:`~engine.errors.InvalidRequest` for audio of the wrong shape or type. When every
        slot is taken (more clips queued than any look-ahead needs) the clip is refused, logged
        and counted in ``refused``. The audio is not affected either way.
        """
        audio = clip.audio
        if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim != 2:
            raise InvalidRequest("clip audio must be a float32 array (samples, channels)")
        if audio.shape[0] < 1 or audio.shape[1] not in (1, self.config.channels):
            raise InvalidRequest(f"clip audio of shape {audio.shape} does not fit "
                                 f"{self.config.channels} channel(s)")
        start_sample = int(start_sample)
        origin = start_sample if origin is None else int(origin)
        if origin > start_sample:
            raise InvalidRequest(f"clip origin {origin} is after its start {start_sample}")
        self._reclaim()
        if self._playing_at(start_sample) is clip:
            self._repeats += 1
            self._advance_horizon(start_sample, audio.shape[0])
            return
        free = np.flatnonzero(self._state == FREE)
        if free.size == 0:  # more queued than any look-ahead needs: refuse, keep playing
            self._refused += 1
            log.error("no free clip slot for sample %d: %d clips already queued or playing; "
                      "clip not scheduled", start_sample, self.config.slots)
            return
        slot = int(free[0])
        # C order, so a compiled mixer can read it by address (no copy when it already is).
        self._audio[slot] = np.ascontiguousarray(audio)
        self._length[slot] = audio.shape[0]
        self._start[slot] = start_sample
        self._origin[slot] = origin
        self._seq[slot] = self._next_seq
        self._next_seq += 1
        self._clips[slot] = clip
        self._reported[slot] = False
        self._state[slot] = READY  # publish last
        self._advance_horizon(start_sample, audio.shape[0])

    def _advance_horizon(self, start_sample: int, length: int) -> None:
        end = start_sample + max(length - self.config.crossfade_samples, 0)
        if end > self._horizon:
            self._horizon = end
        self._scheduled.set()

    def horizon(self) -> int:
        """End of the first pass of the latest scheduled clip (repeats included) minus the
        crossfade: the sample up to which the timeline is known (a clip following it
        begins its pre-roll there); -1 before any clip.

        Thread: any. An offline renderer renders up to it and then waits for more
        (:meth:`wait_scheduled`) so it never runs ahead of the control plane."""
        return self._horizon

    def wait_scheduled(self, timeout: float) -> bool:
        """Block until the next :meth:`schedule` call or ``timeout`` seconds; True when one
        came. Thread: an offline render thread only, never a real-time audio thread."""
        got = self._scheduled.wait(timeout)
        self._scheduled.clear()
        return got

    def _playing_at(self, sample: int) -> Any:
        """The clip that would be playing just before ``sample`` as things stand."""
        best, best_start = -1, -1
        for s in range(self.config.slots):
            if (self._state[s] == READY and self._seq[s] >= self._stop_seq
                    and best_start <= self._start[s] < sample):
                best, best_start = s, int(self._start[s])
        if best >= 0:
            return self._clips[best]
        cur = self._cur
        if cur >= 0 and self._stop_seen == self._stop_seq:
            return self._clips[cur]
        return None

    def stop(self) -> None:
        """Fade out and go silent; clips scheduled before this call are dropped (control
        thread). ``position`` keeps running and later clips play normally."""
        self._stop_seq = self._next_seq
        self._scheduled.set()

    def poll(self) -> PlayerEvents:
        """Reclaim released slots; report clips started and released since the last call."""
        self._reclaim()
        events = PlayerEvents(self._ev_started, self._ev_finished)
        self._ev_started, self._ev_finished = [], []
        return events

    def _reclaim(self) -> None:
        for slot in range(self.config.slots):
            state = int(self._state[slot])
            clip = self._clips[slot]
            if state in (PLAYING, DONE) and not self._reported[slot] and clip is not None:
                # A DONE slot played unless it was superseded or dropped before its start;
                # the audio thread zeroes the sequence number of those before releasing them.
                if state == PLAYING or self._seq[slot] != 0:
                    self._ev_started.append((clip, int(self._start[slot])))
                    self._reported[slot] = True
            if state == DONE:
                self._ev_finished.append(clip)
                self._clips[slot] = None
                self._audio[slot] = self._silence
                self._state[slot] = FREE

    def pending(self) -> list[int]:
        """Start samples of clips waiting to start, sorted (control thread)."""
        return sorted(int(self._start[s]) for s in range(self.config.slots)
                      if self._state[s] == READY and self._seq[s] >= self._stop_seq)

    def counters(self) -> dict[str, int]:
        """Counter snapshot: underruns (blocks with silence while a clip should have been
        playing: after the first clip started and before a stop; the loop design keeps it at
        0), silent (blocks silent by design: before the first clip, after stop), late (clips
        the audio thread saw after their start sample; not the scheduler's ``late``), loops
        (wraps of a clip), repeats (explicit repeats), started, xruns, blocks, superseded,
        dropped, refused, short_fades (clips first seen inside their pre-roll window: a
        shorter fade, still ending on their start sample)."""
        out = {name: int(v) for name, v in zip(COUNTER_NAMES, self._counters, strict=True)}
        out["repeats"] = self._repeats
        out["refused"] = self._refused
        return out

    # ---- audio thread -----------------------------------------------------------------------

    def render(self, outs: Sequence[np.ndarray] | np.ndarray) -> None:
        """Fill ``outs`` (one float32 array per channel, equal lengths) with the next frames.

        Thread: the audio thread only. Must not block, lock, log or allocate arrays: it only
        copies from clip audio into preallocated scratch buffers and the outputs.
        """
        total = len(outs[0])
        done = 0
        mb = self.config.max_block
        chans = self.config.channels
        while done < total:
            n = min(mb, total - done)
            self._render_block(n)
            for ch in range(len(outs)):
                outs[ch][done:done + n] = self._mix[ch if ch < chans else 0, :n]
            done += n
        self._counters[BLOCKS] += 1

    def plan(self, frames: int, emit: VoiceSink) -> None:
        """Advance the timeline by ``frames`` making exactly :meth:`render`'s decisions
        (switches, fades, stops, late and short-fade starts, counters), but instead of mixing
        samples call ``emit(t, voices)`` at the first sample of every stretch of the timeline
        in which the voices do not change (see :class:`Voices`).

        Why: a compiled mixer (the JACK callback reading a table of voices) then renders the
        very samples :meth:`render` would, while Python decides only when a clip arrives, so
        the audio goes on (loops, finishes a fade) however long Python is held up.

        Thread: the audio thread's role (whoever calls it is the only renderer of this player:
        never mix with :meth:`render` on one player). No blocking or locking.
        """
        done = 0
        mb = self.config.max_block
        while done < frames:
            n = min(mb, frames - done)
            self._render_block(n, emit)
            done += n

    def skip_to(self, sample: int) -> None:
        """Move the timeline forward to ``sample`` without new decisions: what a compiled
        mixer plays when its table runs out (the current voices go on: the clip loops, a fade
        in progress completes). Clips waiting are seen from ``sample`` on (late, phase-locked,
        as a late clip always is). Thread: as :meth:`plan`."""
        t = self._pos
        if sample <= t:
            return
        if self._fading and sample >= self._fade_begin + self._fade_len:
            self._end_fade()
        if self._cur >= 0:
            self._count_loops(t, sample)
        self._pos = sample

    def voices(self) -> Voices:
        """The voices sounding at :meth:`position` (as :meth:`plan` emits them)."""
        cur, fade = self._cur, self._fade if self._fading else -1
        return Voices(
            self._audio[cur] if cur >= 0 else None, self._cur_origin,
            self._audio[fade] if fade >= 0 else None, self._fade_origin,
            self._fade_begin if self._fading else 0, self._fade_len if self._fading else 0)

    def _render_block(self, n: int, emit: VoiceSink | None = None) -> None:
        t = self._pos
        end = t + n
        if self._stop_seen != self._stop_seq:
            self._apply_stop(t)
        silent = underrun = False
        while t < end:
            nxt = self._next_event(t, end)
            if nxt >= 0 and self._event_time == t:
                self._switch(nxt, t)
                continue
            seg_end = end if nxt < 0 else self._event_time
            if self._fading:
                seg_end = min(seg_end, self._fade_begin + self._fade_len)
            o, k = t - self._pos, seg_end - t
            if emit is not None:
                emit(t, self.voices())
            if self._cur < 0:
                if emit is None:
                    self._mix[:, o:o + k] = 0.0
                if not self._fading or self._fade < 0:
                    silent = True
                    underrun = underrun or self._live
            else:
                if emit is None:
                    self._copy_loop(self._mix[:, o:o + k], self._cur, t - self._cur_origin, k)
                self._count_loops(t, seg_end)
            if self._fading:
                if emit is None:
                    mix = self._mix[:, o:o + k]
                    f = t - self._fade_begin
                    mix *= self._fade_in[f:f + k]
                    if self._fade >= 0:
                        tmp = self._tmp[:, :k]
                        self._copy_loop(tmp, self._fade, t - self._fade_origin, k)
                        tmp *= self._fade_out[f:f + k]
                        mix += tmp
                if seg_end >= self._fade_begin + self._fade_len:
                    self._end_fade()
            t = seg_end
        self._pos = end
        if underrun:
            self._counters[UNDERRUNS] += 1
        elif silent:
            self._counters[SILENT] += 1

    def _apply_stop(self, t: int) -> None:
        """Drop clips queued before the stop and fade the current one out."""
        self._stop_seen = stop = self._stop_seq
        self._live = False
        state, seq = self._state, self._seq
        for s in range(len(state)):
            if state[s] == READY and seq[s] < stop:
                seq[s] = 0
                self._counters[DROPPED] += 1
                state[s] = DONE
        if self._cur >= 0:
            self._begin_fade(t, -1, t, self.config.crossfade_samples)

    def _next_event(self, t: int, end: int) -> int:
        """The READY slot to switch to next (at ``self._event_time`` < ``end``), or -1.

        A slot's switch time is the beginning of its pre-roll (its start minus the
        crossfade), or ``t`` when that has passed (a short fade, or late). Among slots
        switching at the same time the one with the latest start wins, then the newest;
        the others are released as superseded.
        """
        state, start, seq = self._state, self._start, self._seq
        xf = self.config.crossfade_samples
        best, best_time = -1, end
        for s in range(len(state)):
            if state[s] != READY:
                continue
            st = start[s]
            when = st - xf if st - xf > t else t
            if when < best_time or (when == best_time and best >= 0 and (
                    st > start[best] or (st == start[best] and seq[s] > seq[best]))):
                best, best_time = s, when
        if best < 0:
            return -1
        for s in range(len(state)):
            if s != best and state[s] == READY and max(start[s] - xf, t) == best_time:
                seq[s] = 0
                self._counters[SUPERSEDED] += 1
                state[s] = DONE
        self._event_time = int(best_time)
        return best

    def _switch(self, new: int, t: int) -> None:
        """Make slot ``new`` the current clip from sample ``t``: the beginning of its pre-roll,
        or later (see the module docstring); it is read phase-locked to its origin."""
        start = int(self._start[new])
        xf = self.config.crossfade_samples
        length = xf
        if start < t:
            self._counters[LATE_CLIPS] += 1
        elif start - t < xf:  # seen inside its pre-roll window: what is left of it
            length = start - t
            if self._cur >= 0:  # only a sounding clip's fade is cut short
                self._counters[SHORT_FADES] += 1
        self._state[new] = PLAYING
        self._live = True
        self._counters[STARTED] += 1
        self._begin_fade(t, new, int(self._origin[new]), length)

    def _begin_fade(self, t: int, new: int, origin: int, length: int) -> None:
        """From sample ``t``, fade from the current clip (or silence) to slot ``new`` (or
        silence, -1) over ``length`` samples; 0 is a hard switch."""
        if self._fading:
            self._end_fade()
        old, old_origin = self._cur, self._cur_origin
        self._cur, self._cur_origin = new, origin
        if length > 0 and (old >= 0 or new >= 0):
            self._fading, self._fade, self._fade_origin = True, old, old_origin
            self._fade_begin, self._fade_len = t, length
            self._fill_gains(length)
        elif old >= 0:
            self._state[old] = DONE

    def _fill_gains(self, length: int) -> None:
        """Equal-power gains for a fade of ``length`` samples, into the preallocated tables:
        ``sin(k / length * pi / 2)`` in, ``cos(...)`` out (audio thread; no allocation)."""
        phase = self._phase[:length]
        np.multiply(self._steps[:length], (np.pi / 2) / length, out=phase)
        np.sin(phase, out=self._fade_in[:length], casting="same_kind")
        np.cos(phase, out=self._fade_out[:length], casting="same_kind")

    def _end_fade(self) -> None:
        if self._fade >= 0:
            self._state[self._fade] = DONE
        self._fading, self._fade = False, -1

    def _copy_loop(self, dst: np.ndarray, slot: int, index: int, count: int) -> None:
        """Copy ``count`` frames of ``slot`` from circular ``index`` into ``dst`` (ch, frames)."""
        audio = self._audio[slot]
        length = audio.shape[0]
        i = index % length
        o = 0
        while o < count:
            k = min(count - o, length - i)
            dst[:, o:o + k] = audio[i:i + k].T
            o += k
            i = 0

    def _count_loops(self, t: int, end: int) -> None:
        """Count loop restarts of the current clip at samples in [t, end)."""
        length = int(self._length[self._cur])
        rel_lo, rel_hi = t - self._cur_origin, end - 1 - self._cur_origin
        lo = max(1, -(-rel_lo // length))
        hi = rel_hi // length
        if hi >= lo:
            self._counters[LOOPS] += hi - lo + 1
