"""External clocks: MIDI clock with jitter, tempo ramps, phase from the event time, stop and
master-lost behaviour for MIDI clock and JACK transport alike, tempo refused under a master.

The whole control plane runs (engine, transport, scheduler, planner) with a fake clock and a
fake generator (1 s per clip); the MIDI master is simulated: ticks with seeded random jitter on
their time stamps, handed to the clock in batches a quarter of a second after they happened
(so the phase can only be right if it comes from the stamps). Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.errors import InvalidRequest
from engine.live.control import Engine
from engine.live.scheduler import SchedulerConfig
from engine.live.state import EngineState
from engine.live.sync import SyncConfig
from engine.presets import Preset, PresetLibrary
from protocols.audio.jack_transport import JackTransportFollower
from protocols.control_target import Commands
from protocols.midi.clock import (
    CLOCK,
    START,
    STOP,
    FrameTimebase,
    MidiClock,
    StateFollower,
    TransportFollower,
)
from protocols.osc.server import OscConfig, OscServer
from tests.control_surface_helpers import Client, LoopThread
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink
from tests.jack_server import timebase_master

SR = 48000
BATCH_S = 0.25  # the loop handles the MIDI that arrived in the last quarter second


class Rig:
    """The engine with a fake clock, a MIDI clock input and a simulated master."""

    def __init__(self, *, on_stop: str = "stop", tempo: float = 100.0, seed: int = 0,
                 jitter_s: float = 0.0) -> None:
        self.clock = FakeClock()
        self.sink = FakeSink(self.clock, SR)
        self.gen = FakeGenerator(self.clock, step_s=0.1)
        state = EngineState({"tempo": tempo, "bars": 1, "steps": 10})
        self.engine = Engine(self.gen, self.sink, sample_rate=SR, clock=self.clock,
                             state=state,
                             config=SchedulerConfig(lookahead=2, margin_s=0.03, max_tick_s=0.1),
                             sync=SyncConfig(on_stop=on_stop))
        follower = TransportFollower(
            self.engine.sync, FrameTimebase(SR, lambda: 0),  # stamps: seconds of audio clock
            StateFollower(lambda bpm: state.set("tempo", bpm), self.engine.play,
                          self.engine.stop))
        self.midi = MidiClock(follower)
        self.rng = random.Random(seed)
        self.jitter_s = jitter_s
        self.next_tick = 0.5
        self.start_tick: float | None = None  # true time of the first clock after Start
        self.lock_reanchors: int | None = None
        self.lock_preempted: int | None = None
        self.lock_time = 0.0

    @property
    def transport(self) -> Any:
        return self.engine.transport

    async def master(self, seconds: float, bpm: Callable[[float], float] | float = 120.0,
                     ticks: bool = True, on_tick: Callable[[float], None] | None = None
                     ) -> None:
        """Let ``seconds`` pass; a master sends clocks at ``bpm`` (a function of time)."""
        rate = bpm if callable(bpm) else (lambda _t: float(bpm))
        end = self.clock.t + seconds
        while self.clock.t < end - 1e-9:
            await self.clock.advance(min(BATCH_S, end - self.clock.t))
            while ticks and self.next_tick <= self.clock.t:
                t = self.next_tick
                self.midi.handle(bytes([CLOCK]), t + self.rng.uniform(-self.jitter_s,
                                                                      self.jitter_s))
                if self.start_tick is None and self.midi.running:
                    self.start_tick = t
                if on_tick is not None:
                    on_tick(t)
                self.next_tick += 60.0 / (24 * rate(t))
            if not ticks:
                self.next_tick = self.clock.t
            if self.lock_reanchors is None and self.transport.external:
                self.lock_reanchors = self.transport.reanchors
                self.lock_time = self.clock.t
            elif self.lock_preempted is None and self.lock_reanchors is not None \
                    and self.clock.t >= self.lock_time + 0.5:
                # What the lock itself cost (the scheduler re-plans on its next tick).
                self.lock_preempted = self.engine.scheduler.counters.preempted

    def send(self, status: int) -> None:
        """A realtime message just before the next clock (Start: that clock is position 0)."""
        self.midi.handle(bytes([status]), self.next_tick - 0.001)


def run(rig: Rig, body: Callable[[Rig], Awaitable[None]]) -> Rig:
    async def main() -> None:
        task = asyncio.ensure_future(rig.engine.run())
        rig.engine.play()  # as `riff run` does: the internal clock plays until a master rules
        try:
            await body(rig)
        finally:
            await rig.engine.close()
        assert task.done() and task.result() is None

    asyncio.run(main())
    return rig


@pytest.mark.parametrize("jitter_ms", [0.5, 1.0])
def test_jittered_midi_clock_keeps_the_grid_and_the_clips(jitter_ms: float) -> None:
    """+-1 ms of random jitter on every tick, 60 s at 120 BPM: the grid locks once, moves at
    most once more, the tempo is right, and no planned or in-flight clip is thrown away."""

    async def body(rig: Rig) -> None:
        await rig.master(10.0)  # a master's clock runs before it starts (tempo, no phase)
        assert rig.engine.state.get("tempo") == 120.0 and not rig.transport.external
        rig.send(START)
        await rig.master(60.0)

    rig = run(Rig(seed=7, jitter_s=jitter_ms / 1000), body)
    t = rig.transport
    assert rig.lock_reanchors is not None and rig.start_tick is not None
    assert t.reanchors - rig.lock_reanchors <= 1
    assert abs(t.tempo - 120.0) < 0.005
    # The grid sits on the master's bar lines (within the phase tolerance, 2 ms).
    for bar in (1, 10, 29):
        assert abs(t.bar_start(bar) - round((rig.start_tick + 2 * bar) * SR)) <= 96
    # No discarded work after the lock, and a new clip on (nearly) every bar line.
    assert rig.engine.scheduler.counters.preempted == rig.lock_preempted
    lock_sample = round(rig.lock_time * SR)
    new = {s.job_id for s in rig.sink.scheduled if s.start > lock_sample + 4 * SR}
    assert len(new) >= 26  # 28 bars in the last 56 s; the first clip after the lock is made


def test_a_tempo_ramp_on_the_master_is_followed_smoothly() -> None:
    """120 -> 132 BPM over 16 s (with +-0.5 ms jitter): the grid follows in small steps and
    stays within a few milliseconds of the master's beats."""
    errors: list[int] = []
    tempos: list[float] = []

    def ramp(t: float) -> float:
        return 120.0 + 12.0 * min(max((t - 15.0) / 16.0, 0.0), 1.0)

    beats = [0]

    def check(t: float) -> None:
        rig_ = holder[0]
        tr = rig_.transport
        if rig_.start_tick is None or not tr.external:
            return
        beat = beats[0]
        beats[0] += 1
        if beat % 24 or beat < 24 * 4:
            return
        n = beat // 24
        bar, b = divmod(n, 4)
        seg = tr.segment_for_bar(bar)
        grid = tr.bar_start(bar) + round(b * float(seg.samples_per_beat))
        errors.append(grid - round(t * SR))
        if not tempos or tempos[-1] != tr.tempo:
            tempos.append(tr.tempo)

    holder: list[Rig] = []

    async def body(rig: Rig) -> None:
        holder.append(rig)
        await rig.master(10.0)
        rig.send(START)
        await rig.master(30.0, ramp, on_tick=check)

    run(Rig(seed=3, jitter_s=0.0005), body)
    assert max(abs(e) for e in errors) <= 240  # 5 ms at worst, mid-ramp
    assert max(abs(e) for e in errors[-10:]) <= 96  # locked again after the ramp
    assert abs(tempos[-1] - 132.0) < 0.05
    steps = [b - a for a, b in itertools.pairwise(tempos)]
    assert len(steps) >= 8 and max(abs(s) for s in steps) <= 1.5  # small steps, no jumps


