"""The compiled player: a JACK process callback that mixes clips itself from a table of voices.

Why: with render-ahead (:mod:`protocols.audio.jack_rt`) the samples are still made by a Python
thread, so a long enough GIL hold (a full garbage collection of a big heap, a busy thread)
empties the ring and the output goes silent. Here the callback (a numba ``cfunc`` registered
with ``jack_set_process_callback``, no GIL) reads the clips' own buffers: Python publishes,
ahead of time, *records* saying which voices sound from which timeline sample on (derived
from the player's own decisions, :meth:`~engine.live.player.Player.plan`), and the callback
mixes them. The last record stays in force until a newer one starts, so once a clip is
published nothing in Python has to run for it to loop, repeat or finish its crossfade; a
stalled Python only makes the *next* clip late (it then starts phase-locked, as a late clip
always does).

The table (all preallocated numpy memory, addresses in ``ctl``):

- ``ctl`` (int64): ``POS`` (the player's timeline sample of the next cycle: the callback's),
  ``REC_W`` (records published: Python's), ``REC_R`` (the record in force: the callback's;
  -1 before the first), ``LATE`` (records the callback adopted after their first sample),
  ``CALLS``, a seqlock ``SEQ`` around ``LAST_FRAME``/``READ_AT`` (the JACK frame of the cycle
  and the timeline sample played at it), the mix's channel count, the records' and durations'
  addresses, the client and port pointers, and ``BUF0..`` (each cycle's port buffers).
- ``recs`` (int64, ``NREC`` x ``FIELDS``): per record its first sample ``BEGIN``; the current
  clip (address, length in frames, channels, origin: read at ``(t - origin) mod length``; 0
  address: silence); the outgoing clip (the same); the fade window (first sample, length).
  See :class:`~engine.live.player.Voices` for the mix.

The parts hosted on the same client are served by the same callback, before it mixes
(``ctl[NMIDI]``/``MIDI0..``, ``XPORT``, ``CAPT``: addresses of small int64 *slots*, 0 when
absent; see :func:`_compile_hosted`): JACK MIDI inputs and their feedback outputs
(:mod:`protocols.midi.jack_input`, rings of :class:`~engine.live.ring.SharedSpscRing`),
following JACK transport (``jack_transport_query`` into a preallocated ``jack_position_t``,
published into :class:`~protocols.audio.jack_output.JackOutput`'s seqlock arrays) and the
audio input's capture window (:mod:`protocols.audio.jack_input`). So the Python callback is
needed for none of them.

Each side writes only its own counters, after the data they publish (single producer, single
consumer; aligned 8-byte stores are atomic on the platforms JACK runs on). A clip's buffer
is referenced by Python (:class:`VoiceTable`) until the callback's ``REC_R`` has moved past
every record naming it, so the callback never reads freed memory.

Threads: :func:`install` runs on the control thread before activation; :func:`process` on
JACK's real-time thread (no GIL, no allocation, no locks, no syscalls but libjack's RT-safe
calls); :class:`Planner` on its own Python thread ("riff-plan").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.live.player import Player, Voices

log = logging.getLogger(__name__)

# ctl indices
POS, REC_W, REC_R, LATE, CALLS, SEQ, LAST_FRAME, READ_AT, CHANNELS, REC_ADDR, DUR_ADDR, \
    CLIENT, NPORTS, PORT0 = range(14)
MAX_PORTS = 8
BUF0 = PORT0 + MAX_PORTS
#: The parts hosted on the client (see :class:`VoiceTable`): MIDI slots, transport, capture.
MAX_MIDI = 4
NMIDI = BUF0 + MAX_PORTS
MIDI0 = NMIDI + 1
XPORT = MIDI0 + MAX_MIDI
CAPT = XPORT + 1
CTL_SIZE = CAPT + 1
# A JACK MIDI slot (int64): input port, output port (0: none), the input ring's buffer,
# counters and capacity (JACK -> loop), the output ring's (loop -> JACK), the wake-up pipe's
# write end, WAKE (1 while a wake-up byte is pending: set here, cleared by the loop), SYSEX
# (events too long for a ring row, skipped), ONE (the byte written to the pipe), EVENT0..
# (a jack_midi_event_t the callback fills).
M_IN, M_OUT, M_IN_BUF, M_IN_CNT, M_IN_CAP, M_OUT_BUF, M_OUT_CNT, M_OUT_CAP, M_FD, M_WAKE, \
    M_SYSEX, M_ONE, M_EVENT = range(13)
MIDI_SLOT = M_EVENT + 3
#: Bytes of a MIDI ring row (``protocols.midi.jack_input.MIDI_EVENT``, aligned): the data
#: bytes, their count at byte 3, the JACK frame as int64 at byte 8.
MIDI_ROW = 16
# The transport slot (int64): the jack_position_t memory, the BBT seqlock array's and the
# state array's addresses (JackOutput's own arrays).
X_POS, X_BBT, X_STATE = range(3)
X_SLOT = 3
# The capture slot (int64): the tap's state array, its ring's buffer, counters, capacity and
# channels, the input port count and the ports.
MAX_INPUTS = 8
C_STATE, C_BUF, C_CNT, C_CAP, C_CH, C_NPORTS, C_PORT0 = range(7)
C_SLOT = C_PORT0 + MAX_INPUTS
# record fields
BEGIN, CUR, CUR_LEN, CUR_CH, CUR_ORIGIN, OLD, OLD_LEN, OLD_CH, OLD_ORIGIN, FADE_BEGIN, \
    FADE_LEN = range(11)
FIELDS = 12
NREC = 256
DURATIONS = 1 << 16

_compiled: dict[str, Any] = {}


def _compile() -> dict[str, Any]:
    """Compile the mixer (``mix``: callable from Python on numpy buffers, for tests and the
    recording tap) and the callback around it (``process``), once per process."""
    if _compiled:
        return _compiled
    import math

    import numba
    from numba import types

    from protocols.audio import jack_rt

    as_voidptr, as_int = jack_rt.pointer_intrinsics()
    carray: Any = numba.carray
    half_pi = math.pi / 2

    @numba.njit(types.void(types.int64, types.int64), nogil=True, cache=False)
    def mix(nframes: int, ctl_addr: int) -> None:
        """Mix the next ``nframes`` of the table into the buffers ``ctl[BUF0..]`` and advance
        ``POS``/``REC_R``. Thread: the callback's (or a test's); no GIL, no allocation."""
        ctl = carray(as_voidptr(ctl_addr), CTL_SIZE, dtype=np.int64)
        recs = carray(as_voidptr(ctl[REC_ADDR]), (NREC, FIELDS), dtype=np.int64)
        t0 = ctl[POS]
        end = t0 + nframes
        w = ctl[REC_W]
        r = ctl[REC_R]
        chans = ctl[CHANNELS]
        nports = ctl[NPORTS]
        t = t0
        while t < end:
            while r + 1 < w and recs[(r + 1) % NREC, BEGIN] <= t:
                r += 1
                if recs[r % NREC, BEGIN] < t:
                    ctl[LATE] += 1
            seg_end = end
            if r + 1 < w and recs[(r + 1) % NREC, BEGIN] < seg_end:
                seg_end = recs[(r + 1) % NREC, BEGIN]
            rec = recs[r % NREC] if r >= 0 else recs[0]
            for p in range(nports):
                out = carray(as_voidptr(ctl[BUF0 + p]), nframes, dtype=np.float32)
                if r < 0:
                    for j in range(t, seg_end):
                        out[j - t0] = np.float32(0.0)
                    continue
                mch = p if p < chans else 0
                cur_len, old_len = rec[CUR_LEN], rec[OLD_LEN]
                cur = carray(as_voidptr(rec[CUR]), (max(cur_len, 1), max(rec[CUR_CH], 1)),
                             dtype=np.float32)
                old = carray(as_voidptr(rec[OLD]), (max(old_len, 1), max(rec[OLD_CH], 1)),
                             dtype=np.float32)
                cc = mch if rec[CUR_CH] > 1 else 0
                oc = mch if rec[OLD_CH] > 1 else 0
                fb, fl = rec[FADE_BEGIN], rec[FADE_LEN]
                step = half_pi / fl if fl > 0 else 0.0
                ci = (t - rec[CUR_ORIGIN]) % cur_len if rec[CUR] != 0 else 0
                oi = (t - rec[OLD_ORIGIN]) % old_len if rec[OLD] != 0 else 0
                for j in range(t, seg_end):
                    v = cur[ci, cc] if rec[CUR] != 0 else np.float32(0.0)
                    if fl > 0 and fb <= j < fb + fl:
                        phase = np.float64(j - fb) * step
                        v = v * np.float32(math.sin(phase))
                        if rec[OLD] != 0:
                            v = v + old[oi, oc] * np.float32(math.cos(phase))
                    out[j - t0] = v
                    ci += 1
                    if ci == cur_len:
                        ci = 0
                    oi += 1
                    if oi == old_len:
                        oi = 0
            t = seg_end
        ctl[REC_R] = r
        ctl[POS] = end

    get_buffer, get_time = jack_rt._get_buffer, jack_rt._get_time
    last_frame_time = jack_rt._last_frame_time
    hosted = _compile_hosted(numba, types, as_voidptr, get_buffer, last_frame_time)

    @numba.cfunc(types.int32(types.uint32, types.voidptr), cache=False)
    def process(nframes: int, arg: Any) -> int:
        """JACK's process callback. Thread: JACK's real-time thread; no GIL, no allocation."""
        ctl = carray(arg, CTL_SIZE, dtype=np.int64)
        t0 = get_time()
        n = ctl[NPORTS]
        for p in range(n):
            ctl[BUF0 + p] = get_buffer(as_voidptr(ctl[PORT0 + p]), nframes)
        ctl[SEQ] += 1
        ctl[LAST_FRAME] = last_frame_time(as_voidptr(ctl[CLIENT]))
        ctl[READ_AT] = ctl[POS]
        ctl[SEQ] += 1
        hosted(nframes, ctl)
        mix(nframes, as_int(arg))
        dur = carray(as_voidptr(ctl[DUR_ADDR]), DURATIONS, dtype=np.int64)
        dur[ctl[CALLS] & (DURATIONS - 1)] = get_time() - t0
        ctl[CALLS] += 1
        return 0

    _compiled.update(mix=mix, process=process)
    return _compiled


def _compile_hosted(numba: Any, types: Any, as_voidptr: Any, get_buffer: Any,
                    last_frame_time: Any) -> Any:
    """Compile ``hosted(nframes, ctl)``: the parts hosted on the client, run by the callback
    before it mixes (``ctl[POS]`` is still the cycle's first timeline sample): JACK MIDI in
    and out, the transport query, the audio input's capture window. Thread: JACK's real-time
    thread; no GIL, no allocation, no locks; libjack's RT-safe calls and, when a MIDI ring
    was idle, one non-blocking ``write`` of a byte to a pipe (as the Python callback does)."""
    import ctypes
    import ctypes.util

    import jack

    from engine.live import capture, ring
    from protocols.audio import jack_output, jack_rt

    lib = jack_rt._lib
    event_count = lib.jack_midi_get_event_count
    event_count.argtypes = [ctypes.c_void_p]
    event_count.restype = ctypes.c_uint32
    event_get = lib.jack_midi_event_get
    event_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32]
    event_get.restype = ctypes.c_int
    clear_buffer = lib.jack_midi_clear_buffer
    clear_buffer.argtypes = [ctypes.c_void_p]
    clear_buffer.restype = None
    event_write = lib.jack_midi_event_write
    event_write.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    event_write.restype = ctypes.c_int
    transport_query = lib.jack_transport_query
    transport_query.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    transport_query.restype = ctypes.c_int
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    write = libc.write
    write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    write.restype = ctypes.c_ssize_t

    ffi = jack._ffi
    off_valid = ffi.offsetof("jack_position_t", "valid")
    off_bar = ffi.offsetof("jack_position_t", "bar")
    off_beat = ffi.offsetof("jack_position_t", "beat")
    off_tick = ffi.offsetof("jack_position_t", "tick")
    off_bpb = ffi.offsetof("jack_position_t", "beats_per_bar")
    off_tpb = ffi.offsetof("jack_position_t", "ticks_per_beat")
    off_bpm = ffi.offsetof("jack_position_t", "beats_per_minute")
    bbt_flag = int(jack._lib.JackPositionBBT)
    rolling = int(jack.ROLLING)
    none, stopped, rolled = (jack_output.TRANSPORT_NONE, jack_output.TRANSPORT_STOPPED,
                             jack_output.TRANSPORT_ROLLING)

    carray: Any = numba.carray
    HEAD, TAIL, DROPPED_ROWS, DROPPED_WRITES = (ring.HEAD, ring.TAIL, ring.DROPPED_ROWS,
                                                ring.DROPPED_WRITES)
    ARMED, DONE, START, END, WRITTEN, MISSED, START_FRAME, LOST = (
        capture.ARMED, capture.DONE, capture.START, capture.END, capture.WRITTEN,
        capture.MISSED, capture.START_FRAME, capture.LOST)

    @numba.njit(nogil=True, cache=False)
    def midi(nframes: int, ctl: Any, slot_addr: int) -> None:
        slot = carray(as_voidptr(slot_addr), MIDI_SLOT, dtype=np.int64)
        out_port = slot[M_OUT]
        if out_port != 0:
            buf = get_buffer(as_voidptr(out_port), nframes)
            clear_buffer(buf)
            cnt = carray(as_voidptr(slot[M_OUT_CNT]), 4, dtype=np.int64)
            cap = slot[M_OUT_CAP]
            rows = carray(as_voidptr(slot[M_OUT_BUF]), cap * MIDI_ROW, dtype=np.uint8)
            tail = cnt[TAIL]
            while cnt[HEAD] != tail:
                row = (tail % cap) * MIDI_ROW
                event_write(buf, 0, as_voidptr(slot[M_OUT_BUF] + row), rows[row + 3])
                tail += 1
                cnt[TAIL] = tail
        in_port = slot[M_IN]
        if in_port == 0:
            return
        buf = get_buffer(as_voidptr(in_port), nframes)
        cnt = carray(as_voidptr(slot[M_IN_CNT]), 4, dtype=np.int64)
        cap = slot[M_IN_CAP]
        rows = carray(as_voidptr(slot[M_IN_BUF]), cap * MIDI_ROW, dtype=np.uint8)
        frames = carray(as_voidptr(slot[M_IN_BUF]), cap * 2, dtype=np.int64)
        base = np.int64(ctl[LAST_FRAME])
        head = cnt[HEAD]
        before = head
        ev_addr = slot_addr + M_EVENT * 8
        for i in range(event_count(buf)):
            if event_get(as_voidptr(ev_addr), buf, i) != 0:
                continue
            size = slot[M_EVENT + 1]
            if size > 3 or size == 0:
                slot[M_SYSEX] += 1
                continue
            if head - cnt[TAIL] >= cap:
                cnt[DROPPED_ROWS] += 1
                cnt[DROPPED_WRITES] += 1
                continue
            data = carray(as_voidptr(slot[M_EVENT + 2]), size, dtype=np.uint8)
            k = head % cap
            for j in range(3):
                rows[k * MIDI_ROW + j] = data[j] if j < size else np.uint8(0)
            rows[k * MIDI_ROW + 3] = np.uint8(size)
            frames[k * 2 + 1] = base + (slot[M_EVENT] & 0xFFFFFFFF)
            head += 1
            cnt[HEAD] = head
        if head != before and slot[M_WAKE] == 0:
            slot[M_WAKE] = 1
            write(np.int32(slot[M_FD]), as_voidptr(slot_addr + M_ONE * 8), 1)

    @numba.njit(nogil=True, cache=False)
    def transport(ctl: Any, xs: Any) -> None:
        pos = xs[X_POS]
        st = transport_query(as_voidptr(ctl[CLIENT]), as_voidptr(pos))
        state = carray(as_voidptr(xs[X_STATE]), 1, dtype=np.int64)
        valid = carray(as_voidptr(pos + off_valid), 1, dtype=np.int32)[0]
        tpb = carray(as_voidptr(pos + off_tpb), 1, dtype=np.float64)[0]
        if (valid & bbt_flag) == 0 or tpb <= 0:
            state[0] = none
            return
        if st != rolling:
            state[0] = stopped
            return
        state[0] = rolled
        bbt = carray(as_voidptr(xs[X_BBT]), 6, dtype=np.float64)
        bbt[0] += 1  # odd: writing
        bbt[1] = ctl[POS]
        bbt[2] = carray(as_voidptr(pos + off_bar), 1, dtype=np.int32)[0] - 1
        tick = carray(as_voidptr(pos + off_tick), 1, dtype=np.int32)[0]
        bbt[3] = carray(as_voidptr(pos + off_beat), 1, dtype=np.int32)[0] - 1 + tick / tpb
        bbt[4] = carray(as_voidptr(pos + off_bpm), 1, dtype=np.float64)[0]
        bbt[5] = carray(as_voidptr(pos + off_bpb), 1, dtype=np.float32)[0]
        bbt[0] += 1  # even: complete

    @numba.njit(nogil=True, cache=False)
    def capture_input(nframes: int, ctl: Any, cs: Any) -> None:
        st = carray(as_voidptr(cs[C_STATE]), 8, dtype=np.int64)
        nports = cs[C_NPORTS]
        if st[ARMED] == 0 or st[DONE] != 0 or nports == 0:
            return
        n = np.int64(nframes)
        position = ctl[POS]
        frame_time = ctl[LAST_FRAME]
        start, end = st[START], st[END]
        lo = position if position > start else start
        hi = position + n if position + n < end else end
        if hi > lo:
            if st[WRITTEN] == 0 and st[START_FRAME] < 0:
                st[MISSED] = lo - start
                st[START_FRAME] = frame_time + (start - position)
            else:
                st[LOST] = frame_time - position - (st[START_FRAME] - start)
            cnt = carray(as_voidptr(cs[C_CNT]), 4, dtype=np.int64)
            cap, chans = cs[C_CAP], cs[C_CH]
            count, offset = hi - lo, lo - position
            head = cnt[HEAD]
            if count > cap - (head - cnt[TAIL]):
                cnt[DROPPED_ROWS] += count
                cnt[DROPPED_WRITES] += 1
            else:
                dst = carray(as_voidptr(cs[C_BUF]), (cap, chans), dtype=np.float32)
                at = head % cap
                first = count if count <= cap - at else cap - at  # then wrap to row 0
                for ch in range(chans):
                    p = ch if ch < nports else 0
                    src = carray(as_voidptr(get_buffer(as_voidptr(cs[C_PORT0 + p]), nframes)),
                                 n, dtype=np.float32)
                    for k in range(first):
                        dst[at + k, ch] = src[offset + k]
                    for k in range(count - first):
                        dst[k, ch] = src[offset + first + k]
                cnt[HEAD] = head + count
            st[WRITTEN] += hi - lo
        if position + n >= end:
            if st[WRITTEN] == 0:
                st[MISSED] = end - start
            st[DONE] = 1

    @numba.njit(nogil=True, cache=False)
    def hosted(nframes: int, ctl: Any) -> None:
        for i in range(ctl[NMIDI]):
            midi(nframes, ctl, ctl[MIDI0 + i])
        if ctl[XPORT] != 0:
            transport(ctl, carray(as_voidptr(ctl[XPORT]), X_SLOT, dtype=np.int64))
        if ctl[CAPT] != 0:
            capture_input(nframes, ctl, carray(as_voidptr(ctl[CAPT]), C_SLOT, dtype=np.int64))

    del last_frame_time
    return hosted


class VoiceTable:
    """The shared table (see the module docstring) and the Python side's references to the
    clip buffers it names; its memory lives as long as this."""

    def __init__(self, channels: int) -> None:
        self.ctl = np.zeros(CTL_SIZE, np.int64)
        self.recs = np.zeros((NREC, FIELDS), np.int64)
        self.durations = np.zeros(DURATIONS, np.int64)
        self.ctl[REC_R] = -1
        self.ctl[CHANNELS] = channels
        self.ctl[REC_ADDR] = self.recs.ctypes.data
        self.ctl[DUR_ADDR] = self.durations.ctypes.data
        #: The buffers each published record names, by record number (Python only).
        self._refs: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}
        self._last: Voices | None = None
        #: Memory the callback may still read for the hosted parts (slots, a jack_position_t):
        #: kept as long as the table, never released (a removed slot may be in use this cycle).
        self._hosted: list[np.ndarray] = []
        self._position = np.zeros(256, np.uint8)  # jack_position_t (136 bytes) and room

    def add_midi(self, slot: np.ndarray) -> None:
        """Have the callback serve the JACK MIDI slot ``slot`` (int64, ``MIDI_SLOT`` long; its
        port fields may be 0 until the ports exist). Control thread; the slot's fields before
        the count."""
        if slot.dtype != np.int64 or slot.shape != (MIDI_SLOT,) or not slot.flags.c_contiguous:
            raise ValueError(f"a MIDI slot is a contiguous int64 array of {MIDI_SLOT}")
        n = int(self.ctl[NMIDI])
        if n >= MAX_MIDI:
            raise ValueError(f"at most {MAX_MIDI} JACK MIDI inputs on the compiled callback")
        self._hosted.append(slot)
        self.ctl[MIDI0 + n] = slot.ctypes.data
        self.ctl[NMIDI] = n + 1

    def remove_midi(self, slot: np.ndarray) -> None:
        """Stop serving ``slot`` (control thread). Its memory stays referenced here: the
        callback may be reading it in the cycle running now."""
        addrs = [int(a) for a in self.ctl[MIDI0:MIDI0 + int(self.ctl[NMIDI])]]
        if slot.ctypes.data not in addrs:
            return
        addrs.remove(slot.ctypes.data)
        self.ctl[NMIDI] = 0
        for i, a in enumerate(addrs):
            self.ctl[MIDI0 + i] = a
        self.ctl[NMIDI] = len(addrs)

    def set_client(self, client_ptr: int) -> None:
        """A new client (opened again after a server restart, not active yet): its pointer,
        and no ports until they are registered again, the hosted parts' included (their
        owners publish them again when they register). Control thread."""
        self.set_ports(client_ptr, [])
        live = {int(a) for a in self.ctl[MIDI0:MIDI0 + int(self.ctl[NMIDI])]}
        for arr in self._hosted:
            if arr.ctypes.data in live:
                arr[M_IN] = arr[M_OUT] = 0
            elif arr.ctypes.data == int(self.ctl[CAPT]):
                arr[C_NPORTS] = 0

    def set_transport(self, bbt: np.ndarray, state: np.ndarray) -> None:
        """Have the callback query JACK transport every cycle and publish it into ``bbt``
        (float64 x 6: seqlock, timeline sample, bar, beat, tempo, beats per bar) and
        ``state`` (int64 x 1), as :class:`~protocols.audio.jack_output.JackOutput`'s Python
        callback does. Control thread."""
        if bbt.dtype != np.float64 or bbt.shape != (6,) or state.dtype != np.int64 \
                or state.shape != (1,):
            raise ValueError("transport arrays: float64 x 6 and int64 x 1")
        xs = np.array([self._position.ctypes.data, bbt.ctypes.data, state.ctypes.data],
                      np.int64)
        self._hosted.extend((xs, bbt, state))
        self.ctl[XPORT] = xs.ctypes.data

    def set_capture(self, slot: np.ndarray | None) -> None:
        """Have the callback copy the audio input into the capture slot ``slot`` (int64,
        ``C_SLOT`` long), or stop (None). Control thread."""
        if slot is None:
            self.ctl[CAPT] = 0
            return
        if slot.dtype != np.int64 or slot.shape != (C_SLOT,) or not slot.flags.c_contiguous:
            raise ValueError(f"a capture slot is a contiguous int64 array of {C_SLOT}")
        self._hosted.append(slot)
        self.ctl[CAPT] = slot.ctypes.data

    def set_ports(self, client_ptr: int, port_ptrs: Sequence[int]) -> None:
        """Publish the client and port pointers (control thread; ports before the count)."""
        if len(port_ptrs) > MAX_PORTS:
            raise ValueError(f"at most {MAX_PORTS} ports")
        self.ctl[NPORTS] = 0
        self.ctl[CLIENT] = client_ptr
        for i, ptr in enumerate(port_ptrs):
            self.ctl[PORT0 + i] = ptr
        self.ctl[NPORTS] = len(port_ptrs)

    def start_at(self, sample: int) -> None:
        """Start the table's timeline at ``sample`` (before anything is published)."""
        self.ctl[POS] = sample

    @property
    def position(self) -> int:
        """The timeline sample of the callback's next cycle."""
        return int(self.ctl[POS])

    def full(self) -> bool:
        """True when no record can be published until the callback moves on."""
        return int(self.ctl[REC_W]) - int(self.ctl[REC_R]) >= NREC - 1

    def publish(self, t: int, v: Voices) -> None:
        """Publish ``v`` from timeline sample ``t`` on, unless it is what is in force already
        (Python's thread; the record's fields before ``REC_W``). Raises when the table is full
        (callers check :meth:`full` first)."""
        last = self._last
        if (last is not None and last.cur is v.cur and last.old is v.old
                and last.cur_origin == v.cur_origin and last.old_origin == v.old_origin
                and last.fade_begin == v.fade_begin and last.fade_len == v.fade_len):
            return
        if self.full():
            raise RuntimeError("the voice table is full")
        w = int(self.ctl[REC_W])
        rec = self.recs[w % NREC]
        rec[BEGIN] = t
        for base, audio, origin in ((CUR, v.cur, v.cur_origin), (OLD, v.old, v.old_origin)):
            if audio is None:
                rec[base:base + 4] = (0, 1, 1, 0)
            else:
                if not audio.flags.c_contiguous or audio.dtype != np.float32:
                    raise ValueError("clip audio must be C-contiguous float32")
                rec[base:base + 4] = (audio.ctypes.data, audio.shape[0], audio.shape[1],
                                      origin)
        rec[FADE_BEGIN] = v.fade_begin
        rec[FADE_LEN] = v.fade_len
        self._refs[w] = (v.cur, v.old)
        self._last = v
        self.ctl[REC_W] = w + 1  # publish after the record

    def release(self, keep_from: int | None = None) -> int:
        """Drop the references of records the callback has moved past (record numbers below
        ``REC_R``, or ``keep_from`` when smaller: a second reader such as the recording tap);
        returns how many. Python's thread."""
        r = int(self.ctl[REC_R])
        if keep_from is not None:
            r = min(r, keep_from)
        old = [k for k in self._refs if k < r]
        for k in old:
            del self._refs[k]
        return len(old)

    def referenced(self) -> list[np.ndarray]:
        """The clip buffers the table still holds for the callback."""
        return [a for pair in self._refs.values() for a in pair if a is not None]

    def played_at(self) -> tuple[int, int] | None:
        """``(JACK frame, timeline sample)`` of the latest cycle, or None before the first
        (any thread; retried around the callback's seqlock)."""
        ctl = self.ctl
        for _ in range(8):
            seq = int(ctl[SEQ])
            frame, pos = int(ctl[LAST_FRAME]), int(ctl[READ_AT])
            if seq > 0 and seq % 2 == 0 and int(ctl[SEQ]) == seq:
                return frame, pos
        return None

    @property
    def calls(self) -> int:
        return int(self.ctl[CALLS])

    @property
    def records(self) -> int:
        """Records published so far."""
        return int(self.ctl[REC_W])

    @property
    def late_records(self) -> int:
        return int(self.ctl[LATE])


