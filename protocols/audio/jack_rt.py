"""A JACK process callback in compiled code that never takes the GIL: the ring copy.

``JackOutput(compiled_player=False)``; the default is the compiled player of
:mod:`protocols.audio.jack_table`, which mixes the clips itself, so that a Python thread held
up longer than the look-ahead delays the next clip instead of silencing the output.

Why: a Python process callback needs the GIL every period, so a full garbage collection, a busy
Python thread or a big ``recv`` in the daemon delays it past the period (xruns). Here the
callback is a numba ``cfunc`` registered with ``jack_set_process_callback`` (through this
package's cffi declarations, :mod:`protocols.audio.jack_c`): it only copies frames from a
preallocated ring into the port buffers and writes a few counters. A Python thread
(:class:`RenderAhead`, "riff-render") keeps the ring filled ``ahead`` frames in advance by
calling the player's ordinary :meth:`~engine.live.player.Player.render` (so every player
semantics, crossfades, repeats, bar-exact starts, stays exactly the player's), and taps the
recorder. The output therefore lags the player's clock by up to ``ahead`` frames: that is the
engine's look-ahead, reported as the ports' capture latency.

The table Python and the callback share (``RtTable``), all preallocated numpy memory:

- ``ctl`` (int64): the ring's ``WRITE`` (frames ever written, the render thread's) and ``READ``
  (frames ever read, the callback's) counters, ``UNDERRUNS`` (periods the ring ran short),
  ``CALLS``, a seqlock ``SEQ`` around ``LAST_FRAME``/``READ_AT`` (the JACK frame of the cycle
  and the ring position played at it), the ring's capacity and channel count, the ring's and
  the durations ring's addresses, and the port pointers.
- ``ring`` (float32, channels x capacity): the rendered frames.
- ``durations`` (int64): the callback's durations in microseconds (``jack_get_time``).

Each side writes only its own counters, after the data they publish (single producer, single
consumer; aligned 8-byte stores are atomic on the platforms JACK runs on).

Threads: :func:`install` runs on the control thread before activation; :func:`process` on
JACK's real-time thread (no GIL, no allocation, no locks, no syscalls but libjack's RT-safe
calls); :class:`RenderAhead` on its own Python thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# ctl indices
WRITE, READ, UNDERRUNS, CALLS, SEQ, LAST_FRAME, READ_AT, CAPACITY, CHANNELS, RING_ADDR, \
    DUR_ADDR, CLIENT, NPORTS, PORT0 = range(14)
MAX_PORTS = 8
CTL_SIZE = PORT0 + MAX_PORTS
DURATIONS = 1 << 16

_lib = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
_get_buffer = _lib.jack_port_get_buffer
_get_buffer.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
_get_buffer.restype = ctypes.c_void_p
_get_time = _lib.jack_get_time
_get_time.argtypes = []
_get_time.restype = ctypes.c_uint64
_last_frame_time = _lib.jack_last_frame_time
_last_frame_time.argtypes = [ctypes.c_void_p]
_last_frame_time.restype = ctypes.c_uint32

_compiled: Any = None


@functools.cache
def pointer_intrinsics() -> tuple[Any, Any]:
    """numba intrinsics for compiled callbacks: ``as_voidptr(int)`` (an integer address as a
    ``void *``; no check: the tables hold valid addresses) and ``as_int(void *)`` (the
    reverse). Built once per process; this module's callback and the compiled player's use
    them."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    del ir  # llvmlite is numba's; imported to fail early with a clear error when missing

    def _as_voidptr(typingctx: Any, addr: Any) -> Any:
        if not isinstance(addr, types.Integer):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.inttoptr(args[0], cgutils.voidptr_t)
        return types.voidptr(addr), codegen

    def _as_int(typingctx: Any, ptr: Any) -> Any:
        if not isinstance(ptr, types.RawPointer):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.ptrtoint(args[0], cgutils.intp_t)
        return types.intp(ptr), codegen

    return intrinsic(_as_voidptr), intrinsic(_as_int)


