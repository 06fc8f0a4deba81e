"""The bar-timeline player, sample by sample, with synthetic clips (no JACK needed)."""

from __future__ import annotations

import dataclasses
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRequest
from engine.live.player import Player, PlayerConfig


@dataclasses.dataclass
class Clip:
    audio: np.ndarray
    name: str = ""


def ramp_clip(length: int, offset: float = 0.0, channels: int = 2) -> Clip:
    """A clip whose every sample is distinct: value = offset + index / 1000."""
    one = (offset + np.arange(length) / 1000).astype(np.float32)
    return Clip(np.tile(one[:, None], (1, channels)))


def const_clip(value: float, length: int = 100) -> Clip:
    return Clip(np.full((length, 2), value, np.float32))


def render(player: Player, frames: int, block: int = 64) -> np.ndarray:
    out = np.zeros((2, frames), np.float32)
    done = 0
    while done < frames:
        n = min(block, frames - done)
        player.render([out[0, done:done + n], out[1, done:done + n]])
        done += n
    return out


def hard(**kw: int) -> Player:
    return Player(PlayerConfig(crossfade_samples=0, **kw))


def test_silence_before_first_clip_then_exact_start() -> None:
    p = hard()
    clip = ramp_clip(50, offset=1.0)
    p.schedule(clip, 100)
    out = render(p, 200, block=37)
    assert np.all(out[:, :100] == 0)
    assert out[0, 100] == clip.audio[0, 0]
    np.testing.assert_array_equal(out[:, 100:150], clip.audio.T)
    # Silence before the first clip is by design, not an underrun.
    assert p.counters()["silent"] >= 1 and p.counters()["underruns"] == 0
    ev = p.poll()
    assert ev.started == [(clip, 100)]


def test_loop_wraps_and_counts_loops() -> None:
    p = hard()
    clip = ramp_clip(100, offset=1.0)
    p.schedule(clip, 0)
    out = render(p, 350, block=33)
    np.testing.assert_array_equal(out, np.tile(clip.audio.T, (1, 4))[:, :350])
    assert p.counters()["loops"] == 3
    assert p.position() == 350


def test_change_exactly_at_start_sample() -> None:
    p = hard()
    a, b = ramp_clip(100, 1.0), ramp_clip(80, 5.0)
    p.schedule(a, 0)
    p.schedule(b, 250)  # mid-loop of a: a plays 2.5 times, then b from its sample 0
    out = render(p, 400, block=64)
    np.testing.assert_array_equal(out[:, :250], np.tile(a.audio.T, (1, 3))[:, :250])
    np.testing.assert_array_equal(out[:, 250:330], b.audio.T)
    np.testing.assert_array_equal(out[:, 330:400], b.audio.T[:, :70])
    ev = p.poll()
    assert [(c.audio[0, 0], s) for c, s in ev.started] == [(1.0, 0), (5.0, 250)]
    assert ev.finished == [a]


def test_equal_power_crossfade_ends_on_the_start_sample() -> None:
    xf = 64
    p = Player(PlayerConfig(crossfade_samples=xf))
    p.schedule(const_clip(1.0), xf)
    p.schedule(const_clip(0.0), 200)
    fade_out = render(p, 400)[0]
    q = Player(PlayerConfig(crossfade_samples=xf))
    q.schedule(const_clip(0.0), xf)
    q.schedule(const_clip(1.0), 200)
    fade_in = render(q, 400)[0]
    # Before the pre-roll: the old clip only (the first clip faded in over its own pre-roll).
    assert np.all(fade_out[xf:200 - xf] == 1.0) and np.all(fade_in[:200 - xf] == 0.0)
    # The fade is [200 - xf, 200): the new clip begins it at gain 0 and is at full level on
    # the start sample, the old one is gone there.
    assert fade_in[200 - xf] == 0.0 and 0.0 < fade_in[201 - xf] < 0.1
    assert fade_out[199 - xf] == 1.0 and fade_in[200] == 1.0 and fade_out[200] == 0.0
    assert np.all(fade_in[200:] == 1.0) and np.all(fade_out[200:] == 0.0)
    g_in, g_out = fade_in[200 - xf:200], fade_out[200 - xf:200]
    np.testing.assert_allclose(g_in**2 + g_out**2, 1.0, atol=1e-6)
    assert np.all(np.diff(g_in) > 0) and np.all(np.diff(g_out) < 0)
    # The first clip fades in from silence the same way, ending on its start sample.
    np.testing.assert_allclose(fade_out[:xf], g_in, atol=1e-7)
    assert p.counters()["short_fades"] == 0 and q.counters()["late"] == 0


