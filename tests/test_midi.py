"""MIDI: maps, routing, learn, clock; JACK MIDI and rtmidi (JACK API) end to end."""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRequest
from engine.live.state import PARAMETERS
from engine.presets import BUILTIN_FOLDER, Preset, PresetLibrary
from protocols.control_target import Commands
from protocols.midi.clock import ClockObservation, MidiClock, StateFollower
from protocols.midi.map import CcBinding, MidiMap, shape
from protocols.midi.router import MidiRouter
from tests.control_surface_helpers import EngineDouble, LoopThread

MAP_TEXT = """
description = "test map"

[[cc]]
cc = 1
address = "/riff/alpha"

[[cc]]
cc = 2
lsb = 34
address = "/riff/guidance"
min = 0.0
max = 20.0

[[cc]]
cc = 3
address = "/riff/steps"
min = 10
max = 20
curve = "exp"

[[cc]]
cc = 4
address = "/riff/alpha/auto"
min = 0
max = 1

[[cc]]
cc = 5
address = "/riff/denoising"
channel = 2

[[note]]
note = 60
last = 63
action = "prompt"
list = "genres"

[[note]]
note = 36
action = "seed_image"
value = "vibes"

[[note]]
note = 37
action = "preset"
value = "mine"

[[note]]
note = 38
action = "play"

[[button]]
cc = 41
action = "stop"

[program]
presets = ["mine", "missing"]
"""


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def send_until(sender: JackSender, messages: list[bytes], cond: Callable[[], bool],
               timeout: float = 30.0) -> None:
    """Send ``messages`` again until ``cond`` holds, like a performer moving a knob again.

    The JACK sender and receiver here share one Python process (one GIL); when it misses a
    JACK period, that period's events are lost by JACK itself. The tests also check that the
    engine's ring was drained completely, so resending cannot hide a stuck event.
    """
    deadline = time.monotonic() + timeout
    while True:
        sender.queue.extend(messages)
        try:
            wait_for(cond, timeout=1.0)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


class Rig:
    """A router over a real EngineState, with a user preset folder holding 'mine'."""

    def __init__(self, tmp_path: Path, map_text: str = MAP_TEXT, clock: bool = True) -> None:
        self.engine = EngineDouble()
        self.library = PresetLibrary([tmp_path])
        self.library.save("mine", Preset({"prompt": "from preset", "tempo": 101.0}))
        self.commands = Commands(self.engine, self.library)
        map_path = tmp_path / "maps" / "test.toml"
        map_path.parent.mkdir(exist_ok=True)
        map_path.write_text(map_text)
        self.map_path = map_path
        self.observations: list[ClockObservation] = []
        follower = StateFollower(lambda bpm: self.commands.set_address("/riff/tempo", bpm),
                                 self.commands.play, self.commands.stop)

        class Both:
            def observe(inner, o: ClockObservation) -> None:
                self.observations.append(o)
                follower.observe(o)

        self.router = MidiRouter(self.commands, MidiMap.load(map_path),
                                 clock=MidiClock(Both()) if clock else None)
        self.commands.learn = self.router.start_learn

    def get(self, name: str) -> Any:
        return self.engine.state.get(name)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_shipped_maps_presets_and_prompt_sets_are_valid() -> None:
    lib = PresetLibrary()
    assert {"generic8", "nanokontrol2", "mpkmini", "touchosc"} <= set(lib.map_ids())
    for ident in lib.map_ids():
        midi_map = MidiMap.load(lib.map_path(ident))
        assert midi_map.cc, ident
        for b in (*midi_map.notes, *midi_map.buttons):
            if b.action == "prompt":
                lib.prompt_set(b.list)
        for name in midi_map.programs:
            lib.load(name)
    for ident in lib.ids():
        assert lib.load(ident).parameters
    assert lib.folders[-1] == BUILTIN_FOLDER and len(lib.folders) == 2  # user's, shipped


