"""Bar-timeline player: loops the current clip and switches to the next one on its start sample.

Why this shape: the audio thread (the JACK process callback, or the file writer's thread) must
never wait, allocate or take a lock, while the control plane hands it clips whenever they are
ready. So the player owns a fixed pool of clip *slots*; each slot has one owner at a time,
recorded in a small numpy state array, and each state change is made by exactly one side:

    control thread:  FREE  -> READY   (after copying the audio and writing start/seq/length)
                     DONE  -> FREE, LATE -> FREE   (reclaim, in :meth:`Player.poll`)
    audio thread:    READY -> PLAYING (start sample reached), READY -> LATE (start already
                     passed when first seen), READY -> DONE (superseded: a newer clip was
                     scheduled at the same sample), PLAYING -> DONE (replaced, fade finished)

Each transition is a single element store made after the data it publishes, so no
compare-and-swap and no lock is needed (one producer, one consumer).

Timeline semantics, in samples since the player started (:meth:`Player.position`):

- Before the first clip starts, the output is silence (counted as underrun blocks).
- The current clip loops (circular index) until the next scheduled clip's start sample.
- At that sample the new clip begins at its own sample 0 with an equal-power crossfade of
  ``crossfade_samples`` (the old clip fades out while continuing its loop; a clip that starts
  from silence fades in the same way). With ``crossfade_samples == 0`` the switch is hard.
- A clip whose start sample has already passed is **not** started late (that would move it off
  the bar grid). :meth:`Player.schedule` returns ``False`` when it can tell at once; when the
  audio thread finds out (a race with the block being rendered) it marks the slot LATE and
  :meth:`Player.poll` returns it in ``late`` so the scheduler can reschedule it at the next
  bar line. Meanwhile the current clip keeps looping, so the audio never stops.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from engine.errors import InvalidRequest

log = logging.getLogger(__name__)

FREE, READY, PLAYING, DONE, LATE = 0, 1, 2, 3, 4

#: Indices into the counters array.
UNDERRUNS, LATE_CLIPS, REPEATS, STARTED, XRUNS, BLOCKS, SUPERSEDED = range(7)
COUNTER_NAMES = ("underruns", "late", "repeats", "started", "xruns", "blocks", "superseded")


class HasAudio(Protocol):
    """What the player needs from a clip: its audio, float32 ``(channels, samples)``."""

    @property
    def audio(self) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class PlayerConfig:
    """Fixed sizes of the player, all in samples; validated once."""

    sample_rate: int = 48000
    channels: int = 2
    slots: int = 4
    crossfade_samples: int = 480
    max_block: int = 4096
    initial_slot_samples: int = 48000 * 8

    def __post_init__(self) -> None:
        if not 8000 <= self.sample_rate <= 384000:
            raise InvalidRequest(f"sample rate must be 8000..384000, not {self.sample_rate}")
        if not 1 <= self.channels <= 8:
            raise InvalidRequest(f"channels must be 1..8, not {self.channels}")
        if not 2 <= self.slots <= 64:
            raise InvalidRequest(f"slots must be 2..64, not {self.slots}")
        if not 0 <= self.crossfade_samples <= self.sample_rate:
            raise InvalidRequest("crossfade must be between 0 and 1 second")
        if not 16 <= self.max_block <= 65536:
            raise InvalidRequest(f"max block must be 16..65536, not {self.max_block}")
        if self.initial_slot_samples < 1:
            raise InvalidRequest("initial slot length must be positive")

    @classmethod
    def with_crossfade_ms(cls, sample_rate: int, crossfade_ms: float, **kw: Any) -> PlayerConfig:
        """Config with the crossfade given in milliseconds (rounded to whole samples)."""
        if not (math.isfinite(crossfade_ms) and 0 <= crossfade_ms <= 1000):
            raise InvalidRequest(f"crossfade must be 0..1000 ms, not {crossfade_ms!r}")
        return cls(sample_rate=sample_rate,
                   crossfade_samples=round(crossfade_ms * sample_rate / 1000), **kw)


@dataclasses.dataclass(frozen=True)
class PlayerEvents:
    """What happened since the last :meth:`Player.poll` (control thread)."""

    started: list[tuple[Any, int]]
    late: list[tuple[Any, int]]
    finished: list[Any]


class Player:
    """The bar-timeline player; implements the control plane's ``ClipSink`` protocol.

    Threads: :meth:`render` is called only by the audio thread. :meth:`schedule`,
    :meth:`poll` and :meth:`counters` only by one control thread. :meth:`position` and
    :meth:`count_xrun` may be called from any thread.
    """

    def __init__(self, config: PlayerConfig | None = None) -> None:
        self.config = cfg = config or PlayerConfig()
        n = cfg.slots
        self._buf: list[np.ndarray] = [
            np.zeros((cfg.channels, cfg.initial_slot_samples), np.float32) for _ in range(n)
        ]
        self._state = np.zeros(n, np.int8)
        self._start = np.zeros(n, np.int64)
        self._length = np.ones(n, np.int64)
        self._seq = np.zeros(n, np.int64)
        self._counters = np.zeros(len(COUNTER_NAMES), np.int64)
        # Control-thread bookkeeping (the audio thread never reads these).
        self._clips: list[Any] = [None] * n
        self._reported = [False] * n
        self._next_seq = 1
        self._rejected_late = 0
        self._ev_started: list[tuple[Any, int]] = []
        self._ev_late: list[tuple[Any, int]] = []
        self._ev_finished: list[Any] = []
        # Audio-thread state (only the audio thread writes these).
        self._pos = 0
        self._cur = -1
        self._cur_origin = 0
        self._fading = False
        self._fade = -1
        self._fade_origin = 0
        self._fade_begin = 0
        self._mix = np.zeros((cfg.channels, cfg.max_block), np.float32)
        self._tmp = np.zeros((cfg.channels, cfg.max_block), np.float32)
        xf = cfg.crossfade_samples
        ramp = np.arange(xf, dtype=np.float64) / max(xf, 1) * (np.pi / 2)
        self._fade_in = np.sin(ramp).astype(np.float32)
        self._fade_out = np.cos(ramp).astype(np.float32)

    # ---- any thread -------------------------------------------------------------------------

    def position(self) -> int:
        """Samples rendered so far: the timeline position of the next block (any thread)."""
        return self._pos

    def count_xrun(self) -> None:
        """Count one xrun reported by the audio backend (its notification thread)."""
        self._counters[XRUNS] += 1

    # ---- control thread ---------------------------------------------------------------------

    def schedule(self, clip: HasAudio, start_sample: int) -> bool:
        """Hand ``clip`` to the audio thread, to start at ``start_sample`` (control thread).

        Returns ``False`` (and plays nothing) when the start has already passed or every slot
        is busy; the caller reschedules at a later bar line. A clip scheduled at the same
        sample as an earlier one replaces it (latest wins). Copies the audio into a slot, so
        the caller may reuse its array.
        """
        audio = np.asarray(clip.audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None, :]
        if audio.ndim != 2 or audio.shape[1] < 1:
            raise InvalidRequest(f"clip audio must be (channels, samples), not {audio.shape}")
        if audio.shape[0] not in (1, self.config.channels):
            raise InvalidRequest(f"clip has {audio.shape[0]} channels, the player "
                                 f"{self.config.channels}")
        self._reclaim()
        if start_sample < self._pos:
            self._rejected_late += 1
            log.warning("clip for sample %d is late (now %d); not scheduled",
                        start_sample, self._pos)
            return False
        free = np.flatnonzero(self._state == FREE)
        if free.size == 0:
            log.warning("no free clip slot for sample %d; not scheduled", start_sample)
            return False
        slot = int(free[0])
        n = audio.shape[1]
        if self._buf[slot].shape[1] < n:  # grow on the control thread; the slot is FREE
            self._buf[slot] = np.zeros((self.config.channels, n), np.float32)
        self._buf[slot][:, :n] = audio  # broadcasts mono to every channel
        self._length[slot] = n
        self._start[slot] = start_sample
        self._seq[slot] = self._next_seq
        self._next_seq += 1
        self._clips[slot] = clip
        self._reported[slot] = False
        self._state[slot] = READY  # publish last
        return True

    def poll(self) -> PlayerEvents:
        """Reclaim released slots; report clips started, late and finished since last call."""
        self._reclaim()
        events = PlayerEvents(self._ev_started, self._ev_late, self._ev_finished)
        self._ev_started, self._ev_late, self._ev_finished = [], [], []
        return events

    def _reclaim(self) -> None:
        for slot in range(self.config.slots):
            state = int(self._state[slot])
            clip = self._clips[slot]
            if state in (PLAYING, DONE) and not self._reported[slot] and clip is not None:
                if state == PLAYING or self._counted_start(slot):
                    self._ev_started.append((clip, int(self._start[slot])))
                    self._reported[slot] = True
            if state == DONE:
                self._ev_finished.append(clip)
            elif state == LATE:
                self._ev_late.append((clip, int(self._start[slot])))
            if state in (DONE, LATE):
                self._clips[slot] = None
                self._state[slot] = FREE

    def _counted_start(self, slot: int) -> bool:
        # A DONE slot played unless it was superseded before its start; the audio thread
        # marks superseded slots by zeroing their sequence number before releasing them.
        return bool(self._seq[slot] != 0)

    def pending(self) -> list[int]:
        """Start samples of clips waiting to start, sorted (control thread)."""
        return sorted(int(self._start[s]) for s in range(self.config.slots)
                      if self._state[s] == READY)

    def counters(self) -> dict[str, int]:
        """Counter snapshot: underruns, late, repeats, started, xruns, blocks, superseded."""
        out = {name: int(v) for name, v in zip(COUNTER_NAMES, self._counters, strict=True)}
        out["late"] += self._rejected_late
        return out

    # ---- audio thread -----------------------------------------------------------------------

    def render(self, outs: Sequence[np.ndarray] | np.ndarray) -> None:
        """Fill ``outs`` (one float32 array per channel, equal lengths) with the next frames.

        Thread: the audio thread only. Must not block, lock, log or allocate arrays: it only
        copies from preallocated slots into preallocated scratch buffers and the outputs.
        """
        total = len(outs[0])
        done = 0
        mb = self.config.max_block
        while done < total:
            n = min(mb, total - done)
            self._render_block(n)
            for ch in range(len(outs)):
                outs[ch][done:done + n] = self._mix[ch if ch < self.config.channels else 0, :n]
            done += n
        self._counters[BLOCKS] += 1

    def _render_block(self, n: int) -> None:
        t = self._pos
        end = t + n
        self._reject_late(t)
        silent = False
        while t < end:
            nxt = self._next_start(t, end)
            if nxt == t:
                self._switch(t)
                continue
            seg_end = end if nxt < 0 else nxt
            if self._fading:
                seg_end = min(seg_end, self._fade_begin + self.config.crossfade_samples)
            o, k = t - self._pos, seg_end - t
            mix = self._mix[:, o:o + k]
            if self._cur < 0:
                mix[:] = 0.0
                silent = True
            else:
                self._copy_loop(mix, self._cur, t - self._cur_origin, k)
                self._count_repeats(t, seg_end)
            if self._fading:
                f = t - self._fade_begin
                mix *= self._fade_in[f:f + k]
                if self._fade >= 0:
                    tmp = self._tmp[:, :k]
                    self._copy_loop(tmp, self._fade, t - self._fade_origin, k)
                    tmp *= self._fade_out[f:f + k]
                    mix += tmp
                if seg_end >= self._fade_begin + self.config.crossfade_samples:
                    self._end_fade()
            t = seg_end
        self._pos = end
        if silent:
            self._counters[UNDERRUNS] += 1

    def _reject_late(self, t: int) -> None:
        state, start = self._state, self._start
        for s in range(len(state)):
            if state[s] == READY and start[s] < t:
                self._counters[LATE_CLIPS] += 1
                state[s] = LATE

    def _next_start(self, t: int, end: int) -> int:
        """Earliest READY start in [t, end), or -1; superseded duplicates are released."""
        state, start, seq = self._state, self._start, self._seq
        best, best_start = -1, end
        for s in range(len(state)):
            if state[s] != READY:
                continue
            st = start[s]
            if st < t:  # published while this block was being rendered: too late
                self._counters[LATE_CLIPS] += 1
                state[s] = LATE
                continue
            if st < best_start or (st == best_start and best >= 0 and seq[s] > seq[best]):
                best, best_start = s, st
        if best < 0:
            return -1
        for s in range(len(state)):  # latest wins at the same sample
            if s != best and state[s] == READY and start[s] == best_start:
                seq[s] = 0
                self._counters[SUPERSEDED] += 1
                state[s] = DONE
        return int(best_start)

    def _switch(self, t: int) -> None:
        """Start the earliest READY clip whose start is ``t``."""
        state, start, seq = self._state, self._start, self._seq
        new = -1
        for s in range(len(state)):
            if state[s] == READY and start[s] == t and (new < 0 or seq[s] > seq[new]):
                new = s
        if self._fading:
            self._end_fade()
        old, old_origin = self._cur, self._cur_origin
        self._cur, self._cur_origin = new, t
        state[new] = PLAYING
        self._counters[STARTED] += 1
        if self.config.crossfade_samples > 0:
            self._fading, self._fade, self._fade_origin = True, old, old_origin
            self._fade_begin = t
        elif old >= 0:
            state[old] = DONE

    def _end_fade(self) -> None:
        if self._fade >= 0:
            self._state[self._fade] = DONE
        self._fading, self._fade = False, -1

    def _copy_loop(self, dst: np.ndarray, slot: int, index: int, count: int) -> None:
        """Copy ``count`` frames of ``slot`` starting at circular ``index`` into ``dst``."""
        buf = self._buf[slot]
        length = int(self._length[slot])
        i = index % length
        o = 0
        while o < count:
            k = min(count - o, length - i)
            dst[:, o:o + k] = buf[:, i:i + k]
            o += k
            i = 0

    def _count_repeats(self, t: int, end: int) -> None:
        """Count loop restarts of the current clip at samples in [t, end)."""
        length = int(self._length[self._cur])
        rel_lo, rel_hi = t - self._cur_origin, end - 1 - self._cur_origin
        lo = max(1, -(-rel_lo // length))
        hi = rel_hi // length
        if hi >= lo:
            self._counters[REPEATS] += hi - lo + 1
