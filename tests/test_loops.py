"""Bars and meters are music: N-bar clips are generated as N bars (the seed image widened
circularly at its tempo), other meters come from seed images in that meter, and nothing is
ever cut mid-bar. Real seed images, the real pipeline with the tiny model, the real conform;
the control plane with a fake clock and generator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import scipy.signal
import torch

from engine.dsp.spectrogram import LoopMeta, read_loop_meta
from engine.errors import InvalidRequest
from engine.live.clip import conform_image, loop_frames
from engine.live.control import Engine
from engine.live.jobs import ClipSpec
from engine.live.planner import JamPlanner
from engine.live.scheduler import SchedulerConfig
from engine.live.state import EngineState, defaults
from engine.model.pipeline import RiffusionGenerator
from engine.model.seed_images import MAX_CLIP_WIDTH, SeedImageLibrary, widen
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink

SR = 48000


@pytest.fixture(scope="module")
def library() -> SeedImageLibrary:
    return SeedImageLibrary()


def test_widen_repeats_whole_bars_at_the_seeds_tempo(library: SeedImageLibrary) -> None:
    seed = library.load("og_beat")  # 2 bars of 4/4 in 512 px
    meta = read_loop_meta(seed)
    pixels = np.asarray(seed)
    four = np.asarray(widen(seed, meta, 1024))
    np.testing.assert_array_equal(four[:, :512], pixels)  # the seed twice: the same tempo
    np.testing.assert_array_equal(four[:, 512:], pixels)
    np.testing.assert_array_equal(np.asarray(widen(seed, meta, 256)), pixels[:, :256])  # bar 1
    three = np.asarray(widen(seed, meta, 768))
    np.testing.assert_array_equal(three[:, 512:], pixels[:, :256])
    # 300 px a bar: one bar is tiled exactly, then fitted to the model's 8 px grid (304).
    slow = library.load("slow_groove_80")
    one = widen(slow, read_loop_meta(slow), 304)
    assert one.size == (304, 512)
    assert library.loop("slow_groove_80").clip_width(1) == 304


def test_planner_sizes_clips_in_bars_and_picks_the_meters_seed(
        library: SeedImageLibrary) -> None:
    planner = JamPlanner(loops=library)
    state = defaults()
    for bars, width in ((1, 256), (2, 512), (4, 1024), (16, 4096)):
        request, _ = planner.plan({**state, "bars": bars}, None)
        assert (request.seed_image_id, request.width) == ("og_beat", width)
    # 3/4: og_beat is 4/4, so the meter's own seed plays (200 px a bar at 90 BPM).
    request, _ = planner.plan({**state, "bars": 3, "meter": 3}, None)
    assert (request.seed_image_id, request.width) == ("waltz_90", 600)
    request, _ = planner.plan({**state, "bars": 2}, None, bars=2, meter=6)
    assert (request.seed_image_id, request.width) == ("compound_6_8", 400)
    # A seed image in the clip's meter is the performer's choice.
    request, _ = planner.plan({**state, "seed_image": "breakbeat_100", "bars": 1}, None)
    assert (request.seed_image_id, request.width) == ("breakbeat_100", 240)
    # No library: the request keeps the seed's width (the conform fits its bars).
    assert JamPlanner().plan({**state, "bars": 4}, None)[0].width is None
    with pytest.raises(InvalidRequest, match=f"{MAX_CLIP_WIDTH} px maximum"):
        planner.plan({**state, "seed_image": "slow_groove_80", "bars": 16}, None)


def test_meters_and_widths_are_checked_when_they_change(library: SeedImageLibrary) -> None:
    clock = FakeClock()
    state = EngineState({"tempo": 120.0, "bars": 2})
    engine = Engine(FakeGenerator(clock), FakeSink(clock, SR), sample_rate=SR, clock=clock,
                    state=state, seed_loops=library)
    with pytest.raises(InvalidRequest, match=r"no seed image has 5 beats per bar .*3, 4, 6"):
        state.set("meter", 5)
    assert state.get("meter") == 4
    state.set("meter", 3)  # waltz_90 is in 3/4: accepted, it plays while og_beat is chosen
    with pytest.raises(InvalidRequest, match=r"'breakbeat_100' has 4 beats per bar .*meter 4"):
        state.set("seed_image", "breakbeat_100")
    state.set("seed_image", "waltz_90")
    state.set("meter", 4)  # og_beat (the 4/4 default) plays; waltz_90 stays chosen
    assert engine.planner.plan(state.snapshot(), None)[0].seed_image_id == "og_beat"
    state.set("seed_image", "slow_groove_80")
    with pytest.raises(InvalidRequest, match=r"16 bars .* need 4800 px"):
        state.set("bars", 16)
    state.update({"seed_image": "og_beat", "bars": 16})  # together: 4096 px, fits
    # A start state that cannot be played is refused at once; a start in 3/4 with the
    # default (4/4) seed image plays the 3/4 seed.
    with pytest.raises(InvalidRequest, match="no seed image has 7"):
        Engine(FakeGenerator(clock), FakeSink(clock, SR), sample_rate=SR, clock=clock,
               state=EngineState({"meter": 7}), seed_loops=library)
    waltz = Engine(FakeGenerator(clock), FakeSink(clock, SR), sample_rate=SR, clock=clock,
                   state=EngineState({"meter": 3}), seed_loops=library)
    assert waltz.planner.plan(waltz.state.snapshot(), None)[0].seed_image_id == "waltz_90"


def test_a_meter_change_retargets_planned_clips_to_the_meters_seed(
        library: SeedImageLibrary) -> None:
    clock = FakeClock()
    gen = FakeGenerator(clock, step_s=0.1)
    sink = FakeSink(clock, SR)
    state = EngineState({"tempo": 120.0, "bars": 1, "steps": 5})
    engine = Engine(gen, sink, sample_rate=SR, clock=clock, state=state, seed_loops=library,
                    config=SchedulerConfig(lookahead=2, margin_s=0.03, max_tick_s=0.1))

    async def main() -> None:
        task = asyncio.ensure_future(engine.run())
        engine.play()
        await clock.advance(5.0)
        state.set("meter", 3)
        await clock.advance(8.0)
        await engine.close()
        assert task.done()

    asyncio.run(main())
    fours = [s.clip for s in sink.scheduled if s.clip.spec.beats_per_bar == 4]
    threes = [s.clip for s in sink.scheduled if s.clip.spec.beats_per_bar == 3]
    assert fours and threes
    assert {(c.request.seed_image_id, c.request.width) for c in fours} == {("og_beat", 256)}
    assert {(c.request.seed_image_id, c.request.width) for c in threes} == {("waltz_90", 200)}
    for s in sink.scheduled:  # every clip on a bar line of its own meter
        assert s.start == engine.transport.bar_start(engine.transport.bar_at(s.start))


def test_loop_frames_take_whole_bars_never_cutting_one() -> None:
    mel = np.arange(512, dtype=np.float32)[None, None, :]  # frame index as value
    meta = LoopMeta(bars=2, beats_per_bar=4, bpm=93.75)
    # 3 bars of 3/4 from 2 bars of 4/4: three whole bars of the image, one per clip bar
    # (by beats it would have been 9 beats: bar 3 cut after its first beat).
    three = loop_frames(mel, meta, ClipSpec(90.0, 3, 3, SR, 3 * 96000))
    assert three.shape[-1] == 768
    bar = 256
    np.testing.assert_array_equal(three[0, 0, ::bar], [0, 256, 0])  # each clip bar, a downbeat
    one = loop_frames(mel, meta, ClipSpec(120.0, 1, 4, SR, 96000))
    np.testing.assert_array_equal(one[0, 0], np.arange(256))  # bar 1, whole


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def halves_similarity(audio: np.ndarray) -> float:
    """Correlation of the log spectrograms of a clip's two halves (1.0: the same music)."""
    mono = audio.mean(axis=1)
    half = mono.size // 2
    specs = [np.log1p(np.abs(scipy.signal.stft(part, nperseg=1024)[2]))
             for part in (mono[:half], mono[half:2 * half])]
    a, b = (s - s.mean() for s in specs)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_a_four_bar_clip_is_four_bars_of_new_music(library: SeedImageLibrary,
                                                    one_thread: None) -> None:
    """The 4-bar clip the live planner asks for, generated by the real pipeline (tiny model)
    and conformed: its halves are different music. Before, the clip was the 2-bar image
    repeated: its halves were the same (the baseline below, same model and seeds)."""
    gen = RiffusionGenerator.load("tiny", device="cpu")
    state = {**defaults(), "bars": 4, "steps": 2, "seed": 11}
    request, _ = JamPlanner(loops=library).plan(state, None)
    assert request.width == 1024
    spec = ClipSpec(120.0, 4, 4, SR, 4 * 96000)
    result = gen.generate(request)
    assert result.image.size == (1024, 512)
    assert read_loop_meta(result.image) == LoopMeta(bars=4, beats_per_bar=4, bpm=93.75)
    clip = conform_image(result.image, spec, request, seed_images=library)
    old_request = request.replace(width=None)
    old = gen.generate(old_request)
    old_clip = conform_image(old.image, spec, old_request, seed_images=library)
    new_similarity, old_similarity = halves_similarity(clip), halves_similarity(old_clip)
    print(f"halves similarity: {new_similarity:.3f} (before: {old_similarity:.3f})")
    assert old_similarity > 0.9, old_similarity  # two copies of the same two bars
    assert new_similarity < 0.5, new_similarity  # four bars, none a copy