def test_click_on_the_downbeat_is_at_full_level_on_the_bar_line() -> None:
    """A clip whose sample 0 is a click (a kick's attack): the output sample on the bar line
    is that click at full gain, and the fade happened before it, from the new clip's tail."""
    xf, line = 48, 1000
    p = Player(PlayerConfig(crossfade_samples=xf))
    bed = const_clip(0.25, 300)
    p.schedule(bed, 0)
    audio = np.full((400, 2), 0.01, np.float32)
    audio[0] = 0.9  # the click
    audio[-xf:] = np.linspace(0.02, 0.05, xf, dtype=np.float32)[:, None]  # a distinct tail
    click = Clip(audio)
    p.schedule(click, line)
    out = render(p, 1600, block=37)[0]
    assert out[line] == audio[0, 0]  # the click, at full gain, exactly on the line
    np.testing.assert_array_equal(out[line:line + 400], audio[:, 0])
    k = np.arange(xf)
    g_in = np.sin(k / xf * np.pi / 2).astype(np.float32)
    g_out = np.cos(k / xf * np.pi / 2).astype(np.float32)
    expect = audio[-xf:, 0] * g_in + 0.25 * g_out  # the click clip's pre-roll is its tail
    np.testing.assert_allclose(out[line - xf:line], expect, rtol=1e-6)
    assert np.all(out[xf:line - xf] == 0.25)
    assert p.poll().started[-1] == (click, line)


def test_restart_of_the_same_audio_is_at_full_level_on_the_line() -> None:
    """A repeat that restarts a clip on a bar line (a new clip object with the same audio, as
    the scheduler's restart on a new grid): the fade is over the pre-roll, sample 0 is at
    full level on the line, mid-loop of the old pass."""
    xf = 20
    p = Player(PlayerConfig(crossfade_samples=xf))
    a = ramp_clip(100, 1.0)
    p.schedule(a, 0)
    again = Clip(a.audio)
    p.schedule(again, 150)  # mid-loop: the old pass is at index 50 there
    out = render(p, 300, block=16)[0]
    k = np.arange(xf)
    g_in = np.sin(k / xf * np.pi / 2).astype(np.float32)
    g_out = np.cos(k / xf * np.pi / 2).astype(np.float32)
    expect = a.audio[80:100, 0] * g_in + a.audio[30:50, 0] * g_out
    np.testing.assert_allclose(out[130:150], expect, rtol=1e-6)
    np.testing.assert_array_equal(out[150:250], a.audio[:, 0])


def test_crossfade_continues_old_clip_loop() -> None:
    xf = 20
    p = Player(PlayerConfig(crossfade_samples=xf))
    a, b = ramp_clip(100, 1.0), ramp_clip(100, 5.0)
    p.schedule(a, 0)  # from silence at sample 0: no pre-roll to fade over, a hard start
    p.schedule(b, 100 + xf)
    out = render(p, 200 + xf, block=7)[0]
    np.testing.assert_array_equal(out[:100], a.audio[:, 0])
    k = np.arange(xf)
    g_in = np.sin(k / xf * np.pi / 2)
    g_out = np.cos(k / xf * np.pi / 2)
    # b's pre-roll is its own tail; a wraps to its start at 100, inside the fade.
    expect = b.audio[100 - xf:, 0] * g_in + a.audio[:xf, 0] * g_out
    np.testing.assert_allclose(out[100:100 + xf], expect, rtol=1e-6)
    np.testing.assert_array_equal(out[100 + xf:200 + xf], b.audio[:, 0])