def test_phase_comes_from_the_event_time_not_from_when_it_is_handled() -> None:
    """Perfect stamps, handled up to a quarter second late: the bar lines are on the master's
    exact samples."""

    async def body(rig: Rig) -> None:
        rig.next_tick = 0.5 + 7 / SR  # a clock that does not start on a batch boundary
        await rig.master(4.0)
        rig.send(START)
        await rig.master(20.0)

    rig = run(Rig(), body)
    assert rig.start_tick is not None
    first = round(rig.start_tick * SR)
    t = rig.transport
    assert t.reanchors == 1
    for bar in range(0, 10):
        assert t.bar_start(bar) == first + bar * 96000
    # Clips start on those lines.
    starts = [s.start for s in rig.sink.scheduled if s.start >= first]
    assert starts and all((s - first) % 96000 == 0 for s in starts)


class JackMaster:
    """A JACK timebase master as ``JackOutput`` publishes it: positions on the audio clock."""

    def __init__(self, rig: Rig, bpm: float = 120.0) -> None:
        self.rig = rig
        self.follower = JackTransportFollower(rig.engine.sync)
        self.bpm = bpm
        self.origin: int | None = None

    async def roll(self, seconds: float, state: str = "rolling") -> None:
        end = self.rig.clock.t + seconds
        while self.rig.clock.t < end - 1e-9:
            await self.rig.clock.advance(0.05)
            sample = self.rig.sink.position()
            if self.origin is None:
                self.origin = sample
            beats = (sample - self.origin) * self.bpm / (60 * SR)
            bar, beat = divmod(beats, 4)
            self.follower.poll(state, (sample, int(bar), beat, self.bpm, 4))