def test_cc_scaling_curves_and_14bit(rig: Rig) -> None:
    rig.router.handle(bytes([0xB0, 1, 127]), 0)
    assert rig.get("alpha") == 1.0
    rig.router.handle(bytes([0xB0, 1, 0]), 0)
    assert rig.get("alpha") == 0.0
    # 14-bit: MSB 64 then LSB 0 -> 8192/16383 of 0..20.
    rig.router.handle(bytes([0xB0, 2, 64]), 0)
    rig.router.handle(bytes([0xB0, 34, 0]), 0)
    assert rig.get("guidance") == pytest.approx(20 * 8192 / 16383)
    rig.router.handle(bytes([0xB0, 34, 127]), 0)
    assert rig.get("guidance") == pytest.approx(20 * (8192 + 127) / 16383)
    # exp curve on an int parameter: half way is well below the middle.
    rig.router.handle(bytes([0xB0, 3, 64]), 0)
    assert rig.get("steps") == round(10 + 10 * shape(64 / 127, "exp")) < 15
    rig.router.handle(bytes([0xB0, 4, 10]), 0)
    assert rig.get("alpha_auto") is False
    rig.router.handle(bytes([0xB0, 4, 100]), 0)
    assert rig.get("alpha_auto") is True
    # channel filter: CC 5 only on channel 3 (index 2)
    before = rig.get("denoising")
    rig.router.handle(bytes([0xB0, 5, 0]), 0)
    assert rig.get("denoising") == before
    rig.router.handle(bytes([0xB2, 5, 0]), 0)
    assert rig.get("denoising") == 0.0
    assert shape(0.25, "log") > 0.25 > shape(0.25, "exp")


def test_notes_buttons_and_program_change(rig: Rig) -> None:
    genres = rig.library.prompt_set("genres")
    rig.router.handle(bytes([0x90, 62, 100]), 0)
    assert rig.get("prompt") == genres.prompts[2]
    rig.router.handle(bytes([0x90, 61, 0]), 0)  # velocity 0 = note off: nothing
    assert rig.get("prompt") == genres.prompts[2]
    rig.router.handle(bytes([0x90, 36, 1]), 0)
    assert rig.get("seed_image") == "vibes"
    rig.router.handle(bytes([0x90, 38, 1]), 0)
    assert rig.engine.plays == 1
    rig.router.handle(bytes([0xB0, 41, 127]), 0)
    rig.router.handle(bytes([0xB0, 41, 127]), 0)  # held: one press
    rig.router.handle(bytes([0xB0, 41, 0]), 0)
    rig.router.handle(bytes([0xB0, 41, 127]), 0)
    assert rig.engine.stops == 2
    rig.router.handle(bytes([0x90, 37, 1]), 0)
    assert (rig.get("prompt"), rig.get("tempo")) == ("from preset", 101.0)
    rig.engine.state.set("tempo", 120)
    rig.router.handle(bytes([0xC0, 0]), 0)
    assert rig.get("tempo") == 101.0
    errors = rig.router.counters.errors
    before = rig.engine.state.snapshot()
    rig.router.handle(bytes([0xC0, 1]), 0)  # preset 'missing': an error, nothing changes
    rig.router.handle(bytes([0xC0, 5]), 0)  # no preset for program 5: ignored
    assert rig.router.counters.errors == errors + 1
    assert rig.engine.state.snapshot() == before


