"""The JACK output on a private dummy server: sample-exact playback, ports, connections."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from engine.live.player import Player, PlayerConfig
from protocols.audio.jack_output import JackOutput, NoJackServer
from tests.jack_recorder import Recorder
from tests.jack_server import timebase_master

pytestmark = pytest.mark.jack


@dataclasses.dataclass
class Clip:
    audio: np.ndarray


def test_no_server_gives_a_clear_error() -> None:
    pytest.importorskip("jack")
    with pytest.raises(NoJackServer, match="jackd -d"):
        JackOutput("riff-test", server=f"absent-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize(("ahead", "table"), [(0, True), (2048, True), (2048, False)],
                         ids=["python-callback", "compiled-player", "compiled-ring-copy"])
def test_plays_clip_at_its_exact_frame(jack_server: str, ahead: int, table: bool) -> None:
    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server, render_ahead=ahead,
                     compiled_player=table)
    try:
        player = Player(PlayerConfig(sample_rate=out.sample_rate, crossfade_samples=0))
        connected = out.start(player, connect=True)
        assert [p.shortname for p in out.ports] == ["out_L", "out_R"]
        assert connected == ["system:playback_1", "system:playback_2"]
        rec = Recorder(jack_server, seconds=1.0)
        rec.start([p.name for p in out.ports])
        try:
            n = 4800
            left = ((np.arange(n) % 97) + 1).astype(np.float32) / 100
            clip = Clip(np.stack([left, -left], axis=1))
            start = player.position() + out.sample_rate // 4
            player.schedule(clip, start)
            assert rec.full.wait(20)
        finally:
            rec.close()
        i = start + out.frame_offset - rec.first_frame  # frame_offset moves only on xruns
        assert 0 < i < rec.buf.shape[1] - 2 * n
        before = rec.buf[:, :i]
        assert np.all(before[np.isfinite(before)] == 0.0)
        expect = np.stack([left, -left, left])  # L, R, then L again: it loops
        got = np.stack([rec.buf[0, i:i + n], rec.buf[1, i:i + n], rec.buf[0, i + n:i + 2 * n]])
        ok = np.isfinite(got)  # frames lost to an xrun of a loaded machine stay NaN
        assert ok.mean() > 0.9
        np.testing.assert_array_equal(got[ok], expect[ok])
        durations = out.callback_durations()  # the compiled callback counts whole microseconds
        assert out.callbacks > 0 and durations.min() >= 0 and durations.max() > 0
    finally:
        out.close()


@pytest.mark.parametrize("ahead", [0, 2048], ids=["python-callback", "compiled-player"])
def test_follows_jack_transport_bbt(jack_server: str, ahead: int) -> None:
    """A timebase master (as a DAW would be) at 150 BPM in 4/4: the output publishes its
    bar/beat on the player's clock, consistent with the samples played (the Python callback,
    or the compiled player's querying the transport without the GIL)."""

    master = timebase_master(jack_server, 150.0)
    rate = master.samplerate
    spb = 60.0 / 150.0 * rate  # samples per beat
    master.activate()
    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server, follow_transport=True,
                     render_ahead=ahead)
    try:
        player = Player(PlayerConfig(sample_rate=out.sample_rate, crossfade_samples=0))
        out.start(player, connect=False)
        assert (out._rt is not None) == bool(ahead)
        assert out.transport_bbt() is None  # stopped: nothing to follow
        eventually(lambda: out.transport_state() == "stopped")
        master.transport_frame = 0
        master.transport_start()
        seen = []
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            bbt = out.transport_bbt()
            if bbt is not None and (not seen or bbt[0] - seen[0][0] > rate // 2):
                seen.append(bbt)
            time.sleep(0.01)
        assert len(seen) == 2
        (s0, bar0, beat0, tempo, meter), (s1, bar1, beat1, _, _) = seen
        assert tempo == 150.0 and meter == 4
        played_beats = (bar1 * 4 + beat1) - (bar0 * 4 + beat0)
        assert abs(played_beats * spb - (s1 - s0)) <= spb / 1920 + 1  # same clock, to a tick
    finally:
        master.transport_stop()
        out.close()
        master.deactivate()
        master.close()


def eventually(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``pred()`` holds (the server updates its graph asynchronously)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class PortWatcher:
    """A second JACK client that polls ``get_ports`` from another thread and connects each of
    ``client``'s output ports to a recorder input the moment it appears, as a patchbay does
    on "port registered". Records every connection error."""

    def __init__(self, server: str, client: str, seconds: float = 2.0) -> None:
        import threading

        self.rec = Recorder(server, seconds=seconds)
        self.rec.start([])
        self.client = client
        self.errors: list[str] = []
        self.connected: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        import jack

        while not self._stop.is_set() and len(self.connected) < 2:
            for port in self.rec.client.get_ports(f"^{self.client}:out_", is_audio=True,
                                                  is_output=True):
                if port.name in self.connected:
                    continue
                target = self.rec.ports[len(self.connected)]
                try:
                    self.rec.client.connect(port, target)
                except jack.JackError as exc:
                    self.errors.append(f"{port.name}: {exc}")
                self.connected.append(port.name)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.rec.close()


def test_ports_are_connectable_the_moment_they_appear(jack_server: str) -> None:
    """A client polling get_ports connects to each port as soon as it is listed: no error,
    and what arrives is silence (no player attached yet)."""
    name = f"riff-{uuid.uuid4().hex[:6]}"
    watcher = PortWatcher(jack_server, name)
    out = JackOutput(name, server=jack_server)
    try:
        assert out.ports == []  # nothing registered before activation
        out.activate()
        watcher.thread.join(10)
        assert watcher.connected == [f"{name}:out_L", f"{name}:out_R"]
        assert watcher.errors == []
        assert watcher.rec.full.wait(20)
        got = watcher.rec.buf
        assert np.isfinite(got).mean() > 0.5
        assert np.all(got[np.isfinite(got)] == 0.0)
    finally:
        watcher.close()
        out.close()


def test_output_ports_report_their_latency(jack_server: str) -> None:
    """Capture latency of the outputs is the engine's look-ahead (set from the latency
    callback); their playback latency is the downstream path's."""
    import jack

    from protocols.audio import jack_c

    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server, latency_frames=1234)
    other = jack.Client(f"lat-{uuid.uuid4().hex[:6]}", no_start_server=True,
                        servername=jack_server)
    try:
        player = Player(PlayerConfig(sample_rate=out.sample_rate))
        out.start(player, connect=True)
        port = other.get_port_by_name(out.ports[0].name)
        system = other.get_port_by_name("system:playback_1")
        downstream = jack_c.port_latency(system, jack_c.PLAYBACK)
        assert downstream[0] > 0
        # The server recomputes latencies after a graph change, asynchronously: poll.
        eventually(lambda: jack_c.port_latency(port, jack_c.CAPTURE) == (1234, 1234))
        eventually(lambda: jack_c.port_latency(port, jack_c.PLAYBACK) == downstream)
        out.set_latency(77)
        eventually(lambda: jack_c.port_latency(port, jack_c.CAPTURE) == (77, 77))
    finally:
        other.close()
        out.close()


@pytest.mark.parametrize("ahead", [0, 2048], ids=["python-callback", "compiled-render-ahead"])
def test_survives_a_server_restart_on_the_same_ports(ahead: int) -> None:
    """jackd is killed mid-clip and started again: the output reconnects under the same
    port names, re-makes the connection it made, and the clip plays on from where it was."""
    from tests.jack_server import PrivateJack

    server = PrivateJack("riff-restart")
    server.start()
    out = None
    try:
        out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=server.name,
                         render_ahead=ahead)
        player = Player(PlayerConfig(sample_rate=out.sample_rate, crossfade_samples=0))
        out.start(player, connect=False)
        out.connect("out_L", "system:playback_1")
        n = 4800
        left = ((np.arange(n) % 89) + 1).astype(np.float32) / 100
        player.schedule(Clip(np.stack([left, -left], axis=1)), 0)
        while player.position() < 3 * n:
            time.sleep(0.01)
        server.kill()
        deadline = time.monotonic() + 10
        while not out.shutdown_reason:
            assert time.monotonic() < deadline, "no shutdown callback"
            time.sleep(0.01)
        assert not out.reconnect()  # no server yet: nothing changes
        frozen = player.position()
        server.start()
        deadline = time.monotonic() + 10
        while not out.reconnect():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert player.position() - frozen < out.sample_rate + ahead  # its clock waited
        assert [p.name for p in out.ports] == [f"{out.name}:out_L", f"{out.name}:out_R"]
        assert out.reconnects == 1 and out.shutdown_reason == ""
        rec = Recorder(server.name, seconds=0.5)
        try:
            conns = rec.client.get_all_connections(f"{out.name}:out_L")
            assert [c.name for c in conns] == ["system:playback_1"]
            rec.start([p.name for p in out.ports])
            assert rec.full.wait(20)
        finally:
            rec.close()
        got = rec.buf[0, rec.buf.shape[1] // 2:]  # the recorder connects after its start
        ok = np.isfinite(got)
        assert ok.mean() > 0.5
        # Every recorded sample is a sample of the clip (it loops on), none is silence.
        assert np.all(np.isin(got[ok], left))
        assert out.callbacks > 0
    finally:
        if out is not None:
            out.close()
        server.stop()


@pytest.mark.parametrize("ahead", [0, 2048], ids=["python-callback", "compiled-player"])
def test_midi_ports_live_on_the_same_client_and_survive_a_restart(ahead: int) -> None:
    """JACK MIDI input hosted by the output: ``name:midi_in`` on the one client, events with
    their exact frame times through the same process callback (the Python one, or the
    compiled player's without the GIL), feedback out of ``midi_out``; after a jackd restart
    the port and the connection it made from the sender's port are back."""
    import asyncio

    import jack

    from protocols.midi.jack_input import JackMidiInput
    from tests.control_surface_helpers import LoopThread
    from tests.jack_server import PrivateJack

    server = PrivateJack("riff-midi-host")
    server.start()
    got: list[tuple[bytes, float]] = []
    lt = LoopThread()
    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=server.name, render_ahead=ahead)
    sender = None
    sent: list[int] = []  # JACK frame of each event the sender wrote
    back: list[bytes] = []  # what arrived at the sender's input from midi_out
    try:
        out.start(Player(PlayerConfig(sample_rate=out.sample_rate)), connect=False)
        assert out.render_ahead == ahead and (out._rt is not None) == bool(ahead)

        send_name = f"send-{uuid.uuid4().hex[:6]}"

        def send_client() -> tuple[Any, Any]:
            client = jack.Client(send_name, no_start_server=True, servername=server.name)
            port = client.midi_outports.register("out")
            inport = client.midi_inports.register("in")
            queue: list[bytes] = []

            def process(frames: int) -> None:
                port.clear_buffer()
                if queue and frames > 7:
                    try:  # refused in a cycle where the server is not ready: next cycle
                        port.write_midi_event(7, queue[0])
                    except jack.JackError:
                        return
                    sent.append(client.last_frame_time + 7)
                    queue.pop(0)
                back.extend(bytes(buf) for _, buf in inport.incoming_midi_events())

            client.set_process_callback(process)
            client.activate()
            return client, queue

        sender, queue = send_client()

        async def start() -> JackMidiInput:
            inp = JackMidiInput(lambda data, t: got.append((data, t)), host=out,
                                connect=(f"{sender.name}:out",), feedback=True)
            inp.start()
            return inp

        inp = lt.run(start())
        assert inp.port_name == f"{out.name}:midi_in"
        names = {p.name.split(":")[0] for p in sender.get_ports()}
        assert names == {"system", out.name, sender.name}  # no second engine client
        queue.append(bytes([0xB0, 1, 64]))
        eventually(lambda: len(got) == 1)
        assert got[0][0] == bytes([0xB0, 1, 64])
        assert round(got[0][1] * out.sample_rate) == sent[0]  # the event's own JACK frame
        sender.connect(f"{out.name}:midi_out", f"{sender.name}:in")
        lt.call(lambda: inp.send(bytes([0x90, 62, 1])))
        eventually(lambda: bytes([0x90, 62, 1]) in back)
        assert inp.overflows == 0 and inp.out_dropped == 0

        sender.close()
        sender = None
        server.kill()
        eventually(lambda: bool(out.shutdown_reason))
        # A first try while no server answers releases the dead client: libjack must not
        # open another client in this process (the sender) before that.
        assert not lt.call(out.reconnect)
        server.start()
        sender, queue = send_client()
        # The sender is back first, so the connection the engine made can be re-made.
        eventually(lambda: lt.call(out.reconnect))
        assert [c.name for c in sender.get_all_connections(f"{out.name}:midi_in")] == \
            [f"{sender.name}:out"]
        queue.append(bytes([0x90, 60, 100]))
        eventually(lambda: len(got) == 2)
        assert got[1][0] == bytes([0x90, 60, 100])
        lt.call(inp.close)
        asyncio.set_event_loop(None)
    finally:
        if sender is not None:
            sender.close()
        lt.close()
        out.close()
        server.stop()


