"""Live input as seed without JACK: the capture tap on a clock driven by the test, the
capturer's validation, and a whole capture (encoded, saved, selected, decoded back)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.dsp.phase import mel_to_audio
from engine.dsp.spectrogram import image_to_mel, load_image, read_loop_meta
from engine.errors import InvalidRequest, RiffError
from engine.live.capture import CaptureConfig, Capturer, CaptureTap, capacity_frames
from engine.live.control import Engine
from engine.live.state import EngineState
from engine.live.transport import Transport
from engine.model.seed_images import SeedImageLibrary
from protocols.midi.map import MidiMap
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink

RATE = 48000
PERIOD = 256


def pattern(rate: int, seconds: float = 1.0) -> np.ndarray:
    """One bar (1 s at 240 BPM) of tone bursts at irregular places: no beat shift of it
    looks like it. Stereo (channels, samples)."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    env = np.zeros(n, np.float32)
    for a, b in ((0.0, 0.08), (0.30, 0.34), (0.45, 0.57), (0.81, 0.85)):
        env[int(a * rate):int(b * rate)] = 1.0
    tone = 0.3 * np.sin(2 * np.pi * 1000 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t)
    mono = (env * tone).astype(np.float32)
    return np.stack([mono, mono])


def envelope(audio: np.ndarray, rate: int, frames: int) -> np.ndarray:
    """RMS of ``frames`` equal windows of a mono signal (10 ms each for one second)."""
    hop = audio.shape[-1] // frames
    x = audio[..., :hop * frames].reshape(frames, hop)
    return np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1))


def lag_correlation(got: np.ndarray, want: np.ndarray, lag: int) -> float:
    """Pearson correlation of ``got`` with ``want`` circularly shifted by ``lag`` frames."""
    return float(np.corrcoef(got, np.roll(want, lag))[0, 1])


