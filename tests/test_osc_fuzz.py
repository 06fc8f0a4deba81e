"""OSC robustness: fuzzed messages and raw datagrams, a 10 000 message burst, coalescing."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.live.state import ADDRESSES, PARAMETERS, EngineState
from protocols.osc.feedback import Coalescer
from protocols.osc.server import OscConfig
from tests.control_surface_helpers import Served, served

ADDRESS_LIST = [*sorted(ADDRESSES),
    "/riff/play", "/riff/stop", "/riff/state", "/riff/ping", "/riff/preset/load",
    "/riff/preset/save", "/riff/midi/learn", "/riff/subscribe", "/riff/unsubscribe",
    "/riff/record/start", "/riff/record/stop", "/riff/x", "/riff/*", "/", "riff"]

osc_arg = st.one_of(
    st.integers(-(2**31), 2**31 - 1), st.integers(2**31, 2**40),
    st.floats(width=32), st.text(max_size=40).filter(lambda s: "\x00" not in s),
    st.booleans(), st.binary(min_size=1, max_size=16))


@pytest.fixture(scope="module")
def osc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served(tmp_path_factory.mktemp("presets"))


def _state_is_valid(state: EngineState) -> None:
    # Every stored value passes its own validation again.
    for name, value in state.items():
        assert PARAMETERS[name].coerce(value) == value


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(address=st.sampled_from(ADDRESS_LIST), args=st.lists(osc_arg, max_size=3))
def test_fuzzed_messages_keep_state_valid(osc: Served, address: str, args: list[Any]) -> None:
    client = osc.client()
    try:
        client.send(address, *args)
        client.messages_until_pong()  # the server still answers
    finally:
        client.close()
        osc.clients.remove(client)
    osc.lt.call(lambda: _state_is_valid(osc.engine.state))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda a, b: a + b, st.sampled_from([b"/riff/alpha\x00", b"#bundle\x00",
                                                    b"/riff/prompt\x00\x00\x00\x00,s\x00\x00"]),
              st.binary(max_size=64))))
def test_fuzzed_datagrams_keep_server_up(osc: Served, data: bytes) -> None:
    client = osc.client()
    try:
        client.send_raw(data)
        client.messages_until_pong()
    finally:
        client.close()
        osc.clients.remove(client)
    osc.lt.call(lambda: _state_is_valid(osc.engine.state))


def test_burst_of_10000_none_lost(tmp_path: Path) -> None:
    n = 10_000
    gen = served(tmp_path, OscConfig(port=0))
    s = next(gen)
    try:
        client = s.client()

        def blast() -> None:
            for i in range(n):
                client.send("/riff/seed", i)

        # Send from a thread as fast as the socket takes them; the receive buffer holds them.
        sender = threading.Thread(target=blast)
        sender.start()
        sender.join()
        client.messages_until_pong()
        counters = s.lt.call(s.server.counters.as_dict)
        assert counters["received"] == n + 1
        assert counters["applied"] == n + 1 and counters["errors"] == 0
        assert s.lt.call(lambda: s.engine.state.get("seed")) == n - 1
    finally:
        gen.close()


class FakeTimers:
    """A manual clock and call_later for the coalescer."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any]] = []

    def call_later(self, delay: float, fn: Any) -> Any:
        entry = (self.now + delay, fn)
        self.timers.append(entry)

        class Handle:
            def cancel(inner) -> None:
                self.timers.remove(entry)
        return Handle()

    def advance(self, dt: float) -> None:
        self.now += dt
        due = [t for t in self.timers if t[0] <= self.now]
        for t in due:
            self.timers.remove(t)
            t[1]()


def test_coalescer_rate_and_latest_wins() -> None:
    timers = FakeTimers()
    sent: list[tuple[float, str, tuple[Any, ...]]] = []
    c = Coalescer(1 / 30, lambda k, a: sent.append((timers.now, k, a)), lambda: timers.now,
                  timers.call_later)
    # 1000 changes over one second on one address, one more on another.
    for i in range(1000):
        c.offer("/riff/alpha", (i,))
        if i == 500:
            c.offer("/riff/guidance", (7,))
        timers.advance(0.001)
    timers.advance(1.0)
    alpha = [s for s in sent if s[1] == "/riff/alpha"]
    assert alpha[-1][2] == (999,)
    assert 25 <= len(alpha) <= 32
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(alpha)]
    assert min(gaps) >= 1 / 30 - 1e-9
    assert [s[2] for s in sent if s[1] == "/riff/guidance"] == [(7,)]
    assert c.superseded == 1000 - len(alpha)


def test_coalescer_quiet_key_sends_at_once() -> None:
    timers = FakeTimers()
    sent: list[Any] = []
    c = Coalescer(0.1, lambda k, a: sent.append(a), lambda: timers.now, timers.call_later)
    c.offer("k", (1,))
    assert sent == [(1,)]
    timers.advance(0.5)
    c.offer("k", (2,))
    assert sent == [(1,), (2,)]
    c.offer("k", (3,))
    c.close()
    timers.advance(1)
    assert sent == [(1,), (2,)]