def test_the_compiled_callback_runs_while_python_holds_the_gil(jack_server: str) -> None:
    """The same GIL hold (a C-level loop that never releases it) against both callbacks, in
    one run: the compiled one keeps running every period, the Python one cannot."""
    counts = {}
    for ahead in (0, 2048):
        out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server,
                         render_ahead=ahead)
        try:
            out.start(Player(PlayerConfig(sample_rate=out.sample_rate)), connect=False)
            eventually(lambda o=out: o.callbacks > 20)  # type: ignore[misc]
            before = out.callbacks
            t0 = time.perf_counter()
            sum(range(30_000_000))  # holds the GIL throughout
            held = time.perf_counter() - t0
            during = out.callbacks - before  # read right after: what ran while it was held
            counts[ahead] = (during, held * out.sample_rate / out.blocksize)
        finally:
            out.close()
    compiled, expected = counts[2048]
    python, _ = counts[0]
    assert expected > 20, counts  # the hold lasted many periods
    assert compiled >= 0.5 * expected, counts
    assert python <= 0.25 * counts[0][1], counts


def test_compiled_player_on_jack_matches_the_python_player(jack_server: str) -> None:
    """The compiled player (the callback mixing the voice table) on a real server: a clip
    sequence with equal-power crossfades, a loop wrap and a start off the bar line, recorded
    through JACK, equals the Python player rendering the same sequence offline."""
    # A generous look-ahead: on a loaded machine the planning thread may be held up longer
    # than the default's 43 ms, and a clip that misses its start is (rightly) late.
    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server, render_ahead=8192)
    assert out.compiled_player
    rng = np.random.default_rng(7)
    clips = [Clip(rng.uniform(-1, 1, (n, 2)).astype(np.float32)) for n in (4800, 3001, 7000)]
    try:
        cfg = PlayerConfig(sample_rate=out.sample_rate, crossfade_samples=480)
        player = Player(cfg)
        out.start(player, connect=False)
        rec = Recorder(jack_server, seconds=2.0)
        rec.start([p.name for p in out.ports])
        try:
            t0 = player.position() + out.sample_rate // 2
            starts = [t0, t0 + 9600, t0 + 9600 + 4321]
            for clip, start in zip(clips, starts, strict=True):
                player.schedule(clip, start)
            assert rec.full.wait(20)
        finally:
            rec.close()
        assert out.render_error is None and out.render_stats()["skips"] == 0
    finally:
        out.close()
    reference = Player(cfg)
    for clip, start in zip(clips, starts, strict=True):
        reference.schedule(clip, start - t0 + 480)  # the same sequence from sample 0
    want = np.zeros((2, 30000), np.float32)
    reference.render(list(want))
    i = t0 - 480 + out.frame_offset - rec.first_frame
    assert 0 < i < rec.buf.shape[1] - want.shape[1]
    got = rec.buf[:, i:i + want.shape[1]]
    ok = np.isfinite(got)  # frames lost to an xrun of a loaded machine stay NaN
    assert ok.mean() > 0.9
    np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=2e-7)


