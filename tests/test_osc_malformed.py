"""Malformed OSC at the server and at the running daemon: every packet refused and counted,
nothing applied (bench/bench_osc_fuzz.py is the long version)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_osc_fuzz import fuzz
from protocols.osc.server import build_message
from tests.control_surface_helpers import Served, served


@pytest.fixture
def osc(tmp_path: Path) -> Iterator[Served]:
    yield from served(tmp_path)


def _bundle(*elements: tuple[int, bytes]) -> bytes:
    out = b"#bundle\0" + struct.pack(">Q", 1)
    for size, data in elements:
        out += struct.pack(">i", size) + data
    return out


def test_bundle_with_a_wrong_element_size_is_refused_whole(osc: Served) -> None:
    """python-osc slices elements by their declared size unchecked: a size past the end (or
    not a multiple of 4, or negative) must not let the message inside through."""
    client = osc.client()
    inner = build_message("/riff/seed", (7,))
    ok = build_message("/riff/seed/b", (9,))
    for bad in (_bundle((len(inner) + 40, inner)), _bundle((len(inner) - 2, inner)),
                _bundle((len(ok), ok), (-4, inner)),
                _bundle((len(inner) + 20, _bundle((len(inner) + 4, inner))))):
        client.send_raw(bad)
        replies = client.messages_until_pong()
        assert [r[0] for r in replies] == ["/riff/error"] and replies[0][1][0] == ""
    state = osc.lt.call(osc.engine.state.snapshot)
    assert (state["seed"], state["seed_b"]) != (7, 9) and state["seed"] != 7
    client.send_raw(_bundle((len(inner), inner), (len(ok), ok)))  # a well-formed one applies
    assert client.messages_until_pong() == []
    state = osc.lt.call(osc.engine.state.snapshot)
    assert (state["seed"], state["seed_b"]) == (7, 9)


@pytest.mark.slow
def test_daemon_survives_fuzz(tmp_path: Path) -> None:
    r = fuzz(3000, tmp_path, seed=7)
    assert r["exit_status"] == 0
    assert r["every_packet_counted"], (r["server_errors"], r["packets"])
    assert r["state_unchanged"], r["state_changes"]
    assert r["still_playing"]
    assert set(r["kinds"]) >= {"bytes", "truncated", "bad_bundle", "range", "wrong_type"}
