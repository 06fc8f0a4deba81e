"""The lattice of alphas (manual mode): the real scheduler and the real player, with a fake
clock and a fake generator.

A knob move whose nearest lattice alpha is rendered is heard on the next beat line from that
clip, at the loop position the playing clip had reached (checked sample by sample in the
player's output), and the exact clip takes over on its bar line; what the lattice depends on
changing drops it; lattice work never delays the exact clip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import pytest

from engine.errors import InvalidRequest
from engine.live.control import Engine
from engine.live.jobs import Clip
from engine.live.player import Player, PlayerConfig
from engine.live.scheduler import SchedulerConfig
from engine.live.state import EngineState
from tests.engine_fakes import FakeBatchGenerator, FakeClock, FakeGenerator, Scheduled

SR = 48000
BAR = 96000  # one 4/4 bar at 120 BPM
BEAT = BAR // 4
MARGIN_S = 0.03
LEAD = 480  # the player's crossfade (10 ms), the scheduler's lead
MARGIN = round(MARGIN_S * SR) + LEAD


class PlayerSink:
    """The real player as the sink; it renders up to the fake clock's sample whenever the
    control plane reads the audio clock, keeping everything it rendered."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.player = Player(PlayerConfig(sample_rate=SR, crossfade_samples=LEAD, slots=8))
        self.scheduled: list[Scheduled] = []
        self._out: list[np.ndarray] = []
        self.stops = 0

    def _render_to_now(self) -> None:
        target = round(self.clock.t * SR)
        while self.player.position() < target:
            n = min(4096, target - self.player.position())
            outs = [np.zeros(n, np.float32) for _ in range(2)]
            self.player.render(outs)
            self._out.append(np.stack(outs, axis=1))

    def position(self) -> int:
        self._render_to_now()
        return self.player.position()

    def schedule(self, clip: Clip, start_sample: int, origin: int | None = None) -> None:
        self.scheduled.append(Scheduled(clip.job_id, start_sample, self.position(), clip,
                                        origin))
        self.player.schedule(clip, start_sample, origin=origin)

    def stop(self) -> None:
        self.stops += 1
        self.player.stop()

    def output(self) -> np.ndarray:
        """Everything rendered so far: (samples, 2); channel 0 the id of the job that
        generated the clip playing, channel 1 its read position (see ``fake_audio``)."""
        self._render_to_now()
        return np.concatenate(self._out) if self._out else np.zeros((0, 2), np.float32)


class Rig:
    def __init__(self, initial: Mapping[str, object], batch: bool, **config: Any) -> None:
        self.clock = FakeClock()
        self.sink = PlayerSink(self.clock)
        self.gen = (FakeBatchGenerator if batch else FakeGenerator)(self.clock, step_s=0.1)
        cfg = {"lookahead": 2, "margin_s": MARGIN_S, "lead_s": LEAD / SR, "max_tick_s": 0.01,
               "lattice": 9, "lattice_batch": 3}
        cfg.update(config)
        state = EngineState({"tempo": 120.0, "bars": 2, "steps": 10, "alpha_auto": False,
                             "alpha": 0.0, "prompt_a": "jazz", "prompt_b": "techno",
                             **initial})
        self.engine = Engine(self.gen, self.sink, sample_rate=SR, clock=self.clock,
                             state=state, config=SchedulerConfig(**cfg))

    @property
    def lattice_done(self) -> int:
        lattice = self.engine.scheduler._lattice
        return len(lattice.done) if lattice is not None else 0

    def now(self) -> int:
        return round(self.clock.t * SR)


def run(body: Callable[[Rig], Awaitable[None]], initial: Mapping[str, object] | None = None,
        *, batch: bool = True, **config: Any) -> Rig:
    rig = Rig(initial or {}, batch, **config)

    async def main() -> None:
        task = asyncio.ensure_future(rig.engine.run())
        rig.engine.play()
        try:
            await body(rig)
        finally:
            await rig.engine.close()
        assert task.done() and task.result() is None

    asyncio.run(main())
    return rig