@pytest.mark.parametrize("source", ["midi", "jack"])
@pytest.mark.parametrize("on_stop", ["stop", "play"])
def test_master_stop_is_handled_alike(source: str, on_stop: str) -> None:
    """MIDI Stop and JACK transport stopping do the same, per the setting: stop the engine
    (the master still rules: tempo refused), or play on at the master's tempo on the
    internal clock (tempo accepted again), with no jump in the grid."""
    seen: dict[str, Any] = {}

    async def body(rig: Rig) -> None:
        jack = JackMaster(rig, 128.0)
        if source == "midi":
            await rig.master(3.0, 128.0)
            rig.send(START)
            await rig.master(6.0, 128.0)
        else:
            await jack.roll(6.0)
        assert rig.transport.external and rig.engine.scheduler.running
        seen["lines"] = [rig.transport.bar_start(b) for b in range(8, 12)]
        if source == "midi":
            rig.send(STOP)
            await rig.master(2.0, 128.0)  # clocks go on while stopped: the master is there
        else:
            await jack.roll(2.0, "stopped")
        seen["running"] = rig.engine.scheduler.running
        seen["stops"] = rig.sink.stops
        seen["external"] = rig.transport.external
        seen["after"] = [rig.transport.bar_start(b) for b in range(8, 12)]
        try:
            rig.engine.state.set("tempo", 90.0)
            seen["tempo_set"] = True
        except InvalidRequest as exc:
            seen["tempo_set"] = str(exc)

    rig = run(Rig(on_stop=on_stop), body)
    if on_stop == "stop":
        assert not seen["running"] and seen["external"] and seen["stops"] == 1
        assert "refused" in seen["tempo_set"]
        assert rig.engine.state.get("tempo") != 90.0
    else:
        assert seen["running"] and not seen["external"] and seen["stops"] == 0
        assert seen["after"] == seen["lines"]  # the internal clock goes on on the same grid
        assert seen["tempo_set"] is True  # the performer has the tempo again


@pytest.mark.parametrize("source", ["midi", "jack"])
def test_a_lost_master_hands_back_to_the_internal_clock(source: str) -> None:
    """The master goes away while rolling (MIDI clocks stop coming; the JACK timebase master
    leaves): the engine plays on at the master's last tempo, on the same grid."""
    seen: dict[str, Any] = {}

    async def body(rig: Rig) -> None:
        jack = JackMaster(rig, 128.0)
        if source == "midi":
            await rig.master(3.0, 128.0)
            rig.send(START)
            await rig.master(6.0, 128.0)
        else:
            await jack.roll(6.0)
        assert rig.transport.external
        seen["lines"] = [rig.transport.bar_start(b) for b in range(8, 12)]
        seen["generated"] = rig.engine.scheduler.counters.generated
        if source == "midi":
            await rig.master(0.5, ticks=False)
            assert rig.transport.external  # not yet: silence shorter than lost_after_s
            await rig.master(8.0, ticks=False)
        else:
            jack.follower.poll("none", None)
            await rig.master(8.0, ticks=False)
        seen["running"] = rig.engine.scheduler.running

    rig = run(Rig(), body)
    t = rig.transport
    assert not t.external and seen["running"]
    assert rig.engine.sync.lost_count == 1
    assert [t.bar_start(b) for b in range(8, 12)] == seen["lines"]  # no jump
    assert abs(t.tempo - 128.0) < 1e-3 and rig.engine.state.get("tempo") == pytest.approx(
        128.0, abs=1e-3)
    assert rig.engine.scheduler.counters.generated >= seen["generated"] + 3  # clips go on
    assert rig.engine.state.set("tempo", 100.0) == 100.0  # the performer has it again


