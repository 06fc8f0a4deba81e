"""A take end to end: remote generation into the real player, recorded with its control log,
then re-rendered from the log to the very same samples."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.errors import InvalidRequest
from engine.live.jobs import ClipSpec, GenerationJob
from engine.live.player import Player, PlayerConfig
from engine.live.state import EngineState
from engine.live.transport import Transport
from engine.live.wire import parse_request
from engine.takes.control_log import ClipStartEvent, CommandEvent, GenerationEvent, read_control_log
from engine.takes.recording import (
    Recording,
    RecordingTaps,
    TakeController,
    bar_position,
    recording_paths,
)
from engine.takes.rerender import rerender
from protocols.http.app import ServeConfig, create_app
from protocols.remote import make_remote_generator
from tests.http_support import GatedBackend, serving, shared_renderer, wait_for

RATE = 48000
BLOCK = 256


def job(job_id: int, seed: int, transport: Transport, bar: int) -> GenerationJob:
    body = {"alpha": 0.5, "num_inference_steps": 2, "width": 192, "seed_image_id": "og_beat",
            "start": {"prompt": "funk", "seed": seed}, "end": {"prompt": "jazz", "seed": seed + 1}}
    spec = ClipSpec(tempo=transport.tempo, bars=1, beats_per_bar=4, sample_rate=RATE,
                    num_samples=transport.clip_samples(bar, 1))
    return GenerationJob(job_id=job_id, request=parse_request(body), spec=spec, start_bar=bar,
                         created=0.0)


def test_remote_take_is_recorded_and_rerenders_identically(tmp_path: Path) -> None:
    renderer = shared_renderer()
    player = Player(PlayerConfig(sample_rate=RATE, channels=2, crossfade_samples=480))
    transport = Transport(player.position, RATE, tempo=120.0)
    state = EngineState()
    block = np.zeros((2, BLOCK), np.float32)

    def play_until(sample: int) -> None:  # stands in for the JACK callback
        while player.position() < sample:
            player.render([block[0], block[1]])
            # Faster than real time here: wait for the writer instead of overflowing the ring.
            wait_for(lambda: take.recorder.backlog + BLOCK <= take.recorder.config.ring_frames,
                     what="room in the recorder's ring")
            assert take.write(block.T.copy())
            player.poll()

    with serving(create_app(GatedBackend(renderer, gated=False), ServeConfig())) as url:
        take = Recording.start(tmp_path / "take.wav", sample_rate=RATE, channels=2,
                               state=state.snapshot(),
                               info={"model": "tiny", "crossfade_samples": 480})
        taps = RecordingTaps(transport, take)
        state.add_listener(taps.on_state_change)
        generator = taps.generator(make_remote_generator(url))
        sink = taps.sink(player)

        async def perform() -> None:
            state.set("alpha", 0.5)
            sink.schedule(await generator.generate(job(1, 10, transport, 0)), 0)
            play_until(transport.bar_start(1) + 1000)
            clip = await generator.generate(job(2, 20, transport, 2))
            play_until(transport.bar_start(2) - 5 * BLOCK)
            sink.schedule(clip, transport.bar_start(2))
            play_until(transport.bar_start(3))
            sink.schedule(clip, transport.bar_start(3))  # an explicit repeat
            play_until(transport.bar_start(3) + RATE // 2)
            sink.stop()
            play_until(transport.bar_start(4))

        asyncio.run(perform())
        end = player.position()
        audio_path, log_path = take.stop(sample=end, bar=bar_position(transport, end))
    assert take.recorder.overflows == 0
    control = read_control_log(log_path)
    assert control.complete and control.header.audio == "take.wav"
    assert [e.job for e in control.of_type(GenerationEvent)] == ["1", "2"]
    starts = control.of_type(ClipStartEvent)
    assert [(e.job, e.sample, e.bar) for e in starts] == [
        ("1", 0, 0.0), ("2", 192000, 2.0), ("2", 288000, 3.0)]
    commands = [(e.name, e.args) for e in control.of_type(CommandEvent)]
    assert commands == [("alpha", (0.5,)), ("/riff/stop", ())]

    recorded, rate = sf.read(audio_path, dtype="float32", always_2d=True)
    assert rate == RATE and recorded.shape[0] == end
    assert np.abs(recorded[: transport.bar_start(3)]).min(axis=1).max() > 0  # no gap
    again = rerender(control, tmp_path / "again.wav", renderer.render_clip)
    rerendered, _ = sf.read(again.path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(rerendered, recorded)


def test_recording_paths(tmp_path: Path) -> None:
    audio, log = recording_paths(tmp_path / "x.flac")
    assert (audio.name, log.name) == ("x.flac", "x.jsonl")
    audio, log = recording_paths(tmp_path)
    assert audio.parent == tmp_path and audio.name.startswith("set-") and log.suffix == ".jsonl"


def test_take_controller_starts_and_stops_takes(tmp_path: Path) -> None:
    player = Player(PlayerConfig(sample_rate=RATE, channels=2))
    transport = Transport(player.position, RATE, tempo=120.0)
    state = EngineState()
    taps = RecordingTaps(transport)
    state.add_listener(taps.on_state_change)
    takes = TakeController(taps, tmp_path / "takes", sample_rate=RATE, state=state.snapshot,
                           info={"model": "tiny"})
    left, right = np.full(BLOCK, 0.25, np.float32), np.full(BLOCK, -0.5, np.float32)
    takes.write_channels([left, right])  # not recording: ignored
    state.set("alpha", 0.25)  # not recording: not logged
    path = takes.start("set1")
    assert path == tmp_path / "takes" / "set1.wav" and takes.recording
    with pytest.raises(InvalidRequest, match="already recording"):
        takes.start()
    state.set("alpha", 0.75)
    for _ in range(10):
        player.render([np.zeros(BLOCK, np.float32)] * 2)  # the clock moves on
        takes.write_channels([left, right])
    audio, log = takes.stop()
    assert not takes.recording
    data, _ = sf.read(audio, dtype="float32", always_2d=True)
    assert data.shape == (10 * BLOCK, 2) and (data == [0.25, -0.5]).all()
    control = read_control_log(log)
    assert control.complete and control.header.state["alpha"] == 0.25
    assert [(e.name, e.args) for e in control.of_type(CommandEvent)] == [("alpha", (0.75,))]
    assert control.events[-1].sample == 10 * BLOCK
    with pytest.raises(InvalidRequest, match="not recording"):
        takes.stop()
    for bad in ("../x", "/etc/passwd.wav", "a/b.flac", ".."):
        with pytest.raises(InvalidRequest):
            takes.start(bad)
    with pytest.raises(FileExistsError):
        takes.start("set1.wav")
    assert takes.start("set2.flac").name == "set2.flac"
    takes.write_channels([left, right])
    takes.stop()
    assert sf.info(tmp_path / "takes" / "set2.flac").frames == BLOCK


def test_a_clip_from_the_cache_is_logged_with_its_generation_line(tmp_path: Path) -> None:
    """The scheduler's clip cache answers a repeated request without the generator: the take
    must still hold that job's request, or it could not be re-rendered."""
    from engine.live.jobs import Clip

    player = Player(PlayerConfig(sample_rate=RATE))
    transport = Transport(player.position, RATE, 120.0, 4)
    take = Recording.start(tmp_path / "take.wav", sample_rate=RATE, channels=2,
                           state=EngineState().as_dict())
    taps = RecordingTaps(transport, take)
    sink = taps.sink(player)
    j = job(7, 42, transport, 1)
    clip = Clip(7, np.zeros((j.spec.num_samples, 2), np.float32), j.spec, j.request, 0.0)
    sink.schedule(clip, transport.bar_start(1))  # never passed through the generator
    sink.schedule(clip, transport.bar_start(2))  # a repeat: one generation line only
    _, log_path = take.stop(sample=transport.bar_start(3), bar=3.0)
    events = read_control_log(log_path).events
    gens = [e for e in events if isinstance(e, GenerationEvent)]
    starts = [e for e in events if isinstance(e, ClipStartEvent)]
    assert [g.job for g in gens] == ["7"] and gens[0].request == j.request
    assert [s.job for s in starts] == ["7", "7"]