def test_a_knob_move_is_heard_at_the_next_beat_mid_loop_then_the_exact_clip_on_its_bar()\
        -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.run_until(lambda: rig.lattice_done == 9, 30.0)
        # Into the second bar of a two-bar clip, between beats 2 and 3.
        at = rig.sink.scheduled[-1].start + BAR + 3 * BEAT // 2
        while at <= rig.now() + BEAT:
            at += 2 * BAR
        await rig.clock.advance((at - rig.now()) / SR)
        rig.moved = rig.now()  # type: ignore[attr-defined]
        rig.playing = next(s for s in reversed(rig.sink.scheduled)  # type: ignore[attr-defined]
                           if s.start <= rig.now())
        rig.engine.state.set("alpha", 0.3)
        await rig.clock.advance(0.0)
        exact = rig.gen.calls[-1]
        assert exact.request.alpha == 0.3 and exact.created == rig.clock.t
        await rig.clock.advance(6.0)

    rig = run(body)
    moved, playing = rig.moved, rig.playing  # type: ignore[attr-defined]
    transport = rig.engine.transport
    assert rig.engine.status()["lattice"] == 8  # alpha 0 was the playing clip's, cached
    jump = next(s for s in rig.sink.scheduled if s.start > moved)
    assert jump.clip.request.alpha == 0.25
    # The first beat line past the deadline (lead + margin) after the move.
    beat = transport.next_beat_line(moved + MARGIN)
    assert jump.start == beat and beat - moved < BEAT + MARGIN
    assert beat != transport.bar_start(transport.bar_at(beat))  # a beat, not a bar line
    # Read from the playing clip's start: the same position in the loop.
    assert jump.origin == playing.start
    out = rig.sink.output()
    n = jump.clip.spec.num_samples
    lattice_source = jump.clip.audio[0, 0]
    offset = (beat - playing.start) % n
    assert offset > BAR  # in the second bar of the clip
    assert out[beat, 0] == lattice_source and out[beat - LEAD - 1, 0] == playing.clip.audio[0, 0]
    assert out[beat, 1] == pytest.approx(offset / n, abs=0.5 / n)
    assert out[beat + 1000, 1] == pytest.approx((offset + 1000) / n, abs=0.5 / n)
    # The exact clip: ready one job after the move, on the first bar line after that.
    exact = next(s for s in rig.sink.scheduled if s.clip.request.alpha == 0.3)
    ready = rig.gen.finished[exact.job_id]
    assert ready == pytest.approx(moved / SR + 1.0, abs=0.02)
    bar = transport.bar_at(round(ready * SR) + MARGIN) + 1
    assert exact.start == transport.bar_start(bar) and exact.origin is None
    assert out[exact.start, 0] == exact.job_id and out[exact.start, 1] == 0.0
    assert out[exact.start - LEAD - 1, 0] == lattice_source  # the lattice clip until then
    assert rig.engine.status()["lattice_jumps"] == 1


def test_the_player_reads_a_clip_from_its_origin() -> None:
    """``schedule(clip, start, origin=)``: switched in on ``start`` (the crossfade ends
    there), read at ``(sample - origin) mod length``."""
    player = Player(PlayerConfig(sample_rate=SR, crossfade_samples=64))
    a = np.full((1000, 2), 1.0, np.float32)
    b = np.stack([np.arange(700, dtype=np.float32)] * 2, axis=1)
    player.schedule(type("C", (), {"audio": a})(), 0)
    player.schedule(type("C", (), {"audio": b})(), 1500, origin=300)
    outs = [np.zeros(3000, np.float32), np.zeros(3000, np.float32)]
    player.render(outs)
    assert np.all(outs[0][1200:1500 - 64] == 1.0)
    expected = (np.arange(1500, 3000) - 300) % 700
    assert np.array_equal(outs[0][1500:], expected.astype(np.float32))
    with pytest.raises(InvalidRequest):
        player.schedule(type("C", (), {"audio": b})(), 100, origin=200)


def test_a_prompt_change_drops_the_lattice() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.run_until(lambda: rig.lattice_done >= 4, 30.0)
        assert rig.gen.batches and rig.engine.scheduler._lattice is not None
        old = rig.engine.scheduler._lattice
        await rig.clock.advance(0.25)
        assert old.tasks  # a batch is in flight
        in_flight = rig.gen.batches[-1]
        rig.engine.state.set("prompt_a", "church bells")
        await rig.clock.advance(0.0)
        assert in_flight in rig.gen.batch_cancelled  # the batch in flight stops at once
        assert rig.engine.scheduler._lattice is not old
        for alpha in old.done:  # its clips left the cache
            assert rig.engine.scheduler.cache.get(old.request(alpha), old.spec) is None
        rig.changed = rig.now()  # type: ignore[attr-defined]
        rig.engine.state.set("alpha", 0.3)  # no lattice clip of the old prompt to jump to
        await rig.clock.advance(8.0)

    rig = run(body)
    after = [s for s in rig.sink.scheduled if s.start > rig.changed]  # type: ignore[attr-defined]
    assert after and all(s.clip.request.start.prompt == "church bells" for s in after)
    assert all(s.origin is None for s in after)
    assert rig.engine.scheduler.counters.lattice_dropped >= 1