def test_clip_seen_inside_its_pre_roll_fades_shorter_and_keeps_the_downbeat() -> None:
    xf = 64
    p = Player(PlayerConfig(crossfade_samples=xf))
    p.schedule(const_clip(1.0), 0)
    render(p, 180)  # the pre-roll of a clip at 200 began at 136
    new = ramp_clip(100, 5.0)
    p.schedule(new, 200)
    out = render(p, 120, block=16)[0]
    k = np.arange(20)
    g_in = np.sin(k / 20 * np.pi / 2).astype(np.float32)
    g_out = np.cos(k / 20 * np.pi / 2).astype(np.float32)
    np.testing.assert_allclose(out[:20], new.audio[80:, 0] * g_in + g_out, rtol=1e-6)
    np.testing.assert_array_equal(out[20:120], new.audio[:, 0])  # sample 0 on 200
    c = p.counters()
    assert c["short_fades"] == 1 and c["late"] == 0
    # Seen exactly on its start sample: hard there, never shifted.
    q = Player(PlayerConfig(crossfade_samples=xf))
    q.schedule(const_clip(1.0), 0)
    render(q, 200)
    q.schedule(new, 200)
    np.testing.assert_array_equal(render(q, 100)[0], new.audio[:, 0])
    assert q.counters()["short_fades"] == 1 and q.counters()["late"] == 0


def test_late_clip_fades_in_phase_locked_from_where_it_is_seen() -> None:
    xf = 16
    p = Player(PlayerConfig(crossfade_samples=xf))
    p.schedule(const_clip(1.0), 0)
    render(p, 100)
    late = ramp_clip(40, 5.0)
    p.schedule(late, 90)
    out = render(p, 100)[0]
    k = np.arange(xf)
    g_in = np.sin(k / xf * np.pi / 2).astype(np.float32)
    g_out = np.cos(k / xf * np.pi / 2).astype(np.float32)
    idx = (np.arange(100, 200) - 90) % 40
    np.testing.assert_allclose(out[:xf], late.audio[idx[:xf], 0] * g_in + g_out, rtol=1e-6)
    np.testing.assert_array_equal(out[xf:], late.audio[idx[xf:], 0])
    assert p.counters()["late"] == 1


def test_latest_wins_at_same_start() -> None:
    p = hard()
    p.schedule(const_clip(1.0), 0)
    p.schedule(const_clip(2.0), 50)
    newer = const_clip(3.0)
    p.schedule(newer, 50)
    out = render(p, 100)
    assert np.all(out[:, 50:] == 3.0)
    assert p.counters()["superseded"] == 1
    ev = p.poll()
    assert [s for _, s in ev.started] == [0, 50]
    assert ev.started[1][0] is newer


def test_late_clip_starts_at_once_phase_locked() -> None:
    p = hard()
    p.schedule(const_clip(1.0), 0)
    render(p, 100)
    late = ramp_clip(40, 5.0)
    p.schedule(late, 90)  # 10 samples ago
    out = render(p, 100)[0]
    # It starts with the next block, reading where it would be had it started at 90.
    expect = late.audio[(np.arange(100, 200) - 90) % 40, 0]
    np.testing.assert_array_equal(out, expect)
    assert p.counters()["late"] == 1
    assert p.poll().started[-1] == (late, 90)


def test_of_several_late_clips_the_latest_start_wins() -> None:
    p = hard()
    render(p, 100)
    p.schedule(const_clip(1.0), 20)
    p.schedule(const_clip(2.0), 60)
    p.schedule(const_clip(3.0), 40)
    out = render(p, 10)
    assert np.all(out == 2.0)
    assert p.counters()["superseded"] == 2