def test_the_compiled_callback_counts_midi_it_cannot_keep(jack_server: str) -> None:
    """With the loop held up, the compiled callback fills the MIDI ring (4 rows), counts
    the events that did not fit as overflows and the SysEx as skipped, and the loop gets the
    first four, in order, with their frames, once it runs again."""
    import threading

    import jack

    from protocols.midi.jack_input import JackMidiInput
    from tests.control_surface_helpers import LoopThread

    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server, render_ahead=2048)
    lt = LoopThread()
    sender = jack.Client(f"send-{uuid.uuid4().hex[:6]}", no_start_server=True,
                         servername=jack_server)
    port = sender.midi_outports.register("out")
    batch: list[bytes] = []
    sent: list[int] = []

    def process(frames: int) -> None:
        port.clear_buffer()
        if batch:
            base = sender.last_frame_time
            for i, data in enumerate(batch):
                port.write_midi_event(i, data)
                sent.append(base + i)
            batch.clear()

    sender.set_process_callback(process)
    sender.activate()
    got: list[tuple[bytes, float]] = []
    held, release = threading.Event(), threading.Event()
    try:
        out.start(Player(PlayerConfig(sample_rate=out.sample_rate)), connect=False)

        async def start() -> JackMidiInput:
            inp = JackMidiInput(lambda data, t: got.append((data, t)), host=out, capacity=4,
                                connect=(f"{sender.name}:out",))
            inp.start()
            return inp

        inp = lt.run(start())

        def hold() -> None:
            held.set()
            release.wait(10)

        lt.loop.call_soon_threadsafe(hold)
        assert held.wait(5)
        batch.extend([bytes([0xB0, 1, i]) for i in range(6)] + [b"\xf0\x7e\x7f\x06\x01\xf7"])
        eventually(lambda: inp.overflows == 2 and inp.skipped_sysex == 1)
        assert not got  # the loop is held: nothing delivered yet
        release.set()
        eventually(lambda: len(got) == 4)
        assert [d for d, _ in got] == [bytes([0xB0, 1, i]) for i in range(4)]
        assert [round(t * out.sample_rate) for _, t in got] == sent[:4]
        lt.call(inp.close)
    finally:
        release.set()
        sender.deactivate()
        sender.close()
        lt.close()
        out.close()