def test_learn_saves_map_and_reload_routes(rig: Rig) -> None:
    rig.commands.start_learn("/riff/denoising")
    rig.router.handle(bytes([0xB3, 20, 5]), 0)  # CC 20 on channel 4 is captured...
    assert rig.get("denoising") == PARAMETERS["denoising"].default  # ...not applied
    rig.router.handle(bytes([0xB3, 20, 127]), 0)
    assert rig.get("denoising") == 1.0
    reloaded = MidiMap.load(rig.map_path)
    assert CcBinding(cc=20, address="/riff/denoising", min=0.0, max=1.0, channel=3) in \
        reloaded.cc
    assert all(b.address != "/riff/denoising" or b.cc == 20 for b in reloaded.cc)
    assert len(reloaded.notes) == 4 and len(reloaded.buttons) == 1
    fresh = MidiRouter(rig.commands, reloaded)
    fresh.handle(bytes([0xB3, 20, 0]), 0)
    assert rig.get("denoising") == 0.0
    # Re-learning the same CC for another address moves it.
    rig.commands.start_learn("/riff/guidance")
    rig.router.handle(bytes([0xB3, 20, 0]), 0)
    again = MidiMap.load(rig.map_path)
    assert [b.address for b in again.cc if b.cc == 20] == ["/riff/guidance"]
    with pytest.raises(InvalidRequest):
        rig.commands.start_learn("/riff/prompt")


@pytest.mark.parametrize("bad", [
    '[[cc]]\ncc = 1\naddress = "/riff/prompt"\n',
    '[[cc]]\ncc = 1\naddress = "/riff/alpha"\ncurve = "cubic"\n',
    '[[cc]]\ncc = 1\naddress = "/riff/alpha"\nmax = 3.0\n',
    '[[cc]]\ncc = 200\naddress = "/riff/alpha"\n',
    '[[cc]]\ncc = 1\naddress = "/riff/alpha"\n[[cc]]\ncc = 1\naddress = "/riff/seed"\n',
    '[[note]]\nnote = 1\naction = "explode"\n',
    '[[note]]\nnote = 1\naction = "seed_image"\nvalue = "../x"\n',
    '[[note]]\nnote = 1\naction = "prompt"\n',
    '[program]\npresets = ["/etc/passwd"]\n',
    'colour = "red"\n',
    'cc = 5\n',
    '[[cc]\n',
])
def test_bad_maps_are_refused(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    with pytest.raises(InvalidRequest):
        MidiMap.load(path)


def test_clock_tempo_start_stop_position(rig: Rig) -> None:
    t = 100.0
    rig.router.handle(bytes([0xFA]), t)
    assert rig.engine.plays == 1
    interval = 60 / 128 / 24
    for _ in range(24 * 4):
        t += interval
        rig.router.handle(bytes([0xF8]), t)
    assert rig.get("tempo") == 128.0
    # The first clock after Start is position 0; once locked (2 beats of ticks), a position
    # every sixteenth.
    assert [o.beats for o in rig.observations if o.kind == "beat"] == [
        2.0 + 0.25 * i for i in range(8)]
    # Jitter of +-2 ms per tick (rtmidi) keeps the estimate within 0.5 BPM.
    jitter = [0.002, -0.002]
    for i in range(24 * 8):
        t += 60 / 90 / 24
        rig.router.handle(bytes([0xF8]), t + jitter[i % 2])
    assert abs(rig.get("tempo") - 90.0) < 0.5
    rig.router.handle(bytes([0xFC]), t)
    assert rig.engine.stops == 1
    rig.router.handle(bytes([0xF2, 0, 1]), t)  # song position 128 sixteenths = 32 beats
    assert rig.observations[-1].kind == "position" and rig.observations[-1].beats == 32.0
    rig.router.handle(bytes([0xFB]), t)
    assert rig.engine.plays == 2 and rig.observations[-1].kind == "continue"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.binary(min_size=0, max_size=4), max_size=20))
def test_fuzzed_midi_keeps_state_valid(rig: Rig, messages: list[bytes]) -> None:
    for i, data in enumerate(messages):
        rig.router.handle(data, float(i))
    for name, value in rig.engine.state.items():
        assert PARAMETERS[name].coerce(value) == value
    c = rig.router.counters
    assert c.received == c.applied + c.errors + c.ignored


# -- JACK MIDI and rtmidi over JACK ------------------------------------------------------


