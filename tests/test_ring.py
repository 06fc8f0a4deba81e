"""The single-producer single-consumer ring shared by the recorder and the JACK MIDI ports."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.live.ring import TAIL, SharedSpscRing, SpscRing

RINGS = pytest.mark.parametrize("kind", [SpscRing, SharedSpscRing])


@RINGS
def test_rows_come_out_in_order_across_the_wrap(kind: type[SpscRing]) -> None:
    ring = kind(8, (2,), np.float32)
    out: list[np.ndarray] = []
    value = 0
    for n in (3, 5, 2, 7, 1, 8):
        block = np.arange(value, value + n, dtype=np.float32).repeat(2).reshape(n, 2)
        value += n
        assert ring.write(block)
        for start, stop in ring.regions():
            out.append(ring.buffer[start:stop].copy())
            ring.release(stop - start)
    got = np.concatenate(out)
    np.testing.assert_array_equal(got[:, 0], np.arange(value, dtype=np.float32))
    np.testing.assert_array_equal(got[:, 0], got[:, 1])
    assert ring.dropped_rows == 0 and ring.backlog == 0


@RINGS
def test_a_write_that_does_not_fit_is_dropped_whole_and_counted(kind: type[SpscRing]) -> None:
    ring = kind(4, (1,))
    assert ring.write(np.ones((3, 1), np.float32))
    assert not ring.write(np.full((2, 1), 7.0, np.float32))
    assert (ring.dropped_rows, ring.dropped_writes, ring.backlog) == (2, 1, 3)
    assert ring.write(np.full((1, 1), 5.0, np.float32))
    assert ring.free() == 0
    assert ring.reserve() == -1 and ring.dropped_rows == 3
    spans = ring.regions()
    assert [ring.buffer[a:b, 0].tolist() for a, b in spans] == [[1.0, 1.0, 1.0, 5.0]]


@RINGS
def test_columns_fill_rows_and_a_missing_channel_repeats_the_first(kind: type[SpscRing]) -> None:
    ring = kind(5, (2,))
    left = np.arange(4, dtype=np.float32)
    assert ring.write_columns([left, -left])
    assert not ring.write_columns([left[:3]])
    rows = np.concatenate([ring.buffer[a:b] for a, b in ring.regions()])
    np.testing.assert_array_equal(rows[:4, 1], -left)
    assert ring.dropped_rows == 3  # the mono block did not fit after the first four rows
    ring.release(4)
    assert ring.write_columns([left[:3]])
    rows = np.concatenate([ring.buffer[a:b] for a, b in ring.regions()])
    np.testing.assert_array_equal(rows, np.stack([left[:3], left[:3]], axis=1))


@RINGS
def test_records_are_reserved_filled_and_committed_in_place(kind: type[SpscRing]) -> None:
    event = np.dtype([("data", np.uint8, (3,)), ("size", np.uint8), ("frame", np.int64)])
    ring = kind(2, dtype=event)
    for frame, msg in ((10, b"\x90\x3c\x40"), (11, b"\xf8")):
        slot = ring.reserve()
        rec = ring.buffer[slot]
        rec["data"][:len(msg)] = tuple(msg)
        rec["size"] = len(msg)
        rec["frame"] = frame
        ring.commit()
    got = []
    while (slot := ring.peek()) >= 0:
        rec = ring.buffer[slot]
        got.append((int(rec["frame"]), rec["data"][:rec["size"]].tobytes()))
        ring.release()
    assert got == [(10, b"\x90\x3c\x40"), (11, b"\xf8")]
    with pytest.raises(ValueError):
        ring.release()


def test_two_threads_pass_a_million_rows_without_loss_or_reordering() -> None:
    ring = SpscRing(1000, (), np.int64)
    total = 1_000_000
    received = np.empty(total, np.int64)

    def produce() -> None:
        sent = 0
        while sent < total:
            n = min(337, total - sent)
            if ring.write(np.arange(sent, sent + n, dtype=np.int64)):
                sent += n

    producer = threading.Thread(target=produce)
    producer.start()
    got = 0
    while got < total:
        for start, stop in ring.regions():
            received[got:got + stop - start] = ring.buffer[start:stop]
            got += stop - start
            ring.release(stop - start)
    producer.join()
    np.testing.assert_array_equal(received, np.arange(total))


@pytest.mark.parametrize("capacity", [0, -1, 2.5, True])
def test_a_ring_needs_a_positive_integer_capacity(capacity: object) -> None:
    with pytest.raises(ValueError):
        SpscRing(capacity)  # type: ignore[arg-type]


def test_the_shared_rings_counters_live_in_its_array() -> None:
    """What compiled code reads and writes at ``counters``' address is the ring's state."""
    ring = SharedSpscRing(2, (1,))
    assert ring.write(np.ones((2, 1), np.float32))
    assert not ring.write(np.ones((1, 1), np.float32))
    assert list(ring.counters) == [2, 0, 1, 1]
    ring.counters[TAIL] = 1  # as the other side would, from its address
    assert ring.readable() == 1 and ring.free() == 1
