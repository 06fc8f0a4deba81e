"""The OSC server over real UDP: every address, valid and invalid, with replies checked."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from engine.live.state import PARAMETERS, ParamSpec
from engine.model.seed_images import SeedImageLibrary
from protocols.control_target import library_id_check
from protocols.osc.server import OscConfig
from tests.control_surface_helpers import Served, served

#: The ids in the test's seed image library (seed images and masks share it).
SEED_IDS = ("vibes", "mask_soft")


def seed_library(tmp_path: Path) -> SeedImageLibrary:
    folder = tmp_path / "seeds"
    folder.mkdir(exist_ok=True)
    for name in SEED_IDS:
        Image.new("RGB", (8, 8), "white").save(folder / f"{name}.png")
    return SeedImageLibrary([folder])  # plus the built-in seeds (the default og_beat)


@pytest.fixture
def osc(tmp_path: Path) -> Iterator[Served]:
    yield from served(tmp_path, image_ids=library_id_check(seed_library(tmp_path)))


def _valid_values(spec: ParamSpec) -> list[Any]:
    if spec.kind == "str":
        return ["warm analog synth pads"]
    if spec.kind == "id":
        return ["vibes"] + ([""] if spec.allow_empty else [])
    if spec.kind == "bool":
        return [0, 1, 1.0, False, True]
    assert spec.lo is not None and spec.hi is not None
    mid = (spec.lo + spec.hi) / 2
    if spec.kind == "int":
        # OSC floats are float32: exact for integers below 2**24 only.
        exact = [float(int(mid))] if mid < 2**24 else []
        return [int(spec.lo), int(mid), *exact, int(spec.hi)]
    return [spec.lo, mid, int(spec.hi)]


def _invalid_args(spec: ParamSpec) -> list[tuple[Any, ...]]:
    bad: list[tuple[Any, ...]] = [(), ("a", "b") if spec.kind in ("str", "id") else (1, 1)]
    if spec.kind in ("str", "id"):
        bad += [(5,), (1.5,)]
        if spec.kind == "id":
            bad += [("../x",), ("/etc/passwd",)]
        if not spec.allow_empty:
            bad += [("",)]
    else:
        bad += [("0.5",), (b"blob",)]
        if spec.kind == "bool":
            bad += [(2,), (0.5,)]
        else:
            assert spec.lo is not None and spec.hi is not None
            bad += [(spec.hi + 1,), (spec.lo - 1,), (math.inf,), (math.nan,), (True,)]
            if spec.kind == "int":
                bad += [(spec.lo + 0.5,)]
    return bad


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_every_parameter_address_valid_and_invalid(osc: Served, name: str) -> None:
    spec = PARAMETERS[name]
    client = osc.client()
    for value in _valid_values(spec):
        client.send(spec.address, value)
        assert client.messages_until_pong() == []
        got = osc.lt.call(lambda: osc.engine.state.get(name))
        assert got == (value if spec.kind != "bool" else bool(value))
    for args in _invalid_args(spec):
        before = osc.lt.call(osc.engine.state.snapshot)
        errors_before = osc.lt.call(lambda: osc.server.counters.errors)
        client.send(spec.address, *args)
        replies = client.messages_until_pong()
        assert len(replies) == 1, (args, replies)
        address, (where, reason) = replies[0]
        assert address == "/riff/error" and where == spec.address and reason, (args, reason)
        assert osc.lt.call(osc.engine.state.snapshot) == before
        assert osc.lt.call(lambda: osc.server.counters.errors) == errors_before + 1


def test_ping_state_play_stop(osc: Served) -> None:
    client = osc.client()
    client.send("/riff/play")
    client.send("/riff/play")
    client.send("/riff/stop")
    assert client.messages_until_pong() == []
    assert (osc.engine.plays, osc.engine.stops) == (2, 1)
    client.send("/riff/tempo", 97.5)
    client.send("/riff/state")
    replies = dict(client.messages_until_pong())
    assert set(replies) == {spec.address for spec in PARAMETERS.values()}
    assert replies["/riff/tempo"] == [97.5]
    assert replies["/riff/alpha/auto"] == [1]
    assert replies["/riff/prompt"] == [PARAMETERS["prompt"].default]
    # A TouchOSC button on /riff/state or /riff/ping sends 1.0 (press) then 0.0 (release):
    # the press acts like the bare message, the release is ignored.
    client.send("/riff/state", 1.0)
    client.send("/riff/state", 0.0)
    replies = client.messages_until_pong()
    assert [r[0] for r in replies] == [spec.address for spec in PARAMETERS.values()]
    client.send("/riff/ping", 1.0)
    client.send("/riff/ping", 0.0)
    client.send("/riff/ping", 0)
    client.send("/riff/tempo", 999)  # a marker: its error ends the replies to the pings
    got = []
    while not got or got[-1] != "/riff/error":
        got += [m.address for m in client.recv()]
    assert got == ["/riff/pong", "/riff/error"]
    for address in ("/riff/state", "/riff/ping"):
        for args in [("go",), (1, 2)]:
            client.send(address, *args)
            assert [r[0] for r in client.messages_until_pong()] == ["/riff/error"], args
    # A button (TouchOSC) sends 1.0 on press and 0.0 on release: only the press acts.
    client.send("/riff/play", 1.0)
    client.send("/riff/play", 0.0)
    client.send("/riff/stop", 1)
    assert client.messages_until_pong() == []
    for args in [("go",), (1, 2)]:
        client.send("/riff/play", *args)
        client.send("/riff/stop", *args)
        assert [r[0] for r in client.messages_until_pong()] == ["/riff/error"] * 2
    assert (osc.engine.plays, osc.engine.stops) == (3, 2)


def test_unknown_address_and_patterns(osc: Served) -> None:
    client = osc.client()
    client.send("/riff/nope", 1)
    client.send("riff/alpha", 0.5)
    assert [r[0] for r in client.messages_until_pong()] == ["/riff/error", "/riff/error"]
    client.send("/riff/seed{,/b}", 77)
    client.send("/riff/den?ising", 0.25)
    assert client.messages_until_pong() == []
    state = osc.lt.call(osc.engine.state.snapshot)
    assert (state["seed"], state["seed_b"], state["denoising"]) == (77, 77, 0.25)
    client.send("/riff/zz*", 1)
    assert client.messages_until_pong()[0] == ("/riff/error", ["/riff/zz*", "unknown address"])


def test_malformed_datagrams_answered(osc: Served) -> None:
    client = osc.client()
    before = osc.lt.call(osc.engine.state.snapshot)
    for junk in (b"", b"\x00\x00\x00\x00", b"/riff/alpha\x00", b"/riff/alpha\x00,f\x00\x00\x01",
                 b"#bundle\x00" + b"\xff" * 7, b"\xff\xfe\xfd\xfc"):
        client.send_raw(junk)
    replies = client.messages_until_pong()
    assert replies and all(r[0] == "/riff/error" for r in replies)
    assert osc.lt.call(osc.engine.state.snapshot) == before


def test_recording_is_refused_by_an_engine_that_cannot_record(osc: Served) -> None:
    # The daemon's engine records (tests/test_daemon_osc.py); this stand-in has no takes.
    client = osc.client()
    client.send("/riff/record/start", "take1")
    client.send("/riff/record/stop")
    client.send("/riff/record/start", 5)
    replies = client.messages_until_pong()
    assert [r[1] for r in replies] == [
        ["/riff/record/start", "this engine cannot record"],
        ["/riff/record/stop", "this engine cannot record"],
        ["/riff/record/start", "/riff/record/start takes a string, got int"]]


def test_capture_is_refused_by_an_engine_that_cannot_capture(osc: Served) -> None:
    # The daemon's engine with --input captures (tests/test_capture_jack.py).
    client = osc.client()
    client.send("/riff/capture", 2)
    client.send("/riff/capture", "two")
    client.send("/riff/capture", 2, 3)
    client.send("/riff/capture")
    replies = client.messages_until_pong()
    assert [r[1] for r in replies] == [
        ["/riff/capture", "this engine cannot capture audio input"],
        ["/riff/capture", "/riff/capture takes a number of bars, got str"],
        ["/riff/capture", "/riff/capture: the name is a string, got int"],
        ["/riff/capture", "/riff/capture takes 1 or 2 argument(s), got 0"]]


def test_presets_save_and_load(osc: Served, tmp_path: Path) -> None:
    client = osc.client()
    client.send("/riff/prompt", "dub techno chords")
    client.send("/riff/guidance", 9)
    client.send("/riff/preset/save", "mine")
    assert client.messages_until_pong() == []
    assert (tmp_path / "mine.toml").is_file()
    client.send("/riff/prompt", "polka")
    client.send("/riff/preset/load", "mine")
    assert client.messages_until_pong() == []
    state = osc.lt.call(osc.engine.state.snapshot)
    assert (state["prompt"], state["guidance"]) == ("dub techno chords", 9.0)
    client.send("/riff/preset/load", "missing")
    assert [r[0] for r in client.messages_until_pong()] == ["/riff/error"]
    for args in [("../mine",), ("/tmp/x",), (3,), ()]:
        client.send("/riff/preset/load", *args)
        client.send("/riff/preset/save", *args)
        replies = client.messages_until_pong()
        assert [r[0] for r in replies] == ["/riff/error"] * 2, args
    assert not (tmp_path.parent / "mine.toml").exists()


def test_saving_over_a_user_preset_needs_the_overwrite_flag(osc: Served, tmp_path: Path) -> None:
    client = osc.client()
    client.send("/riff/prompt", "first take")
    client.send("/riff/preset/save", "keep")
    assert client.messages_until_pong() == []
    client.send("/riff/prompt", "second thoughts")
    client.send("/riff/preset/save", "keep")
    replies = client.messages_until_pong()
    assert [(r[0], r[1][0]) for r in replies] == [("/riff/error", "/riff/preset/save")]
    assert "/riff/preset/save keep 1" in replies[0][1][1]
    assert "first take" in (tmp_path / "keep.toml").read_text()  # nothing lost
    for bad in (2, "yes", 0.5):
        client.send("/riff/preset/save", "keep", bad)
        assert [r[0] for r in client.messages_until_pong()] == ["/riff/error"], bad
    client.send("/riff/preset/save", "keep", 1)
    assert client.messages_until_pong() == []
    assert "second thoughts" in (tmp_path / "keep.toml").read_text()


def test_broken_preset_changes_nothing(osc: Served, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[parameters]\nprompt = "x"\nsteps = 999\n')
    client = osc.client()
    before = osc.lt.call(osc.engine.state.snapshot)
    client.send("/riff/preset/load", "bad")
    (reply,) = client.messages_until_pong()
    assert reply[0] == "/riff/error" and "steps" in reply[1][1]
    assert osc.lt.call(osc.engine.state.snapshot) == before


def test_midi_learn_without_midi_is_an_error(osc: Served) -> None:
    client = osc.client()
    client.send("/riff/midi/learn", "/riff/alpha")
    client.send("/riff/midi/learn", "/riff/prompt")
    client.send("/riff/midi/learn", "/riff/nothing")
    reasons = [r[1][1] for r in client.messages_until_pong()]
    assert reasons[0] == "MIDI input is not enabled"
    assert "text" in reasons[1] and "not a parameter" in reasons[2]


def test_subscribe_feedback_and_status(osc: Served) -> None:
    ctl = osc.client()
    listener = osc.client()
    ctl.send("/riff/subscribe", listener.port)
    assert ctl.messages_until_pong() == []
    initial = dict(listener.messages_until_pong())
    assert initial["/riff/alpha"] == [0.0] and initial["/riff/status/bar"] == [0]
    osc.lt.call(lambda: osc.engine.status_values.update(bar=5, clip="c7"))
    for i in range(50):
        ctl.send("/riff/alpha", i / 100)
    seen: dict[str, list[Any]] = {}
    while (abs(seen.get("/riff/alpha", [0])[0] - 0.49) > 1e-6
           or "/riff/status/clip" not in seen):
        for m in listener.recv():
            seen[m.address] = list(m.params)
    assert seen["/riff/status/bar"] == [5] and seen["/riff/status/clip"] == ["c7"]
    ctl.send("/riff/unsubscribe", listener.port)
    ctl.send("/riff/unsubscribe", listener.port)
    assert [r[0] for r in ctl.messages_until_pong()] == ["/riff/error"]
    for args in [(70000,), (-1,), ("x",), (1, 2), (1.5,)]:
        ctl.send("/riff/subscribe", *args)
        assert ctl.messages_until_pong()[0][0] == "/riff/error", args
    # A button's release (0) is ignored; its press (1) subscribes the sender's own port.
    ctl.send("/riff/subscribe", 0)
    ctl.send("/riff/unsubscribe", 0.0)
    assert ctl.messages_until_pong() == []
    assert osc.lt.call(lambda: set(osc.server.feedback.subscribers)) == set()  # type: ignore
    ctl.send("/riff/subscribe", 1.0)
    initial = dict(ctl.messages_until_pong())
    assert initial["/riff/alpha"] == [0.49] or abs(initial["/riff/alpha"][0] - 0.49) < 1e-6
    ctl.send("/riff/unsubscribe", 1)
    ctl.send("/riff/unsubscribe", True)
    assert [r[0] for r in ctl.messages_until_pong()] == ["/riff/error"]


def test_subscribe_to_sender_port(osc: Served) -> None:
    client = osc.client()
    client.send("/riff/subscribe")
    replies = dict(client.messages_until_pong())
    assert "/riff/tempo" in replies
    client.send("/riff/bars", 4)
    seen = dict(client.messages_until_pong())
    # The feedback for bars may arrive before or after the pong; wait for it either way.
    while seen.get("/riff/bars") != [4]:
        seen.update((m.address, list(m.params)) for m in client.recv())
    client.send("/riff/unsubscribe")
    assert client.messages_until_pong() == []


def _bundle(timetag: float, *messages: tuple[str, Any]) -> bytes:
    builder = OscBundleBuilder(timetag)
    for address, value in messages:
        msg = OscMessageBuilder(address)
        msg.add_arg(value)
        builder.add_content(msg.build())  # type: ignore[arg-type]
    return builder.build().dgram


def test_bundles_immediate_and_scheduled(osc: Served) -> None:
    import time

    client = osc.client()
    client.send_raw(_bundle(IMMEDIATELY, ("/riff/steps", 20), ("/riff/seed", 5)))
    assert client.messages_until_pong() == []
    state = osc.lt.call(osc.engine.state.snapshot)
    assert (state["steps"], state["seed"]) == (20, 5)
    # A bundle timetagged 0.3 s ahead is not applied before its time but the server keeps
    # answering meanwhile (it is scheduled, not slept on).
    client.send_raw(_bundle(time.time() + 0.3, ("/riff/steps", 33)))
    assert client.messages_until_pong() == []
    deadline = time.monotonic() + 10
    while osc.lt.call(lambda: osc.engine.state.get("steps")) != 33:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.send_raw(_bundle(time.time() + 10 * 86400, ("/riff/steps", 44)))
    (reply,) = client.messages_until_pong()
    assert reply[0] == "/riff/error" and "ahead" in reply[1][1]


def test_counters_add_up(osc: Served) -> None:
    client = osc.client()
    client.send("/riff/alpha", 0.1)
    client.send("/riff/alpha", 7)
    client.send_raw(b"junk")
    client.messages_until_pong()
    c = osc.lt.call(osc.server.counters.as_dict)
    # alpha 0.1 and the ping applied; alpha 7 and the junk refused.
    assert c == {"received": 4, "applied": 2, "errors": 2, "dropped": 0, "denied": 0}


def test_int64_seed_round_trip(osc: Served) -> None:
    client = osc.client()
    client.send("/riff/seed", 2**32 - 1)
    client.send("/riff/state")
    replies = dict(client.messages_until_pong())
    assert replies["/riff/seed"] == [2**32 - 1]


def test_port_in_use_is_an_error(osc: Served) -> None:
    with pytest.raises(OSError):
        served_again = served(Path("."), OscConfig(port=osc.addr[1]))
        next(served_again)


def test_big_rcvbuf(osc: Served) -> None:
    assert osc.server.rcvbuf_bytes >= 4 * 1024 * 1024 or struct.calcsize("P") == 4
