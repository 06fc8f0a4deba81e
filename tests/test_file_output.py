"""File output: offline rendering waits for the control plane; real time keeps the clock."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.live.player import Player, PlayerConfig
from protocols.audio.file_output import FileOutput


@dataclasses.dataclass
class Clip:
    audio: np.ndarray


def tone(value: float, n: int) -> Clip:
    return Clip(np.full((n, 2), value, np.float32))


def test_offline_render_waits_for_every_scheduled_clip(tmp_path: Path) -> None:
    player = Player(PlayerConfig(sample_rate=48000, crossfade_samples=0))
    path = tmp_path / "out.wav"
    bar = 2500
    out = FileOutput(player, path, offline=True, block=1024, end_sample=4 * bar)
    out.start()

    def slow_generator() -> None:  # clips arrive much later than real time would allow
        for k in range(4):
            while player.position() < k * bar - bar // 2:  # scheduled half a bar ahead
                time.sleep(0.001)
            time.sleep(0.05)
            player.schedule(tone(k + 1.0, bar), k * bar)

    th = threading.Thread(target=slow_generator)
    th.start()
    assert out.wait(60)
    th.join()
    out.stop()
    assert out.error is None
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 48000 and audio.shape == (4 * bar, 2)
    for k in range(4):  # every clip exactly on its bar: the renderer never ran ahead
        assert np.all(audio[k * bar:(k + 1) * bar] == k + 1.0), k
    assert player.counters()["late"] == 0
    assert out.waits >= 3


def test_realtime_render_follows_the_clock(tmp_path: Path) -> None:
    player = Player(PlayerConfig(sample_rate=48000, crossfade_samples=0))
    player.schedule(tone(0.5, 480), 0)
    path = tmp_path / "rt.flac"
    out = FileOutput(player, path, offline=False, block=480, end_sample=9600)
    t0 = time.monotonic()
    out.start()
    assert out.wait(30)
    elapsed = time.monotonic() - t0
    out.stop()
    audio, _ = sf.read(path, dtype="float32")
    assert audio.shape == (9600, 2)
    np.testing.assert_allclose(audio, 0.5, atol=1e-4)  # FLAC is 16 bit
    assert elapsed >= 0.18  # 0.2 s of audio, rendered no faster than real time