def _compile() -> Any:
    """Compile the callback once per process (numba; a second or two)."""
    global _compiled
    if _compiled is not None:
        return _compiled
    import numba
    from numba import types

    as_voidptr, _ = pointer_intrinsics()

    get_buffer, get_time, last_frame_time = _get_buffer, _get_time, _last_frame_time
    carray: Any = numba.carray

    @numba.cfunc(types.int32(types.uint32, types.voidptr), cache=False)
    def process(nframes: int, arg: Any) -> int:
        """JACK's process callback. Thread: JACK's real-time thread; no GIL, no allocation."""
        ctl = carray(arg, CTL_SIZE, dtype=np.int64)
        t0 = get_time()
        cap = ctl[CAPACITY]
        chans = ctl[CHANNELS]
        ring = carray(as_voidptr(ctl[RING_ADDR]), (chans, cap), dtype=np.float32)
        read = ctl[READ]
        avail = ctl[WRITE] - read
        n = np.int64(nframes)
        take = n if avail >= n else (avail if avail > 0 else 0)
        ctl[SEQ] += 1
        ctl[LAST_FRAME] = last_frame_time(as_voidptr(ctl[CLIENT]))
        ctl[READ_AT] = read
        ctl[SEQ] += 1
        for p in range(ctl[NPORTS]):
            out = carray(as_voidptr(get_buffer(as_voidptr(ctl[PORT0 + p]), nframes)),
                               n, dtype=np.float32)
            ch = p if p < chans else 0
            i = read % cap
            first = take if take <= cap - i else cap - i
            for k in range(first):
                out[k] = ring[ch, i + k]
            for k in range(take - first):
                out[first + k] = ring[ch, k]
            for k in range(take, n):
                out[k] = 0.0
        if take < n:
            ctl[UNDERRUNS] += 1
        ctl[READ] = read + take
        dur = carray(as_voidptr(ctl[DUR_ADDR]), DURATIONS, dtype=np.int64)
        dur[ctl[CALLS] & (DURATIONS - 1)] = get_time() - t0
        ctl[CALLS] += 1
        return 0

    _compiled = process
    return process


class RtTable:
    """The shared table (see the module docstring); its memory lives as long as this."""

    def __init__(self, channels: int, capacity: int) -> None:
        self.ctl = np.zeros(CTL_SIZE, np.int64)
        self.ring = np.zeros((channels, capacity), np.float32)
        self.durations = np.zeros(DURATIONS, np.int64)
        self.ctl[CAPACITY] = capacity
        self.ctl[CHANNELS] = channels
        self.ctl[RING_ADDR] = self.ring.ctypes.data
        self.ctl[DUR_ADDR] = self.durations.ctypes.data

    def set_ports(self, client_ptr: int, port_ptrs: Sequence[int]) -> None:
        """Publish the client and port pointers (control thread; ports before the count)."""
        if len(port_ptrs) > MAX_PORTS:
            raise ValueError(f"at most {MAX_PORTS} ports")
        self.ctl[NPORTS] = 0
        self.ctl[CLIENT] = client_ptr
        for i, ptr in enumerate(port_ptrs):
            self.ctl[PORT0 + i] = ptr
        self.ctl[NPORTS] = len(port_ptrs)

    def played_at(self) -> tuple[int, int] | None:
        """``(JACK frame, ring frame)`` of the latest cycle, or None before the first (any
        thread; retried around the callback's seqlock)."""
        ctl = self.ctl
        for _ in range(8):
            seq = int(ctl[SEQ])
            frame, read = int(ctl[LAST_FRAME]), int(ctl[READ_AT])
            if seq > 0 and seq % 2 == 0 and int(ctl[SEQ]) == seq:
                return frame, read
        return None

    @property
    def calls(self) -> int:
        return int(self.ctl[CALLS])

    @property
    def underruns(self) -> int:
        return int(self.ctl[UNDERRUNS])


def install(client: Any, table: RtTable) -> None:
    """Register the compiled callback on ``client`` (a JACK-Client ``Client``, not active
    yet) with ``table`` as its argument. Control thread."""
    from protocols.audio import jack_c

    process = _compile()
    cb = jack_c.ffi.cast("JackProcessCallback", process.address)
    arg = jack_c.ffi.cast("void *", table.ctl.ctypes.data)
    if jack_c.lib.jack_set_process_callback(jack_c._ptr(client, "jack_client_t *"), cb, arg):
        raise RuntimeError("jack_set_process_callback failed")


def raw_pointer(obj: Any) -> int:
    """The address of a JACK-Client object's C handle (client or port)."""
    import jack

    return int(jack._ffi.cast("uintptr_t", obj._ptr))