def mix_into(table: VoiceTable, outs: Sequence[np.ndarray], ctl: np.ndarray | None = None) -> None:
    """Run the compiled mixer on numpy buffers ``outs`` (float32, one per port, equal
    lengths), as the callback would on port buffers; ``ctl`` is a second reader's own
    counters (a copy of ``table.ctl`` sharing its records; default: the table's). Any
    Python thread; holds no GIL while it mixes."""
    ctl = table.ctl if ctl is None else ctl
    if len(outs) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} outputs")
    for i, buf in enumerate(outs):
        if buf.dtype != np.float32 or not buf.flags.c_contiguous or len(buf) != len(outs[0]):
            raise ValueError("outputs must be C-contiguous float32 arrays of one length")
        ctl[BUF0 + i] = buf.ctypes.data
    ctl[NPORTS] = len(outs)
    _compile()["mix"](np.int64(len(outs[0])), np.int64(ctl.ctypes.data))


def install(client: Any, table: VoiceTable) -> None:
    """Register the compiled callback on ``client`` (a JACK-Client ``Client``, not active
    yet) with ``table`` as its argument. Control thread."""
    from protocols.audio import jack_c

    process = _compile()["process"]
    cb = jack_c.ffi.cast("JackProcessCallback", process.address)
    arg = jack_c.ffi.cast("void *", table.ctl.ctypes.data)
    if jack_c.lib.jack_set_process_callback(jack_c._ptr(client, "jack_client_t *"), cb, arg):
        raise RuntimeError("jack_set_process_callback failed")


