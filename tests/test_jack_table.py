"""The compiled player (the voice table and its mixer) against the Python player, sample by
sample: the same clip sequence rendered both ways must give the same samples. The mixer runs
here on numpy buffers, exactly as the JACK callback runs it on port buffers (no JACK needed;
the JACK run is in tests/test_jack_output.py)."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.live.player import Player, PlayerConfig
from protocols.audio import jack_table
from protocols.audio.jack_table import Planner, VoiceTable, mix_into

BLOCK = 256


@dataclasses.dataclass
class Clip:
    audio: np.ndarray


def noise_clip(length: int, seed: int, channels: int = 2) -> Clip:
    """Distinct values everywhere (and per channel), so any misplaced sample shows."""
    rng = np.random.default_rng(seed)
    return Clip(rng.uniform(-1, 1, (length, channels)).astype(np.float32))


Action = tuple[int, Callable[[Player], None]]


def python_render(cfg: PlayerConfig, actions: list[Action], frames: int) -> np.ndarray:
    """The Python player: render in blocks, applying each action at its sample."""
    p = Player(cfg)
    out = np.zeros((2, frames), np.float32)
    for t in range(0, frames, BLOCK):
        for at, act in actions:
            if at == t:
                act(p)
        p.render([out[0, t:t + BLOCK], out[1, t:t + BLOCK]])
    return out


def table_render(cfg: PlayerConfig, actions: list[Action], frames: int) -> np.ndarray:
    """The compiled path in lockstep: the player plans a block (emitting voices into the
    table), the compiled mixer mixes that block from the table alone."""
    p = Player(cfg)
    table = VoiceTable(cfg.channels)
    out = np.zeros((2, frames), np.float32)
    for t in range(0, frames, BLOCK):
        for at, act in actions:
            if at == t:
                act(p)
        p.plan(BLOCK, table.publish)
        mix_into(table, [out[0, t:t + BLOCK], out[1, t:t + BLOCK]])
        table.release()
    return out


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    # Float32 products and sums in the same order; only the fade gains' sin/cos may differ
    # in their last bit between numpy's and libm's.
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-7)


def test_a_clip_sequence_renders_the_same_both_ways() -> None:
    """Bar-exact starts with crossfades, a repeat, loop wraps (clips shorter than a bar), a
    switch off the bar line, a clip seen inside its pre-roll, a late clip, a mono clip, a stop
    and a start from silence."""
    cfg = PlayerConfig(crossfade_samples=480)
    bar = 9600
    a, b, c = noise_clip(bar, 1), noise_clip(3001, 2), noise_clip(bar * 2, 3)
    mono = noise_clip(4410, 4, channels=1)
    actions: list[Action] = [
        (0, lambda p: p.schedule(a, 0)),                      # from silence at sample 0
        (BLOCK * 4, lambda p: p.schedule(b, bar)),            # bar-exact, loops (3001)
        (BLOCK * 50, lambda p: p.schedule(b, 2 * bar)),       # the same clip: a repeat
        (BLOCK * 60, lambda p: p.schedule(c, 3 * bar + 1234)),  # off the bar line
        (BLOCK * 120, lambda p: p.schedule(mono, 4 * bar + 200)),  # seen in its pre-roll
        (BLOCK * 170, lambda p: p.schedule(a, 4 * bar + 5000)),  # late: starts at once
        (BLOCK * 200, lambda p: p.stop()),
        (BLOCK * 210, lambda p: p.schedule(c, BLOCK * 215)),  # from silence again
    ]
    frames = BLOCK * 260
    want = python_render(cfg, actions, frames)
    got = table_render(cfg, actions, frames)
    assert np.abs(want).max() > 0.5  # it played
    assert_same(got, want)


def test_a_clip_read_from_an_earlier_origin_renders_the_same_both_ways() -> None:
    """The lattice's jump: a clip that comes in mid-loop (read from an origin before its start,
    on a beat line rather than a bar line), then the exact clip on the next bar line."""
    cfg = PlayerConfig(crossfade_samples=480)
    bar = 9600
    a, b, c = noise_clip(bar, 1), noise_clip(bar, 2), noise_clip(bar, 3)
    actions: list[Action] = [
        (0, lambda p: p.schedule(a, 0)),
        (BLOCK * 20, lambda p: p.schedule(b, bar + bar // 4, origin=bar)),  # a beat in
        (BLOCK * 50, lambda p: p.schedule(c, 2 * bar)),
    ]
    frames = BLOCK * 100
    want = python_render(cfg, actions, frames)
    got = table_render(cfg, actions, frames)
    start = bar + bar // 4 + 1  # after the crossfade ends: b's own samples, a beat into it
    np.testing.assert_allclose(want[:, start:start + 100].T, b.audio[bar // 4 + 1:
                                                                     bar // 4 + 101], atol=1e-6)
    assert_same(got, want)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 600), st.lists(st.tuples(st.integers(0, 40), st.integers(-2000, 12000),
                                               st.integers(50, 5000)),
                                     min_size=1, max_size=6))
def test_random_sequences_render_the_same_both_ways(
        xf: int, plan: list[tuple[int, int, int]]) -> None:
    """Any crossfade, clips of any length scheduled at any block for any start (past, inside
    the pre-roll, far ahead), the same clip object rescheduled (repeats)."""
    cfg = PlayerConfig(crossfade_samples=xf)
    clips = [noise_clip(length, i) for i, (_, _, length) in enumerate(plan)]
    actions: list[Action] = []
    for i, (block, start, _) in enumerate(plan):
        clip = clips[i // 2 * 2]  # pairs share a clip: repeats and restarts
        actions.append((block * BLOCK, lambda p, c=clip, s=start + block * BLOCK:
                        p.schedule(c, max(s, 0))))
    frames = BLOCK * 60
    assert_same(table_render(cfg, actions, frames), python_render(cfg, actions, frames))


def test_the_table_keeps_playing_while_python_stands_still() -> None:
    """Published once, a crossfade completes and the new clip loops for as long as nothing in
    Python runs: the same samples the Python player renders with nothing more scheduled."""
    cfg = PlayerConfig(crossfade_samples=480)
    a, b = noise_clip(4000, 1), noise_clip(2222, 2)
    actions: list[Action] = [(0, lambda p: p.schedule(a, 0)),
                             (0, lambda p: p.schedule(b, 9600))]
    frames = BLOCK * 200
    want = python_render(cfg, actions, frames)
    p = Player(cfg)
    table = VoiceTable(2)
    p.schedule(a, 0)
    p.schedule(b, 9600)
    p.plan(9600 - 100, table.publish)  # the fade into b has begun; then Python stops
    got = np.zeros((2, frames), np.float32)
    for t in range(0, frames, BLOCK):
        mix_into(table, [got[0, t:t + BLOCK], got[1, t:t + BLOCK]])
    assert_same(got, want)
    assert table.late_records == 0


def test_clip_buffers_live_until_the_callback_is_past_them() -> None:
    """The table holds each clip's buffer until the mixer has moved past every record naming
    it, even after the player released the clip."""
    cfg = PlayerConfig(crossfade_samples=64)
    table = VoiceTable(2)
    p = Player(cfg)
    p.schedule(noise_clip(1000, 1), 0)
    p.schedule(noise_clip(1000, 2), 2000)
    p.plan(4096, table.publish)  # decided ahead: the first clip is done in the player's view
    first = table.referenced()[0]
    ref = weakref.ref(first)
    del first
    p.poll()  # the player drops the first clip
    gc.collect()
    assert ref() is not None  # the table still has it: the mixer has not played it yet
    out = np.zeros((2, BLOCK), np.float32)
    mix_into(table, list(out))
    table.release()
    gc.collect()
    assert ref() is not None  # still in force
    for _ in range(2100 // BLOCK + 1):
        mix_into(table, list(out))
    table.release()
    gc.collect()
    assert ref() is None


def test_the_planner_plans_ahead_and_taps_the_same_samples() -> None:
    """The planning thread's step (run here by hand): the table is ``ahead`` samples ahead
    of the mixer, and the recording tap gets exactly the samples the mixer plays."""
    cfg = PlayerConfig(crossfade_samples=480)
    a, b = noise_clip(5000, 1), noise_clip(3000, 2)
    player = Player(cfg)
    table = VoiceTable(2)
    planner = Planner(table, player, ahead=2048, block=BLOCK)
    tapped: list[tuple[np.ndarray, int]] = []
    planner.tap = lambda bufs, pos: tapped.append((np.stack(bufs).copy(), pos))
    player.schedule(a, 0)
    player.schedule(b, 7000)
    frames = BLOCK * 80
    got = np.zeros((2, frames), np.float32)
    for t in range(0, frames, BLOCK):
        planner.step()
        assert player.position() >= table.position + 2048 - BLOCK
        mix_into(table, [got[0, t:t + BLOCK], got[1, t:t + BLOCK]])
    want = python_render(cfg, [(0, lambda p: p.schedule(a, 0)),
                               (0, lambda p: p.schedule(b, 7000))], frames)
    assert_same(got, want)
    tap = np.concatenate([blk for blk, _ in tapped], axis=1)
    assert [pos for _, pos in tapped[:2]] == [BLOCK, 2 * BLOCK]
    np.testing.assert_array_equal(tap[:, :frames], got[:, :tap.shape[1]])
    assert planner.skips == 0


def test_a_stalled_planner_skips_ahead_and_a_waiting_clip_starts_late_in_phase() -> None:
    """The mixer runs past what was planned (Python held up): it went on with the last
    voices; the planner then moves the player's timeline there, and a clip whose start
    passed meanwhile starts at once, phase-locked (the player's late rule)."""
    cfg = PlayerConfig(crossfade_samples=0)
    a, b = noise_clip(1000, 1), noise_clip(1500, 2)
    player = Player(cfg)
    table = VoiceTable(2)
    planner = Planner(table, player, ahead=1024, block=BLOCK)
    player.schedule(a, 0)
    planner.step()
    out = np.zeros((2, BLOCK * 40), np.float32)
    for t in range(0, BLOCK * 20, BLOCK):  # no planning: Python is held up
        mix_into(table, [out[0, t:t + BLOCK], out[1, t:t + BLOCK]])
    player.schedule(b, 3000)  # its start has passed by now (the mixer is at 5120)
    planner.step()
    assert planner.skips == 1
    for t in range(BLOCK * 20, BLOCK * 40, BLOCK):
        planner.step()
        mix_into(table, [out[0, t:t + BLOCK], out[1, t:t + BLOCK]])
    idx = np.arange(BLOCK * 40)
    seen = BLOCK * 20 + planner.margin  # where the player saw it
    np.testing.assert_array_equal(out[0, :seen], a.audio[idx[:seen] % 1000, 0])
    np.testing.assert_array_equal(out[0, seen:], b.audio[(idx[seen:] - 3000) % 1500, 0])
    assert player.counters()["late"] == 1


def test_bad_buffers_and_sizes_are_refused() -> None:
    table = VoiceTable(2)
    with pytest.raises(ValueError, match="margin"):
        Planner(table, Player(), ahead=512, block=BLOCK)
    with pytest.raises(ValueError, match="float32"):
        mix_into(table, [np.zeros(64, np.float64)])
    with pytest.raises(ValueError, match="at most"):
        mix_into(table, [np.zeros(64, np.float32)] * (jack_table.MAX_PORTS + 1))