def test_clip_published_during_render_starts_next_block() -> None:
    """A clip published while a block renders that should have started inside it starts at
    the next block, phase-locked; the rest of that block keeps the current clip."""
    p = hard()
    p.schedule(const_clip(1.0), 0)
    late = ramp_clip(1000, 2.0)
    original = p._copy_loop
    fired = []

    def racing_copy(*args: object) -> None:
        original(*args)  # type: ignore[arg-type]
        if not fired:  # the control thread publishes while this block renders
            fired.append(True)
            p.schedule(late, 10)

    p._copy_loop = racing_copy  # type: ignore[method-assign]
    first = render(p, 64)
    second = render(p, 64)
    assert np.all(first == 1.0)
    np.testing.assert_array_equal(second[0], late.audio[54:118, 0])
    assert p.counters()["late"] == 1


def test_rescheduling_the_playing_clip_is_a_repeat() -> None:
    p = Player(PlayerConfig(crossfade_samples=16))
    a = ramp_clip(100, 1.0)
    p.schedule(a, 0)
    render(p, 100)
    p.schedule(a, 100)  # the scheduler's explicit repeat at the bar line
    p.schedule(a, 200)
    out = render(p, 200)
    np.testing.assert_array_equal(out, np.tile(a.audio.T, (1, 2)))  # no crossfade swell
    c = p.counters()
    assert c["repeats"] == 2 and c["started"] == 1


def test_stop_fades_out_and_drops_queued_clips() -> None:
    xf = 32
    p = Player(PlayerConfig(crossfade_samples=xf))
    p.schedule(const_clip(1.0), 0)
    p.schedule(const_clip(2.0), 300)
    render(p, 100)
    p.stop()
    out = render(p, 400)[0]
    np.testing.assert_allclose(out[:xf], np.cos(np.arange(xf) / xf * np.pi / 2), atol=1e-6)
    assert np.all(out[xf:] == 0.0)
    assert p.counters()["dropped"] == 1
    assert p.position() == 500
    p.schedule(const_clip(3.0), 600)  # playing again after a stop
    out = render(p, 200)[0]
    # It fades in over its pre-roll, at full level from its start sample.
    assert np.all(out[:100 - xf] == 0.0) and np.all(out[100:] == 3.0)
    np.testing.assert_allclose(out[100 - xf:100], 3 * np.sin(np.arange(xf) / xf * np.pi / 2),
                               rtol=1e-6)
    # The silence after stop (and before the next clip) is by design: not an underrun.
    assert p.counters()["underruns"] == 0 and p.counters()["silent"] >= 1


def test_pool_full_refuses_without_touching_the_audio() -> None:
    p = hard(slots=3)
    for i in range(3):
        p.schedule(const_clip(float(i + 1)), 10 * (i + 1))
    p.schedule(const_clip(9.0), 40)
    assert p.counters()["refused"] == 1
    render(p, 25)
    p.poll()  # the first clip's slot is released after the switch at 20
    p.schedule(const_clip(4.0), 40)
    out = render(p, 30)
    assert np.all(out[:, 5:15] == 3.0) and np.all(out[:, 15:] == 4.0)


def test_mono_clip_goes_to_every_channel_and_bad_audio_raises() -> None:
    p = hard()
    p.schedule(Clip(np.full((10, 1), 0.5, np.float32)), 0)
    out = render(p, 10)
    assert np.all(out == 0.5)
    for bad in (np.zeros((10, 3), np.float32), np.zeros((0, 2), np.float32),
                np.zeros((10, 2), np.float64), np.zeros(10, np.float32)):
        with pytest.raises(InvalidRequest):
            p.schedule(Clip(bad), 20)


