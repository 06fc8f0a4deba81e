"""`riff run` against a JACK server of its own: ports wired the moment they appear (before
the model has loaded), and a jackd killed and started again mid-run."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from tests.jack_recorder import Recorder
from tests.jack_server import PrivateJack
from tests.riff_process import RiffProcess
from tests.test_jack_output import PortWatcher

pytestmark = [pytest.mark.jack, pytest.mark.slow]


def _record(server: str, client: str, seconds: float = 1.0) -> np.ndarray:
    rec = Recorder(server, seconds=seconds)
    try:
        rec.start([f"{client}:out_L", f"{client}:out_R"])
        assert rec.full.wait(30)
    finally:
        rec.close()
    return rec.buf[:, rec.buf.shape[1] // 2:]


def test_ports_are_wired_at_once_and_a_server_restart_is_survived() -> None:
    server = PrivateJack("riff-run-restart")
    server.start()
    client = "riff-rs"
    watcher = PortWatcher(server.name, client, seconds=1.0)
    daemon = RiffProcess("run", "--model", "test-tones", "--tempo", "240", "--bars", "1",
                         "--steps", "2", "--jack-server", server.name, "--client-name", client,
                         "--osc-port", "0")
    try:
        # A patchbay connects the moment the ports appear: no error, while the model loads.
        watcher.thread.join(60)
        assert watcher.errors == [] and len(watcher.connected) == 2, watcher.errors
        daemon.wait_for(lambda t: "clip " in t and "started at sample" in t)
        log = daemon.text()
        assert log.index("active at 48000 Hz") < log.index("ready (pid")
        watcher.close()
        from protocols.audio import jack_c

        probe = Recorder(server.name, seconds=0.1)
        try:  # the compiled player's look-ahead is the outputs' reported latency
            port = probe.client.get_port_by_name(f"{client}:out_L")
            assert jack_c.port_latency(port, jack_c.CAPTURE) == (2048, 2048)
        finally:
            probe.client.close()
        assert "compiled player (clips published 2048 frames ahead)" in daemon.text()
        before = _record(server.name, client)
        assert np.nanmax(np.abs(before)) > 0.1  # the tones play

        server.kill()
        daemon.wait_for(lambda t: "JACK server went away" in t)
        time.sleep(1.0)  # a few retries while no server answers
        server.start()
        daemon.wait_for(lambda t: f"JACK: back on {client}:out_L, {client}:out_R" in t)
        after = _record(server.name, client)
        assert np.isfinite(after).mean() > 0.5
        assert np.nanmax(np.abs(after)) > 0.1  # output resumed on the same ports
        probe = Recorder(server.name, seconds=0.1)
        try:  # the connections the engine made itself are back
            conns = probe.client.get_all_connections(f"{client}:out_L")
            assert [c.name for c in conns] == ["system:playback_1"]
        finally:
            probe.client.close()
    finally:
        code = daemon.finish(signal.SIGTERM)
        server.stop()
    assert code == 0, daemon.text()[-3000:]
    assert "Traceback" not in daemon.text()