def test_lattice_work_never_delays_the_exact_clip() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.run_until(lambda: bool(rig.gen.batches) and not rig.lattice_done >= 9,
                                  30.0)
        await rig.clock.advance(0.35)  # a lattice batch is in flight
        scheduler = rig.engine.scheduler
        assert scheduler._lattice is not None and scheduler._lattice.tasks
        batches = len(rig.gen.batches)
        moved = rig.clock.t
        rig.engine.state.set("alpha", 0.6)
        await rig.clock.advance(0.0)
        assert rig.gen.batch_cancelled[-1] == rig.gen.batches[-1]
        exact = rig.gen.calls[-1]
        assert exact.request.alpha == 0.6 and exact.created == moved
        await rig.clock.run_until(lambda: exact.job_id in rig.gen.finished, 5.0)
        # One job's time exactly, and no lattice batch started meanwhile.
        assert rig.gen.finished[exact.job_id] == pytest.approx(moved + 1.0, abs=1e-6)
        finished = rig.gen.finished[exact.job_id]
        assert not [t for t in rig.gen.batch_started[batches:] if t < finished]
        await rig.clock.run_until(lambda: rig.lattice_done == 9, 30.0)
        # The cancelled alphas were rendered later: every alpha of the lattice is there.
        lattice = scheduler._lattice
        assert lattice is not None and lattice.alpha == 0.6
        assert sorted(lattice.done) == [i / 8 for i in range(9)]

    run(body)


def test_a_60hz_sweep_with_the_lattice_ends_on_the_exact_clip_promptly() -> None:
    """A sweep jumps between lattice clips on beat lines; the final value's exact clip is
    ready one job after the last move and plays on the first bar line after that, and no
    lattice clip plays after it."""

    async def body(rig: Rig) -> None:
        await rig.clock.run_until(lambda: rig.lattice_done == 9, 30.0)
        for i in range(1, 21):
            rig.engine.state.set("alpha", round(i / 20 * 0.9, 3))
            await rig.clock.advance(1 / 60)
        rig.last_move = rig.clock.t  # type: ignore[attr-defined]
        await rig.clock.advance(6.0)

    rig = run(body, batch=False)
    last_move = rig.last_move  # type: ignore[attr-defined]
    final = [s for s in rig.sink.scheduled if s.clip.request.alpha == 0.9]
    assert final, "the final value never played"
    ready = rig.gen.finished[final[0].job_id]
    assert ready <= last_move + 1.0 + 1e-6
    transport = rig.engine.transport
    assert final[0].start == transport.bar_start(transport.bar_at(round(ready * SR) + MARGIN)
                                                 + 1)
    assert not [s for s in rig.sink.scheduled if s.start > final[0].start and s.origin]
    jumps = [s for s in rig.sink.scheduled if s.origin is not None]
    assert jumps and all(s.clip.request.alpha in {i / 8 for i in range(9)} for s in jumps)
    assert rig.engine.status()["lattice_jumps"] >= 1
    # Jumps to the same beat line replace each other in the player: no slot ran out.
    assert rig.sink.player.counters()["refused"] == 0


def test_the_lattice_is_off_by_default_and_in_auto_mode() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(6.0)

    rig = run(body, lattice=0)
    assert rig.engine.scheduler._lattice is None and rig.gen.batches == []
    rig = run(body, {"alpha_auto": True})
    assert rig.engine.scheduler._lattice is None and rig.gen.batches == []
    for bad in ({"lattice": 1}, {"lattice": 34}, {"lattice": 9, "cache_clips": 4},
                {"lattice_batch": 0}):
        with pytest.raises(InvalidRequest):
            SchedulerConfig(**bad)


def test_a_stop_keeps_the_lattice_clips_for_the_next_play() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.run_until(lambda: rig.lattice_done == 9, 30.0)
        batches = len(rig.gen.batches)
        rig.engine.stop()
        assert rig.engine.scheduler._lattice is None
        await rig.clock.advance(1.0)
        rig.engine.play()
        await rig.clock.run_until(lambda: rig.lattice_done == 9, 5.0)
        assert len(rig.gen.batches) == batches  # all nine from the cache
        assert rig.engine.scheduler.counters.lattice_dropped == 0

    run(body)


def test_the_timeline_shows_the_lattice_for_displays() -> None:
    views: list[Any] = []

    async def body(rig: Rig) -> None:
        views.append(rig.engine.scheduler.timeline()["lattice"])
        await rig.clock.run_until(lambda: rig.lattice_done >= 4, 30.0)
        views.append(rig.engine.scheduler.timeline()["lattice"])
        rig.engine.state.set("alpha", 0.6)
        await rig.clock.advance(0.0)
        views.append(rig.engine.scheduler.timeline()["lattice"])
        rig.engine.state.set("alpha_auto", True)
        await rig.clock.advance(0.0)
        views.append(rig.engine.scheduler.timeline()["lattice"])

    rig = run(body)
    first, some, moved, auto = views
    assert first is None or all(p["state"] != "ready" for p in first["points"])
    assert [p["alpha"] for p in some["points"]] == [i / 8 for i in range(9)]
    ready = {p["alpha"] for p in some["points"] if p["state"] == "ready"}
    assert len(ready) >= 4 and 0.0 in ready  # nearest the knob (0) first
    assert moved["alpha"] == 0.6 and auto is None  # auto mode has no lattice
    hits = rig.engine.scheduler.cache.hits
    rig.engine.scheduler.timeline()
    assert rig.engine.scheduler.cache.hits == hits  # a display read is not a cache hit