def test_render_allocates_nothing_per_call() -> None:
    p = Player(PlayerConfig(crossfade_samples=64))
    for i in range(4):
        p.schedule(ramp_clip(3000, float(i)), 900 + i * 9000)
    outs = [np.zeros(1024, np.float32), np.zeros(1024, np.float32)]
    for _ in range(4):
        p.render(outs)  # warm up
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(40):  # crosses switches, fades and loop wraps
            p.render(outs)
        middle, _ = tracemalloc.get_traced_memory()
        for _ in range(1000):
            p.render(outs)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - middle < 256, "memory grows with every call"
    # No block-sized temporaries (one would be 8 KiB); a few small views are fine.
    assert peak - base < 4096, peak - base
    assert p.counters()["started"] == 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=30),
       st.integers(0, 40), st.lists(st.integers(0, 2000), min_size=1, max_size=4))
def test_output_does_not_depend_on_block_sizes(blocks: list[int], xf: int,
                                               starts: list[int]) -> None:
    def run(sizes: list[int]) -> np.ndarray:
        p = Player(PlayerConfig(crossfade_samples=xf))
        for i, s in enumerate(sorted(set(starts))):
            p.schedule(ramp_clip(97 + 13 * i, float(i + 1)), s)
        out = np.zeros((2, 2500), np.float32)
        done = 0
        k = 0
        while done < 2500:
            n = min(sizes[k % len(sizes)], 2500 - done)
            p.render([out[0, done:done + n], out[1, done:done + n]])
            done += n
            k += 1
        return out

    np.testing.assert_array_equal(run(blocks), run([2500]))


def test_concurrent_schedule_and_render_never_breaks_the_grid() -> None:
    """A control thread schedules while another thread renders: every clip that started did
    so exactly on its sample, or phase-locked when it was late; never silence after the
    first clip."""
    p = Player(PlayerConfig(crossfade_samples=0, slots=4))
    out = np.zeros((2, 60_000), np.float32)
    stop = threading.Event()

    def audio() -> None:
        done = 0
        while done < out.shape[1]:
            p.render([out[0, done:done + 128], out[1, done:done + 128]])
            done += 128
            time.sleep(0.0001)  # a real audio thread waits for its period
        stop.set()

    th = threading.Thread(target=audio)
    th.start()
    started: list[tuple[float, int]] = []
    k = 0
    while not stop.is_set():
        started.extend((float(c.audio[0, 0]), s) for c, s in p.poll().started)
        if len(p.pending()) < 2:
            k += 1
            start = (p.position() // 500 + 1) * 500
            p.schedule(ramp_clip(500, float(k)), start)
    th.join()
    started.extend((float(c.audio[0, 0]), s) for c, s in p.poll().started)
    assert len(started) > 10
    first = started[0][1]
    assert np.all(out[:, :first] == 0) and np.all(out[:, first:] != 0)

    def expected(value: float, start: int, lo: int, hi: int) -> np.ndarray:
        return (value + (np.arange(lo, hi) - start) % 500 / 1000).astype(np.float32)

    begins = []
    for value, start in started:  # where each clip really began (later when it was late)
        lo = max(start, begins[-1] + 1 if begins else 0)
        window = out[0, lo:lo + 1000]
        hit = np.flatnonzero(window == expected(value, start, lo, lo + window.size))
        assert hit.size, (value, start)
        begin = lo + int(hit[0])
        assert begin == start or begin % 128 == 0  # late: at the next block boundary
        begins.append(begin)
    ends = [*begins[1:], out.shape[1]]
    for (value, start), begin, end in zip(started, begins, ends, strict=True):
        np.testing.assert_array_equal(out[0, begin:end], expected(value, start, begin, end))


def test_horizon_is_the_end_of_the_latest_clips_first_pass() -> None:
    p = hard()
    assert p.horizon() == -1
    a = const_clip(1.0, 100)
    p.schedule(a, 0)
    assert p.horizon() == 100
    p.schedule(a, 100)  # explicit repeat: the timeline is known for another pass
    assert p.horizon() == 200 and p.counters()["repeats"] == 1
    assert p.wait_scheduled(0.0)
    # With a crossfade the next clip's pre-roll begins one crossfade before the end.
    q = Player(PlayerConfig(crossfade_samples=30))
    q.schedule(a, 0)
    assert q.horizon() == 70