class JackSender:
    """A JACK client in the test that sends MIDI events and a sample-exact clock."""

    def __init__(self, server: str) -> None:
        import jack

        self.client = jack.Client(f"riff-test-send-{uuid.uuid4().hex[:6]}",
                                  no_start_server=True, servername=server)
        self.port = self.client.midi_outports.register("out")
        self.queue: collections.deque[bytes] = collections.deque()
        self.tick_frames = 0
        self.next_tick: int | None = None
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        self.port.clear_buffer()
        while self.queue:
            self.port.write_midi_event(0, self.queue.popleft())
        if self.tick_frames:
            base = self.client.last_frame_time
            if self.next_tick is None or self.next_tick < base:
                # First period, or this client missed periods (a stalled test process):
                # start the pulse again here rather than write into the past.
                self.next_tick = base
            while self.next_tick < base + frames:
                self.port.write_midi_event(self.next_tick - base, b"\xf8")
                self.next_tick += self.tick_frames

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.mark.jack
def test_jack_midi_cc_notes_and_clock(jack_server: str, tmp_path: Path,
                                      loop_thread: LoopThread) -> None:
    from protocols.midi.jack_input import JackMidiInput

    rig = Rig(tmp_path)

    def start() -> JackMidiInput:
        inp = JackMidiInput(rig.router.handle, client_name=f"riff-test-in-{uuid.uuid4().hex[:6]}",
                            servername=jack_server)
        inp.start()
        return inp

    inp = loop_thread.call(start)
    sender = JackSender(jack_server)
    try:
        sender.client.connect(sender.port, inp.port_name)
        state = rig.engine.state
        send_until(sender, [bytes([0xB0, 1, 127]), bytes([0x90, 61, 90])],
                   lambda: loop_thread.call(lambda: (state.get("alpha"), state.get("prompt")))
                   == (1.0, rig.library.prompt_set("genres").prompts[1]))
        rate = sender.client.samplerate
        send_until(sender, [bytes([0xFA])], lambda: loop_thread.call(lambda: rig.engine.plays)
                   >= 1)
        assert state.get("tempo") != 100.0
        sender.tick_frames = round(rate * 60 / 100 / 24)  # exact at 48 kHz: 1200 frames
        # Exact timestamps give exactly 100.0; a stalled sender (missed JACK periods) leaves
        # the estimate within the reporting step (0.05 BPM) once it has settled.
        wait_for(lambda: abs(loop_thread.call(lambda: state.get("tempo")) - 100.0) <= 0.06)
        assert rig.engine.plays >= 1, (rig.observations[:3], rig.router.counters)
        sender.tick_frames = 0
        send_until(sender, [bytes([0xFC])], lambda: loop_thread.call(lambda: rig.engine.stops)
                   >= 1)
        wait_for(lambda: loop_thread.call(lambda: inp.drained))
        assert inp.overflows == 0
    finally:
        sender.close()
        loop_thread.call(inp.close)


