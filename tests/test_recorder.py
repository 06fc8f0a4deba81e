"""Recorder: ring buffer semantics, WAV/FLAC output, and integrity after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.errors import InvalidRequest
from engine.takes.recorder import Recorder, RecorderConfig

ROOT = Path(__file__).resolve().parent.parent


def _pattern(start: int, n: int, channels: int = 2) -> np.ndarray:
    """Frames whose value encodes their index, so order and gaps are checkable."""
    idx = np.arange(start, start + n, dtype=np.float64)
    left = ((idx % 2001) / 1000.0 - 1.0).astype(np.float32)
    out = np.empty((n, channels), dtype=np.float32)
    for ch in range(channels):
        out[:, ch] = left * (1.0 if ch == 0 else -0.5)
    return out


def _wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_records_every_frame_in_order_to_wav(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(tmp_path / "set.wav", sample_rate=48000, ring_s=0.5))
    rec.start()
    written = 0
    for _ in range(200):
        block = _pattern(written, 256)
        # Back-pressure in the test only: wait for room rather than overflowing.
        _wait(lambda: rec.backlog + 256 <= rec.config.ring_frames)
        assert rec.write(block)
        written += 256
    path = rec.stop()
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    assert sr == 48000
    assert data.shape == (written, 2)
    np.testing.assert_array_equal(data, _pattern(0, written))
    assert rec.overflows == 0


def test_full_ring_drops_whole_blocks_and_counts_them(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(tmp_path / "x.wav", sample_rate=8000, ring_s=0.128))
    cap = rec.config.ring_frames
    # Not started: nothing drains, so the ring fills and later blocks are dropped whole.
    assert rec.write(_pattern(0, cap - 100))
    assert not rec.write(_pattern(cap - 100, 200))
    assert rec.overflows == 200 and rec.overflow_blocks == 1
    assert rec.write(_pattern(cap - 100, 100))
    assert rec.backlog == cap
    rec.start()
    path = rec.stop()
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(data, _pattern(0, cap))


def test_ring_wraps_around(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(tmp_path / "w.wav", sample_rate=8000, ring_s=0.128))
    cap = rec.config.ring_frames
    rec.start()
    total = 0
    for n in (700, 333, 999, 1, 1024, 500) * 4:
        _wait(lambda n=n: rec.backlog + n <= cap)
        assert rec.write(_pattern(total, n))
        total += n
    rec.stop()
    data, _ = sf.read(rec.config.path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(data, _pattern(0, total))


def test_per_channel_writes_match_interleaved(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(tmp_path / "c.wav", sample_rate=8000, ring_s=0.128))
    cap = rec.config.ring_frames
    rec.start()
    total = 0
    for n in (1000, 77, 1024, 999) * 3:  # wraps the ring several times
        _wait(lambda n=n: rec.backlog + n <= cap)
        block = _pattern(total, n)
        assert rec.write_channels([block[:, 0].copy(), block[:, 1].copy()])
        total += n
    rec.stop()
    data, _ = sf.read(rec.config.path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(data, _pattern(0, total))


def test_flac_target_is_encoded_on_stop(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(tmp_path / "set.flac", sample_rate=44100, channels=1))
    rec.start()
    assert rec.config.live_path.exists()
    assert rec.write(_pattern(0, 44100, channels=1))
    path = rec.stop()
    assert path.suffix == ".flac" and not rec.config.live_path.exists()
    info = sf.info(path)
    assert info.format == "FLAC" and info.frames == 44100
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_allclose(data, _pattern(0, 44100, channels=1), atol=2**-22)


def test_empty_flac_take_keeps_the_empty_wav(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(tmp_path / "empty.flac"))
    rec.start()
    path = rec.stop()
    assert path == rec.config.live_path and sf.info(path).frames == 0
    assert not (tmp_path / "empty.flac").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": Path("x.mp3")},
        {"path": Path("x.wav"), "sample_rate": 100},
        {"path": Path("x.wav"), "channels": 0},
        {"path": Path("x.wav"), "flush_s": 0},
        {"path": Path("x.wav"), "ring_s": 1e9},
        {"path": Path("x.flac"), "subtype": "FLOAT"},
    ],
)
def test_bad_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(InvalidRequest):
        RecorderConfig(**kwargs)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_readable_after_sigkill_up_to_last_flush(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"killed{suffix}"
    live = RecorderConfig(target).live_path
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(ROOT), str(target)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        flushed = 0
        assert child.stdout is not None
        for line in child.stdout:
            flushed = int(line)
            if flushed >= 48000:
                break
        assert flushed >= 48000, "child never reported a second of flushed audio"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    data, sr = sf.read(live, dtype="float32", always_2d=True)
    assert sr == 48000
    assert data.shape[0] >= flushed
    np.testing.assert_array_equal(data, _pattern(0, data.shape[0]))


CHILD_SCRIPT = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from engine.takes.recorder import Recorder, RecorderConfig
from tests.test_recorder import _pattern
rec = Recorder(RecorderConfig(sys.argv[2], sample_rate=48000, flush_s=0.1))
rec.start()
written = 0
seen = 0
while True:
    if rec.backlog + 512 <= rec.config.ring_frames:
        rec.write(_pattern(written, 512))
        written += 512
    flushes = rec.flushes
    if flushes != seen:
        seen = flushes
        print(rec.flushed_frames, flush=True)
    time.sleep(0.001)
"""
