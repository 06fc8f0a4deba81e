"""The JACK output on a private dummy server: sample-exact playback, ports, connections."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from engine.player import Player, PlayerConfig
from protocols.jack_output import JackOutput, NoJackServer
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
        i = out.first_frame_time + start - rec.first_frame
        assert 0 < i < rec.buf.shape[1] - 2 * n
        assert np.all(rec.buf[:, :i] == 0.0)
        np.testing.assert_array_equal(rec.buf[0, i:i + n], left)
        np.testing.assert_array_equal(rec.buf[1, i:i + n], -left)
        np.testing.assert_array_equal(rec.buf[0, i + n:i + 2 * n], left)  # it loops
        assert player.counters()["xruns"] == 0 and rec.xruns == 0
        assert out.callbacks > 0 and out.callback_durations().min() > 0
    finally:
        out.close()