def test_tempo_and_meter_are_refused_under_a_master_over_osc(tmp_path: Path) -> None:
    """``/riff/tempo`` and ``/riff/meter`` answer ``/riff/error`` under a master, change
    nothing and are not echoed to subscribers; a preset loads without its tempo."""
    lt = LoopThread()
    clock = FakeClock()
    engine = Engine(FakeGenerator(clock), FakeSink(clock, SR), sample_rate=SR, clock=clock,
                    state=EngineState({"tempo": 100.0}))
    library = PresetLibrary([tmp_path])
    library.save("mine", Preset({"prompt": "from preset", "tempo": 101.0}))
    commands = Commands(engine, library)

    async def start() -> OscServer:
        return await OscServer.start(commands, OscConfig(port=0))

    server = lt.run(start())
    client = Client(server.address)
    try:
        client.send("/riff/subscribe")
        client.messages_until_pong()
        follower = JackTransportFollower(engine.sync)
        lt.call(lambda: follower.poll("rolling", (0, 0, 0.0, 128.0, 3)))
        assert lt.call(lambda: engine.transport.external)
        client.send("/riff/tempo", 90.0)
        client.send("/riff/meter", 4)
        replies = client.messages_until_pong()
        errors = [(a, args) for a, args in replies if a == "/riff/error"]
        assert [args[0] for _, args in errors] == ["/riff/tempo", "/riff/meter"]
        assert all("JACK transport" in args[1] for _, args in errors)
        assert not [a for a, _ in replies if a in ("/riff/tempo", "/riff/meter")]  # no echo
        assert lt.call(lambda: (engine.state.get("tempo"), engine.state.get("meter"))) == (
            100.0, 4)
        assert lt.call(lambda: (engine.transport.tempo, engine.transport.beats_per_bar)) == (
            128.0, 3)
        client.send("/riff/preset/load", "mine")
        assert "/riff/error" not in dict(client.messages_until_pong())
        assert lt.call(lambda: (engine.state.get("prompt"), engine.state.get("tempo"))) == (
            "from preset", 100.0)
        # The master leaves: the performer has the tempo again.
        lt.call(lambda: follower.poll("none", None))
        client.send("/riff/tempo", 90.0)
        assert "/riff/error" not in dict(client.messages_until_pong())
        assert lt.call(lambda: engine.state.get("tempo")) == 90.0
    finally:
        client.close()
        lt.run(server.close())
        lt.close()


def test_state_guard_refuses_before_anything_is_applied() -> None:
    state = EngineState()
    changes: list[str] = []
    state.add_listener(lambda name, value: changes.append(name))
    state.add_guard(lambda name: "no" if name == "tempo" else None)
    with pytest.raises(InvalidRequest, match="no"):
        state.update({"alpha": 0.5, "tempo": 90.0})
    assert changes == [] and state.get("alpha") == 0.0 and state.get("tempo") == 120.0
    assert state.set("alpha", 0.5) == 0.5


class ClockSender:
    """A JACK client in the test: Start, then clocks at exact frames (120 BPM at 48 kHz: one
    every 1000 frames). ``first`` is the frame of the first clock after Start."""

    def __init__(self, server: str, tick_frames: int) -> None:
        import jack

        self.client = jack.Client(f"riff-test-clock-{uuid.uuid4().hex[:6]}",
                                  no_start_server=True, servername=server)
        self.port = self.client.midi_outports.register("out")
        self.tick_frames = tick_frames
        self.start = False
        self.first: int | None = None
        self.next_tick: int | None = None
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        self.port.clear_buffer()
        base = self.client.last_frame_time
        if self.next_tick is None:
            self.next_tick = base  # clocks before Start: the tempo is known at Start
        if self.start:
            self.start = False
            self.port.write_midi_event(0, bytes([START]))
            self.first = self.next_tick = base + 10
        while self.next_tick < base + frames:
            if self.next_tick >= base:  # a clock in a period this client missed is lost
                self.port.write_midi_event(self.next_tick - base, bytes([CLOCK]))
            self.next_tick += self.tick_frames

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