class Clock:
    """The player's clock as the test moves it."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def feed(tap: CaptureTap, clock: Clock, signal: np.ndarray, periods: int,
         frame_offset: int = 1_000_000) -> None:
    """Play ``periods`` periods of ``signal`` (indexed by the clock) into the tap, as the
    audio thread does."""
    for _ in range(periods):
        pos = clock.now
        idx = np.arange(pos, pos + PERIOD) % signal.shape[1]
        tap.write([signal[0, idx], signal[1, idx]], pos, pos + frame_offset)
        clock.now += PERIOD


def test_tap_copies_exactly_the_window_on_the_clock() -> None:
    ramp = np.stack([np.arange(20000, dtype=np.float32), -np.arange(20000, dtype=np.float32)])
    tap = CaptureTap(2, 8000)
    clock = Clock()
    feed(tap, clock, ramp, 3)
    tap.arm(1000, 5001)  # neither end on a period boundary
    feed(tap, clock, ramp, 10)
    assert not tap.done
    feed(tap, clock, ramp, 10)
    assert tap.done and tap.missed == 0 and tap.written == 4001
    assert tap.start_frame == 1_000_000 + 1000
    out = tap.read(4001)
    np.testing.assert_array_equal(out[0], np.arange(1000, 5001))
    np.testing.assert_array_equal(out[1], -np.arange(1000, 5001))
    assert tap.ring.readable() == 0
    feed(tap, clock, ramp, 4)  # done: nothing more is written
    assert tap.ring.readable() == 0
    assert tap.lost == 0
    tap.disarm()
    tap.arm(clock.now + 100, clock.now + 3000)
    feed(tap, clock, ramp, 4)
    feed(tap, clock, ramp, 10, frame_offset=1_000_512)  # two cycles skipped (an xrun)
    assert tap.done and tap.written == 2900 and tap.lost == 512


def test_tap_counts_a_start_it_never_saw_and_refuses_a_second_arm() -> None:
    ramp = np.ones((2, 20000), np.float32)
    tap = CaptureTap(2, 8000)
    clock = Clock()
    clock.now = 1100
    tap.arm(1000, 3000)
    with pytest.raises(RiffError):
        tap.arm(1000, 3000)
    feed(tap, clock, ramp, 10)
    assert tap.done and tap.missed == 100 and tap.written == 1900
    tap.disarm()
    with pytest.raises(InvalidRequest):
        tap.arm(0, 9000)  # over the ring


def make_capturer(tmp_path: Path, tap: CaptureTap | None = None, tempo: float = 240.0,
                  clock: Clock | None = None) -> tuple[Capturer, Transport, EngineState]:
    clock = clock or Clock()
    state = EngineState({"tempo": tempo, "bars": 1})
    transport = Transport(clock, RATE, tempo, 4)
    transport.start()
    library = SeedImageLibrary([tmp_path / "captures"])
    # Encoded in a thread here (fast); the daemon's encoder process runs in
    # tests/test_capture_jack.py.
    config = CaptureConfig(sample_rate=RATE, folder=tmp_path / "captures",
                           encode_process=False)
    tap = tap if tap is not None else CaptureTap(2, config.capacity)
    return Capturer(tap, config, transport, state, library), transport, state


@pytest.mark.parametrize("args, reason", [
    ((0,), "capture bars must be between 1 and 16"),
    ((-2,), "capture bars must be between 1 and 16"),
    ((17,), "capture bars must be between 1 and 16"),
    ((1.5,), "capture bars must be an integer"),
    (("two",), "capture bars must be an integer"),
    ((True,), "capture bars must be an integer"),
    ((1, "../x"), "capture name must be a plain name"),
    ((1, "og_beat"), "a seed image named 'og_beat' exists"),
    ((1, 5), "a capture name is a string"),
])
def test_bad_requests_are_refused_and_change_nothing(tmp_path: Path, args: tuple[Any, ...],
                                                     reason: str) -> None:
    capturer, _, state = make_capturer(tmp_path)
    before = state.snapshot()
    with pytest.raises(InvalidRequest, match=reason.replace("(", r"\(")):
        capturer.start(*args)
    assert capturer.tap is not None and not capturer.tap.armed
    assert capturer.job is None and state.snapshot() == before
    assert not (tmp_path / "captures").exists()


def test_too_long_for_the_ring_and_stopped_transport_are_refused(tmp_path: Path) -> None:
    capturer, transport, _ = make_capturer(tmp_path, tempo=40.0)
    # 16 bars of 4/4 at 40 BPM are 96 s, over the 40.96 s ring.
    with pytest.raises(InvalidRequest, match=r"16 bars at 40 BPM last 96.0 s, over the "
                                             r"capture's 40.96 s maximum"):
        capturer.start(16)
    assert capturer.tap is not None and not capturer.tap.armed
    transport.stop()
    with pytest.raises(InvalidRequest, match="start the transport first"):
        capturer.start(1)
    assert capacity_frames(RATE) == 1_966_081


def test_an_engine_without_input_refuses_capture() -> None:
    async def body() -> None:
        clock = FakeClock()
        engine = Engine(FakeGenerator(clock), FakeSink(clock, RATE), sample_rate=RATE,
                        clock=clock)
        with pytest.raises(InvalidRequest, match="riff run --input"):
            engine.capture_start(2)
        with pytest.raises(InvalidRequest, match="capture bars must be between"):
            engine.capture_start(0)  # the bars are checked first all the same
        await engine.close()

    asyncio.run(body())


def test_a_capture_becomes_the_seed_image_and_decodes_to_what_was_played(
        tmp_path: Path) -> None:
    """The audio thread is simulated (periods written into the tap as the clock moves); the
    rest is the real thing: bar grid, ring, codec, file, state. The decoded image matches the
    bar of the signal that started on the bar line (envelope, 10 ms frames), and not the
    same signal one beat off."""
    signal = pattern(RATE)
    offset = 17_000  # the signal's phase against the player's clock: the bar line decides

    async def body() -> tuple[str, Any]:
        clock = Clock()
        capturer, _, state = make_capturer(tmp_path, clock=clock)  # bar 0 at sample 0
        clock.now = 70_000  # mid-bar: the capture starts at sample 96000 (bar 2)
        shifted = np.roll(signal, -offset, axis=1)  # signal[(pos + offset) % n] at pos
        job, future = capturer.start(1, "mine")
        assert (job.name, job.bar, job.start, job.end) == ("mine", 2, 96000, 144000)
        assert state.get("seed_image") != "mine"
        while not future.done():
            assert capturer.tap is not None
            feed(capturer.tap, clock, shifted, 8)
            await asyncio.sleep(0.001)
        name = await future
        await capturer.close()  # ends the encoder process
        return name, state.get("seed_image")

    name, current = asyncio.run(body())
    assert name == "mine" and current == "mine"
    path = tmp_path / "captures" / "mine.png"
    image = load_image(path)
    meta = read_loop_meta(image)
    assert (meta.bars, meta.beats_per_bar) == (1, 4)
    assert abs(meta.bpm - 240.0) < 240.0 * 0.011  # the image is a whole number of 10 ms
    audio = mel_to_audio(image_to_mel(image), circular=True)[0]
    frames = 100
    got = envelope(audio, 44100, frames)
    want = envelope(np.roll(signal, -(96000 + offset) % RATE, axis=1)[0], RATE, frames)
    lags = range(-40, 41)
    corr = [lag_correlation(got, want, lag) for lag in lags]
    best = list(lags)[int(np.argmax(corr))]
    assert abs(best) <= 2, (best, max(corr))
    assert lag_correlation(got, want, 0) > 0.8
    for beat in (-25, 25):  # the same bar one beat off
        assert lag_correlation(got, want, beat) < 0.4


def test_a_silent_capture_is_refused_and_selects_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        capturer, _, state = make_capturer(tmp_path, clock=clock)
        fake = FakeClock()
        engine = Engine(FakeGenerator(fake), FakeSink(fake, RATE), sample_rate=RATE,
                        clock=fake)
        assert "capturing" not in engine.status()  # no input, no capture status
        engine.capture = capturer
        idle = engine.status()
        assert (idle["capturing"], idle["capture_bar"], idle["captures"]) == ("", -1, 0)
        before = state.get("seed_image")
        job, future = capturer.start(1)
        armed = engine.status()
        assert (armed["capturing"], armed["capture_bar"], armed["captures"]) == (
            "capture-1", job.bar, 1)
        silence = np.zeros((2, RATE), np.float32)
        while not future.done():
            assert capturer.tap is not None
            feed(capturer.tap, clock, silence, 8)
            await asyncio.sleep(0.001)
        with pytest.raises(RiffError, match="is silent"):
            await future
        assert state.get("seed_image") == before and capturer.job is None
        assert capturer.last_error.startswith("capture capture-1 is silent")
        after = engine.status()
        assert after["capturing"] == "" and after["captures"] == 1
        assert str(after["error"]).startswith("capture capture-1 is silent")
        await capturer.close()
        await engine.close()

    asyncio.run(body())
    assert not (tmp_path / "captures" / "capture-1.png").exists()


def test_midi_map_capture_action() -> None:
    m = MidiMap.from_data({"note": [{"note": 37, "action": "capture", "bars": 2},
                                    {"note": 38, "action": "capture"}]})
    assert [(n.action, n.bars) for n in m.notes] == [("capture", 2), ("capture", 0)]
    assert m.notes[0].to_data() == {"note": 37, "action": "capture", "bars": 2}
    for bad in ({"note": 37, "action": "capture", "bars": 17},
                {"note": 37, "action": "play", "bars": 2},
                {"note": 37, "last": 40, "action": "capture"}):
        with pytest.raises(InvalidRequest):
            MidiMap.from_data({"note": [bad]})


def test_a_take_keeps_the_captured_seed_image_it_starts_with(tmp_path: Path) -> None:
    """A take started while a captured seed image is the seed copies it into its .seeds
    folder (riff rerender's own place to look); a built-in seed is not copied."""
    from engine.live.player import Player, PlayerConfig
    from engine.takes.recording import RecordingTaps, TakeController
    from protocols.cli.rerender import take_seed_folders

    async def body() -> None:
        clock = FakeClock()
        engine = Engine(FakeGenerator(clock), FakeSink(clock, RATE), sample_rate=RATE,
                        clock=clock)
        player = Player(PlayerConfig(sample_rate=RATE, channels=2))
        taps = RecordingTaps(Transport(player.position, RATE, tempo=120.0))
        engine.takes = TakeController(taps, tmp_path / "takes", sample_rate=RATE,
                                      state=engine.state.snapshot)
        capturer, _, _ = make_capturer(tmp_path)
        capturer.state = engine.state
        engine.capture = capturer
        engine.record_start("plain")  # og_beat: nothing to keep
        await asyncio.sleep(0.05)
        await engine.record_stop()
        folder = tmp_path / "captures"
        folder.mkdir()
        (folder / "mine.png").write_bytes(b"png")
        engine.state.set("seed_image", "mine")
        engine.record_start("set1")
        for _ in range(100):
            if (tmp_path / "takes" / "set1.seeds" / "mine.png").exists():
                break
            await asyncio.sleep(0.01)
        await engine.record_stop()
        await engine.close()

    asyncio.run(body())
    assert not (tmp_path / "takes" / "plain.seeds").exists()
    assert (tmp_path / "takes" / "set1.seeds" / "mine.png").read_bytes() == b"png"
    assert take_seed_folders(tmp_path / "takes" / "set1.jsonl") == [
        tmp_path / "takes" / "set1.seeds"]
    assert take_seed_folders(tmp_path / "takes" / "plain.jsonl") == []