@pytest.mark.jack
def test_rtmidi_over_jack(jack_server: str, tmp_path: Path, loop_thread: LoopThread,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    import jack
    import mido

    from protocols.midi.rtmidi_input import RtMidiInput

    monkeypatch.setenv("JACK_DEFAULT_SERVER", jack_server)
    rig = Rig(tmp_path)
    name = f"riff-test-rt-{uuid.uuid4().hex[:6]}"

    def start() -> RtMidiInput:
        inp = RtMidiInput(rig.router.handle, name="in", client_name=name, feedback=True)
        inp.start()
        return inp

    inp = loop_thread.call(start)
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    out = backend.open_output("out", virtual=True, client_name=f"{name}-send")
    patch = jack.Client(f"{name}-patch", no_start_server=True, servername=jack_server)
    try:
        patch.connect(f"{name}-send:out", f"{name}:in")
        out.send(mido.Message("control_change", channel=0, control=3, value=127))
        out.send(mido.Message("note_on", note=36, velocity=64))
        out.send(mido.Message("start"))
        wait_for(lambda: loop_thread.call(
            lambda: (rig.get("steps"), rig.get("seed_image"), rig.engine.plays))
            == (20, "vibes", 1))
        # Learn over rtmidi: the next CC binds, the map file holds it.
        loop_thread.call(lambda: rig.commands.start_learn("/riff/tempo"))
        out.send(mido.Message("control_change", channel=0, control=90, value=0))
        wait_for(lambda: any(b.cc == 90 for b in MidiMap.load(rig.map_path).cc))
        out.send(mido.Message("control_change", channel=0, control=90, value=127))
        wait_for(lambda: loop_thread.call(lambda: rig.get("tempo")) == 240.0)
        # Feedback out: alpha (CC 1 in the map) set elsewhere comes back as CC 1.
        from protocols.midi.feedback import MidiFeedback

        got: list[Any] = []
        back = backend.open_input("back", virtual=True, client_name=f"{name}-back",
                                  callback=got.append)
        patch.connect(f"{name}-out:in_out", f"{name}-back:back")

        def wire() -> None:
            fb = MidiFeedback(lambda: rig.router.map, inp.send)
            rig.engine.state.add_listener(fb.on_change)
            rig.engine.state.set("alpha", 1.0)

        loop_thread.call(wire)
        wait_for(lambda: any(m.type == "control_change" and m.control == 1 and m.value == 127
                             for m in list(got)))
        back.close()
    finally:
        out.close()
        patch.close()
        loop_thread.call(inp.close)


@pytest.mark.parametrize("curve", ["linear", "exp", "log"])
@pytest.mark.parametrize("lsb", [None, 34])
def test_feedback_messages_invert_the_binding(curve: str, lsb: int | None) -> None:
    from protocols.midi.feedback import cc_messages

    b = CcBinding(cc=2, lsb=lsb, address="/riff/guidance", min=2.0, max=14.0, curve=curve,
                  channel=None)
    for value in (2.0, 3.3, 8.0, 13.9, 14.0):
        messages = cc_messages(b, value, default_channel=5)
        assert all(m[0] == 0xB5 for m in messages)
        if lsb is None:
            x = messages[0][2] / 127
            tolerance = 12 * 0.5 / 127 * 14  # half a step, times the steepest slope (log)
        else:
            x = ((messages[0][2] << 7) | messages[1][2]) / 16383
            tolerance = 12 * 0.5 / 16383 * 14
        assert float(b.value(x)) == pytest.approx(value, abs=tolerance)


def test_transport_follower_locks_the_real_transport() -> None:
    from engine.live.sync import MasterSync
    from engine.live.transport import Transport
    from protocols.midi.clock import FrameTimebase, TransportFollower

    now = [0]
    transport = Transport(lambda: now[0], 48000, 120.0, 4)
    plays: list[int] = []
    tempos: list[float] = []
    sync = MasterSync(transport, play=lambda: plays.append(1), stop=lambda: None,
                      playing=lambda: bool(plays), adopt=lambda tempo, meter: None)
    follower = TransportFollower(sync, FrameTimebase(48000, lambda: 0),
                                 StateFollower(tempos.append, lambda: None, lambda: None))
    clock = MidiClock(follower)
    t = 10.0
    for _ in range(60):  # pulses before start: tempo only (there is no phase yet)
        t += 60 / 100 / 24
        clock.handle(bytes([0xF8]), t)
    assert tempos and tempos[-1] == 100.0 and not transport.external
    clock.handle(bytes([0xFA]), t)
    assert plays == []  # the engine starts once the grid is locked to the master
    for _ in range(24 * 8):
        t += 60 / 128 / 24
        now[0] = round(t * 48000)
        clock.handle(bytes([0xF8]), t)
    assert plays == [1]
    assert transport.external and abs(transport.tempo - 128.0) < 1e-6
    # 8 beats of 4/4 since the first clock after start: bar 2 begins at the next clock.
    assert transport.bar_start(2) == round((t + 60 / 128 / 24) * 48000)


COMMENTED_MAP = """\
# My rig: the big knob is alpha. Keep this comment.
description = "commented"  # inline on a top-level key

[[cc]]  # the big knob
cc = 1
address = "/riff/alpha"
curve = "log"  # feels better

[[cc]]
cc = 7
address = "/riff/steps"
"""


def test_learn_keeps_the_users_comments(tmp_path: Path) -> None:
    map_path = tmp_path / "maps" / "mine.toml"
    map_path.parent.mkdir()
    map_path.write_text(COMMENTED_MAP)
    commands = Commands(EngineDouble(), PresetLibrary([tmp_path]))
    router = MidiRouter(commands, MidiMap.load(map_path))
    commands.learn = router.start_learn
    commands.start_learn("/riff/guidance")
    router.handle(bytes([0xB0, 7, 0]), 0)  # CC 7 moves from steps to guidance
    text = map_path.read_text()
    for comment in ("# My rig: the big knob is alpha. Keep this comment.",
                    "# inline on a top-level key", "# the big knob", "# feels better"):
        assert comment in text
    learned = MidiMap.load(map_path)
    assert [(b.cc, b.address, b.curve) for b in learned.cc] == [
        (1, "/riff/alpha", "log"), (7, "/riff/guidance", "linear")]
    assert text.index("# the big knob") < text.index('"/riff/guidance"')  # order kept


def test_learn_on_a_shipped_map_writes_the_users_copy(tmp_path: Path) -> None:
    shipped = BUILTIN_FOLDER / "maps" / "generic8.toml"
    before = shipped.read_bytes()
    library = PresetLibrary()  # no --preset-dir: the user's config folder
    commands = Commands(EngineDouble(), library)
    router = MidiRouter(commands, MidiMap.load(shipped))  # no learn_path: the map's own file
    commands.learn = router.start_learn
    commands.start_learn("/riff/guidance")
    router.handle(bytes([0xB0, 99, 0]), 0)
    assert shipped.read_bytes() == before
    copy = library.save_folder / "maps" / "generic8.toml"
    assert router.map.path == copy and copy.is_file()
    assert library.map_path("generic8") == copy  # shadows the shipped map
    assert any(b.cc == 99 for b in MidiMap.load(copy).cc)
    # The copy starts from the shipped file's text, so its comments come along.
    shipped_comments = [line for line in before.decode().splitlines()
                        if line.lstrip().startswith("#")]
    assert shipped_comments and all(c in copy.read_text() for c in shipped_comments)


def test_capture_action_arms_a_capture_of_its_bars(tmp_path: Path) -> None:
    """The ``capture`` note action asks the engine for its ``bars`` (default: the current
    /riff/bars); an engine without audio input refuses it, counted as an error."""
    import asyncio

    calls: list[tuple[object, object]] = []

    class Capturing(EngineDouble):
        def capture_start(self, bars: object, name: object = None) -> tuple[Any, Any]:
            calls.append((bars, name))
            job = type("Job", (), {"name": f"capture-{len(calls)}", "bar": 4})()
            return job, future

    map_text = ('[[note]]\nnote = 37\naction = "capture"\nbars = 2\n\n'
                '[[button]]\ncc = 40\naction = "capture"\n')
    path = tmp_path / "capture.toml"
    path.write_text(map_text)
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        engine = Capturing()
        engine.state.set("bars", 3)
        router = MidiRouter(Commands(engine, PresetLibrary([tmp_path])), MidiMap.load(path))
        router.handle(bytes([0x90, 37, 100]), 0)
        router.handle(bytes([0xB0, 40, 127]), 0)
        assert calls == [(2, None), (3, None)]
        plain = MidiRouter(Commands(EngineDouble(), PresetLibrary([tmp_path])),
                           MidiMap.load(path))
        plain.handle(bytes([0x90, 37, 100]), 0)
        assert plain.counters.errors == 1
    finally:
        loop.close()