@pytest.mark.jack
@pytest.mark.parametrize("ahead", [0, 2048], ids=["python-callback", "compiled-player"])
def test_jack_midi_clock_puts_bar_lines_on_the_exact_sample(jack_server: str,
                                                             ahead: int) -> None:
    """Real JACK: a sample-exact MIDI clock into the engine's JACK MIDI port, the engine's
    audio through JACK: the grid's bar lines are the master's, to the sample (the JACK MIDI
    event's frame on the player's clock), however late the loop handles the events."""
    from engine.live.player import Player, PlayerConfig
    from protocols.audio.jack_output import JackOutput
    from protocols.surfaces import ControlConfig, start_control_surfaces

    lt = LoopThread()
    out = JackOutput(f"riff-test-{uuid.uuid4().hex[:6]}", server=jack_server,
                     render_ahead=ahead)
    player = Player(PlayerConfig(sample_rate=out.sample_rate, crossfade_samples=0))
    out.start(player, connect=False)
    clock = FakeClock()
    engine = Engine(FakeGenerator(clock), player, sample_rate=out.sample_rate, clock=clock,
                    sink_stats=player.counters)
    config = ControlConfig(osc=None, midi_in=("jack",), midi_clock=True,
                           client_name=f"riff-test-{uuid.uuid4().hex[:6]}",
                           jack_server=jack_server)
    surfaces = lt.run(start_control_surfaces(engine, config,
                                             frame_offset=lambda: out.frame_offset,
                                             jack_host=out))
    sender = ClockSender(jack_server, out.sample_rate * 60 // 120 // 24)
    try:
        (midi_in,) = surfaces.inputs
        sender.client.connect(sender.port, midi_in.port_name)
        bar = out.sample_rate * 2  # 4/4 at 120 BPM
        for _attempt in range(5):  # Start is resent if a missed JACK period lost it
            first = sender.first
            time.sleep(2.5)  # the tempo locks on the clocks before Start
            sender.start = True
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (
                    sender.first != first and lt.call(lambda: engine.transport.external)):
                time.sleep(0.05)
            time.sleep(0.5)
            if lt.call(lambda: engine.transport.external) and sender.first != first:
                break
        assert sender.first is not None and lt.call(lambda: engine.transport.external)
        lines = lt.call(lambda: [engine.transport.bar_start(b) for b in range(4)])
        offset = out.frame_offset
        expected = [sender.first - offset + b * bar for b in range(4)]
        if player.counters()["xruns"] == 0 and midi_in.xruns == 0:
            assert lines == expected
        else:  # an xrun moves the audio clock against JACK frames by whole periods
            assert all(abs(a - b) <= 2 * out.blocksize for a, b in zip(lines, expected,
                                                                         strict=True))
    finally:
        sender.close()
        lt.run(surfaces.close())
        lt.close()
        out.close()


def _bare_follower(now: list[int]) -> tuple[Any, MidiClock]:
    from engine.live.sync import MasterSync
    from engine.live.transport import Transport

    transport = Transport(lambda: now[0], SR, 100.0, 4)
    sync = MasterSync(transport, play=lambda: None, stop=lambda: None, playing=lambda: True,
                      adopt=lambda tempo, meter: None)
    return transport, MidiClock(TransportFollower(sync, FrameTimebase(SR, lambda: 0)))


@pytest.mark.parametrize("shift", [0.0, 0.3, 0.7])
def test_a_pulse_restarted_at_start_and_lost_ticks_keep_the_position(shift: float) -> None:
    """Some masters restart their pulse at Start (a new phase, same period); ticks lost on
    the way (a missed JACK period) are counted, so the song position stays right."""
    now = [0]
    transport, midi = _bare_follower(now)
    tick = 60 / 120 / 24
    t = 1.0
    for _ in range(100):  # clocks before Start
        t += tick
        midi.handle(bytes([CLOCK]), t)
    first = t + shift * tick + tick  # the master restarts its pulse here
    midi.handle(bytes([START]), first - 0.001)
    for k in range(24 * 16):
        if k in (130, 131, 250):  # lost on the way
            continue
        now[0] = round((first + k * tick) * SR)
        midi.handle(bytes([CLOCK]), first + k * tick)
    assert midi.filter.lost == 3
    assert transport.reanchors == 1 and abs(transport.tempo - 120.0) < 1e-6
    assert [transport.bar_start(b) for b in range(4)] == [
        round(first * SR) + b * 96000 for b in range(4)]


@pytest.mark.jack
@pytest.mark.parametrize("ahead", [0, 2048], ids=["python-callback", "compiled-player"])
def test_real_jack_transport_start_stop_and_a_master_that_leaves(jack_server: str,
                                                                 ahead: int) -> None:
    """A real JACK timebase master (150 BPM, 4/4) and the engine's JACK output: rolling locks
    the grid, stopping stops the engine (the default), rolling again plays it, and when the
    master's client closes the engine plays on at 150 BPM on its own clock, on the same grid."""
    import jack

    from engine.live.player import Player, PlayerConfig
    from protocols.audio.jack_output import JackOutput

    master = timebase_master(jack_server, 150.0)
    spb = 60.0 / 150.0 * master.samplerate

    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server, follow_transport=True,
                     render_ahead=ahead)
    player = Player(PlayerConfig(sample_rate=out.sample_rate, crossfade_samples=0))
    out.start(player, connect=False)
    clock = FakeClock()
    engine = Engine(FakeGenerator(clock), player, sample_rate=out.sample_rate, clock=clock)
    follower = JackTransportFollower(engine.sync)
    engine.play()  # as `riff run` does

    def poll_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "condition not met in time"
            follower.poll(out.transport_state(), out.transport_bbt())
            time.sleep(0.02)

    master.activate()
    try:
        master.transport_frame = 0
        master.transport_start()
        poll_until(lambda: engine.transport.external and engine.transport.tempo == 150.0)
        bbt = out.transport_bbt()
        assert bbt is not None
        sample, bar, beat, _, _ = bbt
        # On the master's grid, to a BBT tick (JACK's tick is a whole 1/1920 beat).
        assert abs(engine.transport.bar_start(bar) - (sample - beat * spb)) <= spb / 1920 + 1
        master.transport_stop()
        poll_until(lambda: not engine.scheduler.running)
        assert engine.transport.external  # stopped, but the master still rules
        with pytest.raises(InvalidRequest):
            engine.state.set("tempo", 90.0)
        master.transport_start()
        poll_until(lambda: engine.scheduler.running)
        lines = [engine.transport.bar_start(b) for b in range(40, 44)]
        master.deactivate()
        master.close()
        poll_until(lambda: not engine.transport.external)
        assert engine.scheduler.running and engine.transport.tempo == 150.0
        assert [engine.transport.bar_start(b) for b in range(40, 44)] == lines
        assert engine.state.get("tempo") == 150.0 and engine.sync.lost_count == 1
    finally:
        engine.stop()
        out.client.transport_stop()  # the server's transport is shared: leave it stopped
        out.client.transport_frame = 0
        out.close()
        with contextlib.suppress(jack.JackError):
            master.close()


