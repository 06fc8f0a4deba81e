"""`riff run` with JACK MIDI input and JACK transport on the compiled callback: no Python
process callback, yet a CC from a JACK MIDI client moves its parameter and a timebase master
sets the tempo (real jackd, real UDP OSC, the tiny offline model)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jack
import pytest

from tests.jack_server import timebase_master
from tests.test_capture_jack import replies
from tests.test_daemon_osc import Daemon

pytestmark = [pytest.mark.jack, pytest.mark.slow]


def state_of(daemon: Daemon) -> dict[str, list[Any]]:
    return dict(replies(daemon, ("/riff/state",)))


def test_jack_midi_and_transport_reach_the_engine_through_the_compiled_callback(
        jack_server: str) -> None:
    name = f"riff-cc-{uuid.uuid4().hex[:6]}"
    sender = jack.Client(f"send-{uuid.uuid4().hex[:6]}", no_start_server=True,
                         servername=jack_server)
    out = sender.midi_outports.register("out")
    queue: list[bytes] = []

    def process(frames: int) -> None:
        out.clear_buffer()
        while queue:
            out.write_midi_event(0, queue.pop(0))

    sender.set_process_callback(process)
    sender.activate()
    master = timebase_master(jack_server, 150.0)

    daemon = Daemon("--model", "test-tones", "--tempo", "120", "--bars", "1", "--steps", "2",
                    "--jack-server", jack_server, "--client-name", name, "--no-connect",
                    "--midi-in", f"jack:{sender.name}:out", "--midi-map", "generic8",
                    "--jack-transport")
    try:
        daemon.wait_for(lambda t: "JACK: playing on" in t or "compiled player" in t)
        assert "compiled player (clips published" in daemon.text()
        assert "Python process callback" not in daemon.text()
        assert state_of(daemon)["/riff/alpha"] != [1.0]
        deadline = time.monotonic() + 20
        while state_of(daemon)["/riff/alpha"] != [1.0]:
            assert time.monotonic() < deadline, daemon.text()[-3000:]
            queue.append(bytes([0xB0, 21, 127]))  # generic8: CC 21 is /riff/alpha
            time.sleep(0.2)
        master.activate()
        master.transport_frame = 0
        master.transport_start()
        # The transport's tempo rules the grid while the master rolls (the status line's).
        daemon.wait_for(lambda t: "| 150.0 BPM |" in t)
    finally:
        master.transport_stop()  # the server's transport is shared: leave it stopped
        master.transport_frame = 0
        code = daemon.finish()
        master.close()
        sender.deactivate()
        sender.close()
    assert code == 0, daemon.text()[-3000:]
