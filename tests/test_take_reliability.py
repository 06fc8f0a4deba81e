"""Takes that neither stall the loop nor break: stop off the loop, RF64 past the RIFF limit,
a full disk (a real file size limit) ending the take cleanly, ring overflow reported live."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.errors import InvalidRequest
from engine.live.player import Player, PlayerConfig
from engine.live.transport import Transport
from engine.takes.control_log import read_control_log
from engine.takes.recorder import Recorder, RecorderConfig, open_take_file
from engine.takes.recording import RecordingTaps, TakeController

ROOT = Path(__file__).resolve().parent.parent
RATE = 48000
BLOCK = 1024


def _pattern(start: int, n: int) -> np.ndarray:
    """Stereo frames whose values encode their index, so a prefix is checkable."""
    idx = np.arange(start, start + n, dtype=np.float64)
    left = ((idx % 2001) / 1000.0 - 1.0).astype(np.float32)
    return np.stack([left, -0.5 * left], axis=1)


def _controller(folder: Path) -> tuple[TakeController, Player]:
    player = Player(PlayerConfig(sample_rate=RATE, channels=2))
    taps = RecordingTaps(Transport(player.position, RATE, tempo=120.0))
    return TakeController(taps, folder, sample_rate=RATE), player


def _wait(cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_take_file_becomes_rf64_past_the_riff_limit(tmp_path: Path) -> None:
    """The file the recorder writes grows past 4 GiB without a break (a sparse file: 5 GB
    of address space, a few KB on disk); a plain WAV cannot, which is why it is RF64."""
    far = 600_000_000  # frames: 4.8 GB of float stereo
    path = tmp_path / "long.wav"
    f = open_take_file(path, RATE, 2)
    f.write(_pattern(0, 10))
    f.seek(far)
    f.write(_pattern(far, 1000))
    f.close()
    info = sf.info(path)
    assert info.format == "RF64" and info.frames == far + 1000
    with sf.SoundFile(path) as r:
        r.seek(far)
        np.testing.assert_array_equal(r.read(1000, dtype="float32"), _pattern(far, 1000))
    # The same with libsndfile's RIFF writer: the header cannot say it, the file is broken.
    plain = tmp_path / "plain.wav"
    with sf.SoundFile(plain, "w", RATE, 2, subtype="FLOAT", format="WAV") as g:
        g.write(_pattern(0, 10))
        g.seek(far)
        g.write(_pattern(far, 1000))
    assert sf.info(plain).frames != far + 1000
    path.unlink()
    plain.unlink()


def test_short_take_is_a_plain_wav_ready_to_grow(tmp_path: Path) -> None:
    """The recorder writes through open_take_file: a short take reads as a RIFF WAV (every
    reader opens it) with the room for RF64's ds64 chunk reserved (the JUNK chunk)."""
    rec = Recorder(RecorderConfig(tmp_path / "t.wav", sample_rate=RATE))
    rec.start()
    assert rec.write(_pattern(0, 4800))
    rec.stop()
    head = (tmp_path / "t.wav").read_bytes()[:16]
    assert head[:4] == b"RIFF" and head[8:16] == b"WAVEJUNK"
    data, _ = sf.read(tmp_path / "t.wav", dtype="float32")
    np.testing.assert_array_equal(data, _pattern(0, 4800))


def test_stop_finishes_off_the_loop(tmp_path: Path) -> None:
    """Stopping a long FLAC take returns at once; the loop keeps running while the writer is
    joined and the FLAC encoded; the future completes when the file is complete."""
    takes, player = _controller(tmp_path)
    takes.settle_s = 0.0  # no audio thread to wait for: the ticks below are the encoding's
    seconds = 40

    async def main() -> tuple[int, bool, tuple[Path, Path]]:
        takes.start("long.flac")
        for n in range(0, seconds * RATE, BLOCK):
            assert takes.wait_room(BLOCK)
            block = _pattern(n, BLOCK)
            takes.write_channels([block[:, 0].copy(), block[:, 1].copy()], n + BLOCK)
        future = takes.stop_async()
        assert not takes.recording
        done_at_once = future.done()
        ticks = 0
        while not future.done():
            ticks += 1
            await asyncio.sleep(0)
        return ticks, done_at_once, future.result()

    ticks, done_at_once, (audio, log) = asyncio.run(main())
    assert not done_at_once
    assert ticks > 20  # the loop ran other work meanwhile (thousands in practice)
    assert audio.name == "long.flac" and not (tmp_path / "long.recording.wav").exists()
    assert sf.info(audio).frames == len(range(0, seconds * RATE, BLOCK)) * BLOCK
    assert read_control_log(log).complete
    del player