def test_age_timebase_rides_the_top_of_the_audio_clocks_steps() -> None:
    """rtmidi stamps (monotonic) against an audio clock that moves in 256-sample periods:
    the conversion is steady (not a 5 ms sawtooth) and follows a jump of the audio clock."""
    from protocols.midi.clock import AgeTimebase

    now = [100.0]
    period = 256

    def audio() -> int:  # the player's position: whole periods since 100 s
        return int((now[0] - 100.0) * SR) // period * period

    base = AgeTimebase(SR, audio, lambda: now[0])
    rng = random.Random(1)
    got = []
    for k in range(2000):
        now[0] = 100.0 + k * 0.0104 + rng.uniform(0, 0.002)  # a message now and then
        event = now[0] - 0.0005  # stamped half a millisecond ago
        got.append(base.to_sample(event) - round((event - 100.0) * SR))
    steady = got[200:]
    assert max(steady) - min(steady) <= 16  # a third of a millisecond, not a period (256)
    assert -16 <= min(steady) <= 0
    # An xrun: the audio clock falls two periods behind for good; followed, not stuck.
    def behind() -> int:
        return audio() - 2 * period

    base.audio_now = behind
    for k in range(2000, 3000):
        now[0] = 100.0 + k * 0.0104 + rng.uniform(0, 0.002)
        event = now[0] - 0.0005
        last = base.to_sample(event) - round((event - 100.0) * SR)
    assert -2 * period - 16 <= last <= -2 * period