@pytest.mark.parametrize("ahead", [0, 2048], ids=["python-callback", "compiled-player"])
def test_audio_input_fills_the_capture_window_sample_exactly(jack_server: str,
                                                             ahead: int) -> None:
    """A JACK client plays a known function of the JACK frame into the engine's inputs; each
    armed window holds exactly that function from the window's first JACK frame on, also
    across the end of the capture ring (3000 frames, windows of 2000)."""
    import jack

    from engine.live.capture import CaptureTap
    from protocols.audio.jack_input import JackAudioInput

    def signal(frames: np.ndarray, ch: int) -> np.ndarray:
        return ((frames % 997) / 997 + ch).astype(np.float32)

    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server, render_ahead=ahead)
    sender = jack.Client(f"sig-{uuid.uuid4().hex[:6]}", no_start_server=True,
                         servername=jack_server)
    ports = [sender.outports.register(n) for n in ("L", "R")]

    def process(frames: int) -> None:
        at = np.arange(sender.last_frame_time, sender.last_frame_time + frames)
        for ch, port in enumerate(ports):
            port.get_array()[:] = signal(at, ch)

    sender.set_process_callback(process)
    sender.activate()
    tap = CaptureTap(2, 3000)
    try:
        player = Player(PlayerConfig(sample_rate=out.sample_rate))
        out.add_ports(JackAudioInput(out, tap, 2))
        out.start(player, connect=False)
        for ch, port in enumerate(ports):
            sender.connect(port, f"{out.name}:{('in_L', 'in_R')[ch]}")
        for _ in range(2):
            time.sleep(0.1)  # connections are made, the clock runs
            start = player.position() + 4096  # ahead of what the callback plays
            tap.arm(start, start + 2000)
            eventually(lambda: tap.done)
            tap.disarm()
            assert tap.missed == 0 and tap.lost == 0 and tap.written == 2000
            got = tap.read(2000)
            want = np.stack([signal(np.arange(tap.start_frame, tap.start_frame + 2000), ch)
                             for ch in range(2)])
            np.testing.assert_array_equal(got, want)
        assert tap.ring.head == 4000  # the second window wrapped the ring
    finally:
        sender.deactivate()
        sender.close()
        out.close()