class RenderAhead:
    """Keeps ``table``'s ring filled ``ahead`` frames ahead of the callback by rendering
    ``render(buffers)`` in blocks of ``block`` frames; ``tap(buffers, position)`` (recording)
    sees each block after it is rendered. Thread: its own ("riff-render"); start/stop from
    the control thread.

    Adaptive look-ahead (``max_ahead`` > ``ahead``): a wake that finds the ring holding less
    than a quarter of the target (the thread was starved of the GIL for most of the
    look-ahead) doubles the target, up to ``max_ahead``; after ``relax_s`` seconds without
    such a wake the target halves again, down to ``ahead``. So the output runs ``ahead``
    frames behind the player while the daemon is calm, and further only while it is not.

    What starves it is measured, not guessed: every wake records how long it slept past its
    ``period / 2`` (:attr:`max_gap_s`, the ``gaps`` over ``gap_log_s`` with their clock
    time) and how full it found the ring (:attr:`min_level`).
    """

    def __init__(self, table: RtTable, render: Callable[[list[np.ndarray]], None],
                 ahead: int, block: int, sample_rate: int, max_ahead: int | None = None,
                 relax_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 gap_log_s: float = 0.02) -> None:
        max_ahead = ahead if max_ahead is None else max_ahead
        if max_ahead < ahead:
            raise ValueError("max_ahead must be at least ahead")
        if max_ahead + block > table.ring.shape[1]:
            raise ValueError("the ring must hold the look-ahead plus one block")
        self.table = table
        self.sample_rate = sample_rate
        self.render = render
        self.ahead = ahead
        self.max_ahead = max_ahead
        self.relax_s = relax_s
        self.block = block
        #: The look-ahead the thread fills to now (``ahead`` .. ``max_ahead``).
        self.target = ahead
        self.tap: Callable[[list[np.ndarray], int], None] | None = None
        self.position: Callable[[], int] | None = None
        self._clock = clock
        self._gap_log_s = gap_log_s
        #: Wakes of the thread; the longest time between two; the fewest frames a wake found
        #: in the ring; wakes that found under a quarter of the target; (clock, gap) of each
        #: gap over ``gap_log_s`` (the latest 256).
        self.wakes = 0
        self.max_gap_s = 0.0
        self.min_level = ahead
        self.late_wakes = 0
        self.gaps: list[tuple[float, float]] = []
        self._last_wake = -1.0
        self._last_late = -1.0
        chans = table.ring.shape[0]
        self._scratch = np.zeros((chans, block), np.float32)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="riff-render", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    #: SCHED_FIFO priority asked for the render thread: under JACK's (10 by default), above
    #: every ordinary thread, so it gets the CPU as soon as the GIL is handed to it.
    PRIORITY = 5

    def _raise_priority(self) -> None:
        """Make this (the render) thread real-time where allowed (Linux: pid 0 is the calling
        thread); otherwise it stays at normal priority, which is logged."""
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.PRIORITY))
        except (OSError, AttributeError) as exc:
            log.info("the render thread runs at normal priority (%s)", exc)

    def _wake(self) -> None:
        """Record this wake and adapt the target (render thread)."""
        ctl = self.table.ctl
        now = self._clock()
        level = int(ctl[WRITE] - ctl[READ])
        if self._last_wake >= 0:
            gap = now - self._last_wake
            self.max_gap_s = max(self.max_gap_s, gap)
            if gap > self._gap_log_s:
                self.gaps.append((now, gap))
                del self.gaps[:-256]
        self._last_wake = now
        self.wakes += 1
        self.min_level = min(self.min_level, level)
        if level * 4 < self.target:
            self.late_wakes += 1
            self._last_late = now
            self.target = min(self.max_ahead, self.target * 2)
        elif (self.target > self.ahead and self._last_late >= 0
              and now - self._last_late > self.relax_s):
            self.target = max(self.ahead, self.target // 2)
            self._last_late = now

    def fill(self) -> None:
        """Render blocks until the ring holds the target look-ahead (render thread; also
        called once on the control thread before activation)."""
        ctl, ring = self.table.ctl, self.table.ring
        cap = ring.shape[1]
        scratch = self._scratch
        bufs = list(scratch)
        while ctl[WRITE] - ctl[READ] + self.block <= self.target:
            self.render(bufs)
            if self.tap is not None and self.position is not None:
                self.tap(bufs, self.position())
            w = int(ctl[WRITE]) % cap
            first = min(self.block, cap - w)
            ring[:, w:w + first] = scratch[:, :first]
            if first < self.block:
                ring[:, :self.block - first] = scratch[:, first:]
            ctl[WRITE] += self.block  # publish after the frames

    def _run(self) -> None:
        period = self.block / self.sample_rate
        self._raise_priority()
        try:
            while not self._stop.is_set():
                self._wake()
                self.fill()
                time.sleep(period / 2)
        except BaseException as exc:  # reported by the owner (JackOutput.render_error)
            self.error = exc
            log.exception("the render thread failed; the output runs dry")
            raise