class Planner:
    """Keeps ``player``'s decisions published ``ahead`` samples ahead of the callback: runs
    :meth:`~engine.live.player.Player.plan` up to ``table.position + ahead`` and publishes its
    voices. If it was held up past what it had published, the callback went on with the last
    record; the player's timeline then moves to where the callback is (plus ``margin``:
    :meth:`~engine.live.player.Player.skip_to`) before deciding anything new.

    Recording: ``tap(buffers, position)`` gets the very samples the callback mixes, mixed again
    by the compiled mixer on this thread from the same records (a second reader with its own
    counters), block by block up to what was planned.

    Thread: its own ("riff-plan"); :meth:`step` also once on the control thread before
    activation; start/stop from the control thread.
    """

    #: SCHED_FIFO priority asked for the thread (as the render-ahead thread's).
    PRIORITY = 5

    def __init__(self, table: VoiceTable, player: Player, ahead: int, block: int,
                 margin: int | None = None, outputs: int | None = None) -> None:
        self.table = table
        self.player = player
        self.ahead = ahead
        self.block = block
        self.margin = block * 2 if margin is None else margin
        if ahead < self.margin + block:
            raise ValueError("the look-ahead must exceed the margin by a block at least")
        self.sample_rate = player.config.sample_rate
        self.tap: Callable[[list[np.ndarray], int], None] | None = None
        #: Times the callback ran past what was planned (the player's timeline jumped).
        self.skips = 0
        #: The longest time between two steps of the thread, and (clock, gap) of each gap
        #: over 20 ms (the latest 256): how long Python held it up.
        self.max_gap_s = 0.0
        self.gaps: list[tuple[float, float]] = []
        self._tap_ctl = table.ctl.copy()
        self._scratch = np.zeros((len_ports(table) if outputs is None else outputs, block),
                                 np.float32)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="riff-plan", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def step(self) -> None:
        """Plan and publish up to ``ahead`` samples past the callback, tap what was planned,
        release what the callback is done with (Python's thread)."""
        table, player = self.table, self.player
        now = table.position
        if table.ctl[REC_W] == 0 and player.position() < now:
            player.skip_to(now)
        if player.position() < now + self.margin and table.ctl[REC_W] > 0:
            if player.position() < now:
                self.skips += 1
            player.skip_to(now + self.margin)
        if table.ctl[REC_W] == 0:
            self._tap_ctl[POS] = player.position()
        target = now + self.ahead
        while player.position() < target and not table.full():
            player.plan(min(self.block, target - player.position()), table.publish)
        if self.tap is not None:
            self._tap_up_to(player.position())
            table.release(int(self._tap_ctl[REC_R]))
        else:
            table.release()

    def _tap_up_to(self, end: int) -> None:
        tc, tap = self._tap_ctl, self.tap
        assert tap is not None
        tc[REC_W] = self.table.ctl[REC_W]
        while tc[POS] + self.block <= end:
            pos = int(tc[POS])
            bufs = list(self._scratch)
            mix_into(self.table, bufs, tc)
            tap(bufs, pos + self.block)

    def _run(self) -> None:
        period = self.block / self.sample_rate
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.PRIORITY))
        except (OSError, AttributeError) as exc:
            log.info("the planning thread runs at normal priority (%s)", exc)
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                gap, last = now - last, now
                self.max_gap_s = max(self.max_gap_s, gap)
                if gap > 0.02:
                    self.gaps.append((now, gap))
                    del self.gaps[:-256]
                self.step()
                time.sleep(period / 2)
        except BaseException as exc:  # reported by the owner (JackOutput.render_error)
            self.error = exc
            log.exception("the planning thread failed; the current clip goes on looping")
            raise


def len_ports(table: VoiceTable) -> int:
    """Channels the mix has (the tap renders that many)."""
    return int(table.ctl[CHANNELS])
