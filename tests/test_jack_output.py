"""The JACK output on a private dummy server: sample-exact playback, ports, connections."""

from __future__ import annotations

import dataclasses
import time
import uuid

import numpy as np
import pytest

from engine.live.player import Player, PlayerConfig
from protocols.audio.jack_output import JackOutput, NoJackServer
from tests.jack_recorder import Recorder

pytestmark = pytest.mark.jack


@dataclasses.dataclass
class Clip:
    audio: np.ndarray


def test_no_server_gives_a_clear_error() -> None:
    pytest.importorskip("jack")
    with pytest.raises(NoJackServer, match="jackd -d"):
        JackOutput("riff-test", server=f"absent-{uuid.uuid4().hex[:8]}")


def test_plays_clip_at_its_exact_frame(jack_server: str) -> None:
    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server)
    try:
        assert [p.shortname for p in out.ports] == ["out_L", "out_R"]
        player = Player(PlayerConfig(sample_rate=out.sample_rate, crossfade_samples=0))
        connected = out.start(player, connect=True)
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
        assert out.callbacks > 0 and out.callback_durations().min() > 0
    finally:
        out.close()


def test_follows_jack_transport_bbt(jack_server: str) -> None:
    """A timebase master (as a DAW would be) at 150 BPM in 4/4: the output publishes its
    bar/beat on the player's clock, consistent with the samples played."""
    import jack

    master = jack.Client(f"master-{uuid.uuid4().hex[:6]}", no_start_server=True,
                         servername=jack_server)
    rate = master.samplerate
    spb = 60.0 / 150.0 * rate  # samples per beat

    def timebase(state: int, blocksize: int, pos: object, new_pos: bool) -> None:
        beats = pos.frame / spb  # type: ignore[attr-defined]
        pos.valid = jack._lib.JackPositionBBT  # type: ignore[attr-defined]
        pos.bar = int(beats // 4) + 1  # type: ignore[attr-defined]
        pos.beat = int(beats % 4) + 1  # type: ignore[attr-defined]
        pos.ticks_per_beat = 1920.0  # type: ignore[attr-defined]
        pos.tick = int((beats % 1) * 1920)  # type: ignore[attr-defined]
        pos.beats_per_bar = 4.0  # type: ignore[attr-defined]
        pos.beat_type = 4.0  # type: ignore[attr-defined]
        pos.beats_per_minute = 150.0  # type: ignore[attr-defined]

    master.set_timebase_callback(timebase)
    master.activate()
    out = JackOutput(f"riff-{uuid.uuid4().hex[:6]}", server=jack_server, follow_transport=True)
    try:
        player = Player(PlayerConfig(sample_rate=out.sample_rate, crossfade_samples=0))
        out.start(player, connect=False)
        assert out.transport_bbt() is None  # stopped: nothing to follow
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
