"""The integration hook against the real Engine facade: OSC + JACK MIDI + MIDI clock.

Only the GPU (a fake generator) and the audio clock (a fake clock; the player is not running)
are stand-ins; the Engine, its state, transport and scheduler are the real ones.
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.errors import RiffError
from engine.live.control import Engine
from engine.presets import Preset, PresetLibrary
from protocols.midi.map import MidiMap
from protocols.osc.server import OscConfig
from protocols.surfaces import (
    ControlConfig,
    ControlSurfaces,
    SurfaceUnavailable,
    add_control_arguments,
    control_config_from_args,
    start_control_surfaces,
)
from tests.control_surface_helpers import Client, LoopThread
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink
from tests.test_midi import JackSender, send_until, wait_for


def test_control_arguments_parse() -> None:
    parser = argparse.ArgumentParser()
    add_control_arguments(parser)
    args = parser.parse_args(["--osc-port", "9100", "--midi-in", "jack", "--midi-in",
                              "rtmidi:nanoKONTROL2", "--midi-map", "nanokontrol2",
                              "--midi-clock", "--preset-dir", "mine"])
    config = control_config_from_args(args)
    assert config.osc == OscConfig(host="127.0.0.1", port=9100)
    assert config.midi_in == ("jack", "rtmidi:nanoKONTROL2")
    assert (config.midi_map, config.midi_clock, config.preset_dirs) == (
        "nanokontrol2", True, (Path("mine"),))
    assert control_config_from_args(parser.parse_args(["--osc-port", "0"])).osc is None
    with pytest.raises(Exception, match="--midi-in"):
        ControlConfig(midi_in=("serial",))


class JackListener:
    """A JACK client in the test that records the MIDI it receives."""

    def __init__(self, server: str, received: list[bytes]) -> None:
        import jack

        self.client = jack.Client(f"riff-test-listen-{uuid.uuid4().hex[:6]}",
                                  no_start_server=True, servername=server)
        self.port = self.client.midi_inports.register("in")

        def process(frames: int) -> None:
            for _offset, data in self.port.incoming_midi_events():
                received.append(bytes(data))

        self.client.set_process_callback(process)
        self.client.activate()

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def _engine() -> Engine:
    clock = FakeClock()
    return Engine(FakeGenerator(clock), FakeSink(clock, 48000), sample_rate=48000, clock=clock)


@pytest.mark.jack
def test_real_engine_driven_by_osc_and_jack_midi(jack_server: str, tmp_path: Path) -> None:
    lt = LoopThread()
    engine = _engine()
    PresetLibrary([tmp_path]).save("warm", Preset({"prompt": "warm tape chords"}))
    config = ControlConfig(osc=OscConfig(port=0), midi_in=("jack",), midi_map="generic8",
                           midi_clock=True, midi_feedback=True, preset_dirs=(tmp_path,),
                           client_name=f"riff-test-{uuid.uuid4().hex[:6]}",
                           jack_server=jack_server)
    surfaces: ControlSurfaces = lt.run(start_control_surfaces(engine, config))
    sender = None
    try:
        assert surfaces.osc is not None
        client = Client(surfaces.osc.address)
        client.send("/riff/subscribe")
        client.send("/riff/denoising", 0.5)
        client.send("/riff/preset/load", "warm")
        client.send("/riff/play")
        seen: dict[str, list[Any]] = dict(client.messages_until_pong())
        assert lt.call(lambda: engine.scheduler.running)
        assert lt.call(lambda: (engine.state.get("denoising"), engine.state.get("prompt"))) \
            == (0.5, "warm tape chords")
        while seen.get("/riff/status/bar") != [0]:  # bar 0 once playing (-1 before)
            seen.update((m.address, list(m.params)) for m in client.recv())
        # JACK MIDI into the engine's port: CC 21 is alpha in the generic map.
        (midi_in,) = surfaces.inputs
        sender = JackSender(jack_server)
        sender.client.connect(sender.port, midi_in.port_name)
        send_until(sender, [bytes([0xB0, 21, 127])],
                   lambda: lt.call(lambda: engine.state.get("alpha")) == 1.0)
        # MIDI feedback: an OSC change of alpha comes out of midi_out as CC 21.
        received: list[bytes] = []
        listener = JackListener(jack_server, received)
        listener.client.connect(midi_in.out_port, listener.port)
        client.send("/riff/alpha", 0.5)
        wait_for(lambda: bytes([0xB0, 21, 64]) in list(received))
        listener.close()
        # MIDI learn from OSC, then the learned CC drives guidance.
        client.send("/riff/midi/learn", "/riff/guidance")
        assert "/riff/error" not in dict(client.messages_until_pong())
        # The built-in map is saved under its name in the user's folder, which shadows it.
        learned = tmp_path / "maps" / "generic8.toml"
        send_until(sender, [bytes([0xB0, 99, 0])], learned.is_file)
        assert any(b.cc == 99 and b.address == "/riff/guidance"
                   for b in MidiMap.load(learned).cc)
        assert PresetLibrary([tmp_path]).map_path("generic8") == learned
        send_until(sender, [bytes([0xB0, 99, 127])],
                   lambda: lt.call(lambda: engine.state.get("guidance")) == 20.0)
        # MIDI clock at 100 BPM: the transport follows the master.
        assert surfaces.router is not None and surfaces.router.clock is not None
        clock = surfaces.router.clock
        send_until(sender, [bytes([0xFA])], lambda: lt.call(lambda: clock.running))
        sender.tick_frames = round(sender.client.samplerate * 60 / 100 / 24)
        wait_for(lambda: lt.call(lambda: engine.transport.external
                                 and abs(engine.transport.tempo - 100.0) <= 0.06))
        wait_for(lambda: lt.call(lambda: midi_in.drained))
        stats = lt.call(surfaces.stats)
        assert stats["osc_errors"] == 0 and stats["osc_subscribers"] == 1
        assert stats["midi_learned"] == 1 and stats["midi_applied"] >= 2
        client.close()
    finally:
        if sender is not None:
            sender.close()
        lt.run(surfaces.close())
        lt.close()


def test_unavailable_midi_is_one_clear_error(tmp_path: Path) -> None:
    lt = LoopThread()
    try:
        engine = _engine()
        config = ControlConfig(osc=OscConfig(port=0), midi_in=("jack",),
                               jack_server=f"no-such-server-{uuid.uuid4().hex[:6]}",
                               preset_dirs=(tmp_path,))
        with pytest.raises(SurfaceUnavailable, match="cannot start"):
            lt.run(start_control_surfaces(engine, config))
        bad_map = ControlConfig(osc=None, midi_in=("jack",), midi_map="nope",
                                preset_dirs=(tmp_path,))
        with pytest.raises(RiffError, match="nope"):
            lt.run(start_control_surfaces(engine, bad_map))
    finally:
        lt.close()
