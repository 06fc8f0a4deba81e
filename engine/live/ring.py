"""The one single-producer, single-consumer ring that crosses the real-time boundary.

Why one: the recorder (audio thread -> writer thread) and the JACK MIDI ports (JACK thread <->
asyncio loop) all need the same thing, a preallocated buffer that one thread fills and another
drains with no lock, no allocation of buffers and no waiting. The rules are kept here once:

- Storage is one numpy array of ``capacity`` rows (any row shape and dtype, structured dtypes
  included), allocated at construction.
- Two counters, ``head`` (rows ever written) and ``tail`` (rows ever read), only grow; the
  producer alone writes ``head``, the consumer alone writes ``tail``, each after the data it
  publishes or frees (a single store of a Python int, atomic under the GIL and never torn).
- A write that does not fit whole is dropped and counted, never partly written: the producer
  never waits for the consumer.

Threads: the ``write``/``reserve``/``commit`` methods belong to the producer thread, the
``readable``/``regions``/``release`` methods to the consumer thread; the counters may be read
from any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class SpscRing:
    """A lock-free ring of ``capacity`` rows of ``row_shape`` and ``dtype``."""

    def __init__(self, capacity: int, row_shape: tuple[int, ...] = (),
                 dtype: Any = np.float32) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ring capacity must be a positive integer, not {capacity!r}")
        self.capacity = capacity
        self.buffer = np.zeros((capacity, *row_shape), dtype=dtype)
        self.head = 0  # rows ever written (producer only)
        self.tail = 0  # rows ever read (consumer only)
        self.dropped_rows = 0  # producer only
        self.dropped_writes = 0  # producer only

    # ---- any thread -------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Rows written and not yet released."""
        return self.head - self.tail

    # ---- producer thread --------------------------------------------------------------------

    def free(self) -> int:
        """Rows that fit now."""
        return self.capacity - (self.head - self.tail)

    def _drop(self, rows: int) -> bool:
        self.dropped_rows += rows
        self.dropped_writes += 1
        return False

    def write(self, rows: np.ndarray) -> bool:
        """Copy ``rows`` (shape ``(n, *row_shape)``) in whole; False (counted) if they do not
        fit. At most two slice copies, no allocation."""
        n = rows.shape[0]
        head = self.head
        if n > self.capacity - (head - self.tail):
            return self._drop(n)
        start = head % self.capacity
        first = min(n, self.capacity - start)
        self.buffer[start:start + first] = rows[:first]
        if first < n:
            self.buffer[:n - first] = rows[first:]
        self.head = head + n
        return True

    def write_columns(self, columns: Sequence[np.ndarray], offset: int = 0,
                      count: int | None = None) -> bool:
        """Like :meth:`write` for rows of channels given one array per channel (JACK's port
        buffers), so the caller need not interleave them. A missing channel repeats the
        first (mono to stereo). ``offset``/``count``: only those ``count`` frames from
        ``offset`` on (part of a period, without slicing the buffers first)."""
        n = columns[0].shape[0] - offset if count is None else count
        head = self.head
        if n > self.capacity - (head - self.tail):
            return self._drop(n)
        start = head % self.capacity
        first = min(n, self.capacity - start)
        buf = self.buffer
        for ch in range(buf.shape[1]):
            src = columns[ch if ch < len(columns) else 0]
            buf[start:start + first, ch] = src[offset:offset + first]
            if first < n:
                buf[:n - first, ch] = src[offset + first:offset + n]
        self.head = head + n
        return True

    def reserve(self) -> int:
        """Index of the next free row, to fill in place and publish with :meth:`commit`; -1
        (counted as dropped) when the ring is full."""
        if self.head - self.tail >= self.capacity:
            self._drop(1)
            return -1
        return self.head % self.capacity

    def commit(self, rows: int = 1) -> None:
        """Publish ``rows`` rows filled in place after :meth:`reserve`."""
        self.head += rows

    # ---- consumer thread --------------------------------------------------------------------

    def readable(self) -> int:
        """Rows published and not yet released (a snapshot; more may arrive)."""
        return self.head - self.tail

    def regions(self, limit: int | None = None) -> list[tuple[int, int]]:
        """``[start, stop)`` index ranges of up to ``limit`` readable rows, oldest first: one
        range, or two where the data wraps. Release them with :meth:`release` when done."""
        count = self.head - self.tail
        if limit is not None:
            count = min(count, limit)
        if count <= 0:
            return []
        start = self.tail % self.capacity
        first = min(count, self.capacity - start)
        spans = [(start, start + first)]
        if first < count:
            spans.append((0, count - first))
        return spans

    def peek(self) -> int:
        """Index of the oldest readable row, or -1 when there is none."""
        return self.tail % self.capacity if self.head != self.tail else -1

    def release(self, rows: int = 1) -> None:
        """Free ``rows`` oldest rows for the producer."""
        if rows > self.head - self.tail:
            raise ValueError(f"release of {rows} rows with only {self.head - self.tail} readable")
        self.tail += rows


#: Indices of :class:`SharedSpscRing`'s counters array.
HEAD, TAIL, DROPPED_ROWS, DROPPED_WRITES = range(4)


class SharedSpscRing(SpscRing):
    """:class:`SpscRing` whose counters live in a preallocated int64 array (``counters``:
    ``HEAD``, ``TAIL``, ``DROPPED_ROWS``, ``DROPPED_WRITES``) instead of Python ints, so that
    compiled code without the GIL (JACK's process callback, :mod:`protocols.audio.jack_table`)
    can be either side: it reads and writes the counters and ``buffer`` at their addresses.

    Same contract: each counter has one writer, who stores it after the data it publishes or
    frees (an aligned 8-byte store, atomic on the platforms JACK runs on). The Python methods
    are :class:`SpscRing`'s, unchanged."""

    def __init__(self, capacity: int, row_shape: tuple[int, ...] = (),
                 dtype: Any = np.float32) -> None:
        self.counters = np.zeros(4, np.int64)
        super().__init__(capacity, row_shape, dtype)

    @property
    def head(self) -> int:
        return int(self.counters[HEAD])

    @head.setter
    def head(self, value: int) -> None:
        self.counters[HEAD] = value

    @property
    def tail(self) -> int:
        return int(self.counters[TAIL])

    @tail.setter
    def tail(self, value: int) -> None:
        self.counters[TAIL] = value

    @property
    def dropped_rows(self) -> int:
        return int(self.counters[DROPPED_ROWS])

    @dropped_rows.setter
    def dropped_rows(self, value: int) -> None:
        self.counters[DROPPED_ROWS] = value

    @property
    def dropped_writes(self) -> int:
        return int(self.counters[DROPPED_WRITES])

    @dropped_writes.setter
    def dropped_writes(self, value: int) -> None:
        self.counters[DROPPED_WRITES] = value