def test_ring_overflow_is_logged_as_it_happens(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Dropped blocks show in the take's status and in the log while recording, not at stop,
    and the log line is rate-limited."""
    takes, _ = _controller(tmp_path)
    caplog.set_level(logging.WARNING, logger="engine.takes.recorder")
    takes.start("ovf")
    ring = takes.taps.recording.recorder.config.ring_frames  # type: ignore[union-attr]
    big = np.zeros(ring + 1, np.float32)  # never fits: dropped whole, counted
    takes.write_channels([big, big], ring + 1)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "ring overflow" in r.getMessage()]

    _wait(lambda: len(lines()) == 1)
    assert takes.status()["record_dropped"] == ring + 1 and takes.recording
    takes.write_channels([big, big], 2 * ring + 2)
    time.sleep(0.3)
    assert len(lines()) == 1  # at most one line per Recorder.overflow_log_s (5 s)
    assert takes.status()["record_dropped"] == 2 * (ring + 1)
    takes.stop()


DISK_FULL = textwrap.dedent("""
    import asyncio, json, resource, signal, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests.test_take_reliability import BLOCK, _controller, _pattern
    from engine.errors import InvalidRequest
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), hard))

    async def main():
        takes, _ = _controller(sys.argv[2])
        takes.start("full")
        fed = 0
        while takes.recording and fed < 100 * 48000:
            if takes.wait_room(BLOCK, timeout=0.01):
                block = _pattern(fed, BLOCK)
                takes.write_channels([block[:, 0].copy(), block[:, 1].copy()], fed + BLOCK)
                fed += BLOCK
            await asyncio.sleep(0)   # the loop ends the failed take
        status = takes.status()
        await takes.drain()
        try:
            takes.stop_async()
            again = ""
        except InvalidRequest as exc:
            again = str(exc)
        print(json.dumps({"fed": fed, "status": status, "again": again,
                          "recording": takes.recording}))

    asyncio.run(main())
""")


def test_disk_full_ends_the_take_cleanly(tmp_path: Path) -> None:
    """A real write error (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) ends the take at
    once, while frames are still coming: the reason is in the status, the take is no longer
    fed, the log is closed, and every frame written before the failure reads back."""
    limit = 1_000_000
    r = subprocess.run([sys.executable, "-c", DISK_FULL, str(ROOT), str(tmp_path), str(limit)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["recording"] and out["fed"] < 100 * RATE  # ended by the failure itself
    error = out["status"]["record_error"]
    assert "full.wav" in error and "File too large" in error
    assert "not recording (the last take stopped: " in out["again"]
    assert "recording to" in r.stderr and "failed: [Errno 27]" in r.stderr  # logged at once
    assert "stopped:" in r.stderr
    data, rate = sf.read(tmp_path / "full.wav", dtype="float32", always_2d=True)
    assert rate == RATE and 0.8 * limit / 8 < data.shape[0] <= limit / 8
    np.testing.assert_array_equal(data, _pattern(0, data.shape[0]))
    assert read_control_log(tmp_path / "full.jsonl").complete


LOG_FULL = textwrap.dedent("""
    import asyncio, json, resource, signal, sys
    sys.path.insert(0, sys.argv[1])
    from tests.test_take_reliability import BLOCK, _pattern
    from engine.live.player import Player, PlayerConfig
    from engine.live.state import EngineState
    from engine.live.transport import Transport
    from engine.takes.recording import RecordingTaps, TakeController
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), hard))

    async def main():
        player = Player(PlayerConfig(sample_rate=48000, channels=2))
        state = EngineState()
        taps = RecordingTaps(Transport(player.position, 48000, tempo=120.0))
        state.add_listener(taps.on_state_change)
        takes = TakeController(taps, sys.argv[2], sample_rate=48000, state=state.snapshot)
        takes.start("logfull")
        for n in range(0, 10 * BLOCK, BLOCK):
            block = _pattern(n, BLOCK)
            takes.write_channels([block[:, 0].copy(), block[:, 1].copy()], n + BLOCK)
        changes = 0
        while takes.recording and changes < 5000:
            state.set("prompt", "x" * 400 + str(changes))  # never raises into the engine
            changes += 1
            await asyncio.sleep(0)
        await takes.drain()
        print(json.dumps({"changes": changes, "status": takes.status(),
                          "prompt": state.get("prompt")}))

    asyncio.run(main())
""")


def test_control_log_write_error_ends_the_take_not_the_engine(tmp_path: Path) -> None:
    """The take's control log hits the limit first (parameter changes, no audio): the state
    change still applies, the take ends with the reason, both files read back."""
    r = subprocess.run([sys.executable, "-c", LOG_FULL, str(ROOT), str(tmp_path), "200000"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["changes"] < 5000 and not out["status"]["recording"]
    assert out["prompt"] == "x" * 400 + str(out["changes"] - 1)
    assert "logfull.jsonl" in out["status"]["record_error"]
    assert "File too large" in out["status"]["record_error"]
    data, _ = sf.read(tmp_path / "logfull.wav", dtype="float32", always_2d=True)
    np.testing.assert_array_equal(data, _pattern(0, 10 * BLOCK))
    control = read_control_log(tmp_path / "logfull.jsonl")
    assert len(control.events) > 100 and not control.complete


def test_not_recording_error_names_no_failure_by_default(tmp_path: Path) -> None:
    takes, _ = _controller(tmp_path)
    with pytest.raises(InvalidRequest, match=r"^not recording$"):
        takes.stop_async()
    assert takes.status() == {"recording": 0, "record_dropped": 0, "record_error": ""}
