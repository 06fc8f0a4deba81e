"""The control plane end to end with a fake clock, a fake generator and a recording sink.

Time is fake and advanced by hand, so every expectation is exact: clips start on bar lines to
the sample, late clips repeat the current one, knob moves pre-empt, failures are retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRequest, UnknownId
from engine.live.control import Engine
from engine.live.jobs import Clip, GenerationJob
from engine.live.scheduler import SchedulerConfig
from engine.live.state import EngineState
from engine.live.transport import BBTObservation
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink, Scheduled

SR = 48000
BAR = 96000  # one 4/4 bar at 120 BPM
MARGIN_S = 0.03  # deadlines at x.97 s never tie with fake readiness times
MARGIN = round(MARGIN_S * SR)


class Rig:
    def __init__(self, initial: Mapping[str, object], **config: Any) -> None:
        self.clock = FakeClock()
        self.sink = FakeSink(self.clock, SR)
        self.gen = FakeGenerator(self.clock, step_s=0.1)
        cfg = {"lookahead": 2, "margin_s": MARGIN_S, "backoff_s": 0.25, "cooldown_s": 1.0,
               "max_tick_s": 0.1}
        cfg.update(config)
        state = EngineState({"tempo": 120.0, "bars": 1, "steps": 10, **initial})
        self.engine = Engine(self.gen, self.sink, sample_rate=SR, clock=self.clock,
                             state=state, config=SchedulerConfig(**cfg))

    @property
    def starts(self) -> list[tuple[int, int]]:
        return [(s.job_id, s.start) for s in self.sink.scheduled]

    def first_line_after(self, sample: float) -> int:
        """The bar line a clip ready at ``sample`` can start on (deadline = line - margin)."""
        t = self.engine.transport
        bar = t.bar_at(int(sample)) + 1
        while t.bar_start(bar) - MARGIN < sample:
            bar += 1
        return t.bar_start(bar)

    def entry(self, job_id: int) -> Scheduled:
        return next(s for s in self.sink.scheduled if s.job_id == job_id)


def run(initial: Mapping[str, object], body: Callable[[Rig], Awaitable[None]],
        **config: Any) -> Rig:
    rig = Rig(initial, **config)

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


def assert_on_grid_without_gaps(rig: Rig) -> None:
    """Every schedule is on a bar line, and every bar line from the first clip on has one."""
    t = rig.engine.transport
    bars = [t.bar_at(s.start) for s in rig.sink.scheduled]
    for s, bar in zip(rig.sink.scheduled, bars, strict=True):
        assert s.start == t.bar_start(bar), f"clip {s.job_id} starts off the grid"
        assert s.at <= s.start - MARGIN + 1, f"clip {s.job_id} was handed over too late"
    # bars=1 clips: a clip (or a repeat) for every bar line.
    assert bars == list(range(bars[0], bars[0] + len(bars)))


def test_clips_change_on_bar_lines_and_walk_seeds() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(30.0)
        rig.status = rig.engine.status()  # type: ignore[attr-defined]

    rig = run({"prompt": "jazzy rapping", "seed": 42}, body)
    # The first clip is ready after 1 s and starts at bar 1; then one clip per bar.
    assert rig.starts[:4] == [(0, BAR), (1, 2 * BAR), (2, 3 * BAR), (3, 4 * BAR)]
    assert_on_grid_without_gaps(rig)
    ids = [s.job_id for s in rig.sink.scheduled]
    assert ids == sorted(set(ids))  # every clip new, in order: no repeats
    alphas = [s.clip.request.alpha for s in rig.sink.scheduled[:6]]
    assert alphas == [0.0, 0.25, 0.5, 0.75, 1.0, 0.25]
    assert rig.sink.scheduled[5].clip.request.start.seed == 43
    status = rig.status  # type: ignore[attr-defined]
    assert status["late"] == 0 and status["repeated"] == 0 and status["preempted"] == 0
    assert status["generated"] >= len(ids) and status["clip"] == ids[-1]
    for key in ("bar", "queue", "late", "progress", "clip", "generated", "repeated",
                "preempted", "failed", "retried"):
        assert key in status
    assert rig.sink.stops == 1  # close() stops the sink


def test_a_late_clip_repeats_the_current_one_and_is_counted() -> None:
    async def body(rig: Rig) -> None:
        rig.gen.extra[3] = 5.05  # job 3 takes 6.05 s instead of 1 s
        await rig.clock.advance(20.0)

    rig = run({}, body)
    assert_on_grid_without_gaps(rig)
    ids = [s.job_id for s in rig.sink.scheduled]
    first_3 = ids.index(3)
    repeats = ids[:first_3].count(2) - 1
    assert repeats >= 2 and ids[:first_3][-repeats - 1:] == [2] * (repeats + 1)
    # Job 3 starts at the first bar line whose deadline follows its readiness.
    assert rig.entry(3).start == rig.first_line_after(rig.gen.finished[3] * SR)
    status = rig.engine.status()
    assert status["late"] == 1 and status["repeated"] == repeats
    assert ids[first_3:] == sorted(set(ids[first_3:]))  # back to new clips afterwards


def test_a_knob_move_preempts_work_in_flight() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(4.5)  # job 1 plays, job 2 ready, job 3 half done
        assert rig.engine.scheduler.progress > 0
        rig.engine.state.set("denoising", 0.4)
        rig.changed = rig.clock.t  # type: ignore[attr-defined]
        await rig.clock.advance(0.0)
        rig.cancelled = dict(rig.gen.cancelled)  # type: ignore[attr-defined]
        await rig.clock.advance(10.0)

    rig = run({}, body)
    changed = rig.changed  # type: ignore[attr-defined]
    assert rig.cancelled, "the job in flight was not cancelled"  # type: ignore[attr-defined]
    (cancelled_id, steps_done), = rig.cancelled.items()  # type: ignore[attr-defined]
    assert 0 < steps_done < 10  # stopped between denoising steps
    assert rig.engine.status()["preempted"] == 2  # the ready look-ahead clip and the one in flight
    new = [s for s in rig.sink.scheduled if s.clip.request.start.denoising == 0.4]
    old_after = [s for s in rig.sink.scheduled
                 if s.start > new[0].start and s.clip.request.start.denoising != 0.4]
    assert not old_after, "a stale clip played after the new one"
    first_new = new[0]
    assert rig.gen.finished[first_new.job_id] > changed
    assert first_new.start == rig.first_line_after(rig.gen.finished[first_new.job_id] * SR)
    assert cancelled_id not in [s.job_id for s in rig.sink.scheduled]
    assert_on_grid_without_gaps(rig)


def test_a_new_prompt_is_heard_at_the_first_bar_line_after_its_clip_is_ready() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.run_until(lambda: len(rig.sink.scheduled) >= 3, 30.0)
        await rig.clock.advance(0.3)  # just after a 4-bar clip started
        rig.engine.state.set("prompt", "church bells")
        rig.changed_at = rig.clock.t  # type: ignore[attr-defined]
        await rig.clock.advance(12.0)

    rig = run({"prompt": "techno", "bars": 4, "transition_clips": 2}, body)
    new = [s for s in rig.sink.scheduled if s.clip.request.end_or_start.prompt == "church bells"]
    first = new[0]
    req = first.clip.request
    assert (req.start.prompt, req.end_or_start.prompt, req.alpha) == ("techno", "church bells",
                                                                      0.5)
    ready = rig.gen.finished[first.job_id]
    assert ready - rig.changed_at < 1.2  # planned at once, not after the buffered clips
    assert first.start == rig.first_line_after(ready * SR)
    previous = rig.sink.scheduled[rig.sink.scheduled.index(first) - 1]
    assert first.start < previous.start + 4 * BAR  # it cut into the stale 4-bar clip
    assert rig.engine.status()["late"] == 0


def test_generator_failures_are_retried_and_counted_while_playing_on() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(4.5)
        rig.gen.failures.append(RuntimeError("worker crashed"))
        await rig.clock.advance(15.0)

    rig = run({}, body)
    status = rig.engine.status()
    assert status["failed"] == 1 and status["retried"] == 1 and status["abandoned"] == 0
    failed_job = next(j.job_id for j in rig.gen.calls
                      if [c.job_id for c in rig.gen.calls].count(j.job_id) == 2)
    assert failed_job in [s.job_id for s in rig.sink.scheduled]  # the retry played
    assert_on_grid_without_gaps(rig)


def test_exhausted_retries_abandon_the_clip_and_playing_goes_on() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(4.5)
        rig.gen.failures.extend(RuntimeError(f"out of memory {i}") for i in range(3))
        await rig.clock.advance(20.0)

    rig = run({}, body, max_retries=2)
    status = rig.engine.status()
    assert status["failed"] == 3 and status["retried"] == 2 and status["abandoned"] == 1
    assert "out of memory 2" in str(status["error"])
    assert status["repeated"] >= 1
    assert_on_grid_without_gaps(rig)
    ids = [s.job_id for s in rig.sink.scheduled]
    assert ids[-1] > ids[0] + 5  # new clips again after the cool-down


def test_a_bad_request_is_not_retried_and_waits_for_a_state_change() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(4.5)
        rig.gen.failures.append(UnknownId("no seed image 'nope'"))
        await rig.clock.advance(10.0)
        rig.stalled = len(rig.gen.calls)  # type: ignore[attr-defined]
        await rig.clock.advance(5.0)
        assert len(rig.gen.calls) == rig.stalled  # type: ignore[attr-defined]
        rig.engine.state.set("seed_image", "agile")
        await rig.clock.advance(5.0)

    rig = run({}, body)
    status = rig.engine.status()
    assert status["failed"] == 1 and status["retried"] == 0 and status["abandoned"] == 1
    assert rig.sink.scheduled[-1].clip.request.seed_image_id == "agile"
    assert_on_grid_without_gaps(rig)


def test_tempo_change_applies_at_the_next_bar_line() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(5.3)  # inside bar 2 (bars are 2 s)
        rig.engine.state.set("tempo", 60.0)
        await rig.clock.advance(20.0)

    rig = run({}, body)
    t = rig.engine.transport
    assert [t.bar_start(b) for b in (2, 3, 4, 5)] == [2 * BAR, 3 * BAR, 3 * BAR + 2 * BAR,
                                                       3 * BAR + 4 * BAR]
    assert_on_grid_without_gaps(rig)
    previous = None
    for s in rig.sink.scheduled:
        new_clip = previous is None or s.job_id != previous.job_id
        if new_clip and t.bar_at(s.start) >= 3:  # from the change on, new clips are at 60 BPM
            assert s.clip.spec.tempo == 60.0 and s.clip.spec.num_samples == 2 * BAR
        if s.clip.spec.tempo == 60.0:
            assert t.bar_at(s.start) >= 3
        previous = s
    fast = [s for s in rig.sink.scheduled if s.clip.spec.tempo == 60.0]
    assert fast and fast[0].start == rig.first_line_after(rig.gen.finished[fast[0].job_id] * SR)
    assert rig.engine.status()["tempo"] == 60.0


def test_a_tempo_change_after_the_next_lines_clip_was_scheduled_waits_one_bar() -> None:
    """The clip for a bar line is handed to the player a margin before it; a tempo change in
    that margin would put an old-length clip on a new-length bar (off the grid for a bar).
    It lands one bar later instead, where every scheduled clip fits."""

    async def body(rig: Rig) -> None:
        await rig.clock.advance(5.99)  # 10 ms before bar 3's line (bars are 2 s)
        assert rig.engine.scheduler.decided_bar == 3
        rig.engine.state.set("tempo", 60.0)
        await rig.clock.advance(20.0)

    rig = run({}, body)
    t = rig.engine.transport
    assert [t.bar_start(b) for b in (3, 4, 5)] == [3 * BAR, 4 * BAR, 4 * BAR + 2 * BAR]
    assert_on_grid_without_gaps(rig)
    for s in rig.sink.scheduled:  # every clip is as long as the bar it starts on
        bar = t.bar_at(s.start)
        if t.bar_start(bar) == s.start:
            assert s.clip.spec.num_samples == t.bar_start(bar + 1) - t.bar_start(bar), s


def test_stop_drops_work_and_play_restarts_the_jam() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(3.5)
        rig.engine.stop()
        count = len(rig.sink.scheduled)
        await rig.clock.advance(5.0)
        assert len(rig.sink.scheduled) == count and rig.sink.stops == 1
        assert rig.engine.status()["playing"] == 0
        rig.engine.play()
        await rig.clock.advance(3.0)
        assert len(rig.sink.scheduled) > count
        assert rig.sink.scheduled[count].clip.request.alpha == 0.0  # the jam starts over

    run({}, body)


def test_bad_state_changes_change_nothing() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(2.5)
        before = rig.engine.status()
        with pytest.raises(InvalidRequest):
            rig.engine.state.set("tempo", 1000.0)
        with pytest.raises(InvalidRequest):
            rig.engine.state.update({"denoising": 0.1, "steps": 0})
        assert rig.engine.status() == before
        for _ in range(20):  # a controller resending the same values
            rig.engine.state.update({"denoising": 0.75, "prompt": "lo-fi hip hop beat",
                                     "tempo": 120.0})
            await rig.clock.advance(0.05)
        await rig.clock.advance(4.0)
        assert rig.engine.status()["preempted"] == 0 and rig.engine.transport.version == 1
        assert not rig.gen.cancelled

    run({}, body)


def test_following_an_external_master_relocation_and_tempo() -> None:
    async def body(rig: Rig) -> None:
        await rig.clock.advance(5.3)  # internal grid: inside bar 2
        t = rig.engine.transport
        now = rig.sink.position()
        # The master is half a beat into its bar 100 (a relocation), same tempo.
        assert t.follow(BBTObservation(now, 100, 0.5, 120.0, 4))
        rig.relocated = len(rig.sink.scheduled)  # type: ignore[attr-defined]
        await rig.clock.advance(6.0)
        # The master slows to 100 BPM at its bar 104.
        line = t.bar_start(104)
        await rig.clock.run_until(lambda: rig.sink.position() >= line, 10.0, 0.001)
        assert t.follow(BBTObservation(rig.sink.position(), 104, 0.0, 100.0, 4))
        with pytest.raises(InvalidRequest):
            t.set_tempo(90.0)  # the master owns the tempo
        with pytest.raises(InvalidRequest, match="external"):
            rig.engine.state.set("tempo", 90.0)  # refused, not applied
        assert rig.engine.state.get("tempo") == 120.0
        await rig.clock.advance(12.0)

    rig = run({}, body)
    t = rig.engine.transport
    after = rig.sink.scheduled[rig.relocated:]  # type: ignore[attr-defined]
    bars = [t.bar_at(s.start) for s in after]
    assert bars[0] == 101 and bars == list(range(101, 101 + len(bars)))  # no gap, no double
    for s, bar in zip(after, bars, strict=True):
        assert s.start == t.bar_start(bar)
    slow = [s for s in after if s.clip.spec.tempo == 100.0]
    assert slow and all(t.bar_at(s.start) >= 105 for s in slow)
    assert all(s.clip.spec.tempo == 100.0 for s in after if t.bar_at(s.start) >= 109)
    assert t.tempo == 100.0 and rig.engine.status()["clock"] == "external"


EVENTS = st.one_of(
    st.tuples(st.just("wait"), st.floats(0.01, 3.0)),
    st.tuples(st.just("denoising"), st.floats(0.1, 0.9)),
    st.tuples(st.just("prompt"), st.sampled_from(["techno", "jazz", "bells"])),
    st.tuples(st.just("tempo"), st.sampled_from([60.0, 93.7, 120.0, 177.3])),
    st.tuples(st.just("fail"), st.sampled_from(["crash", "bad"])),
    st.tuples(st.just("slow"), st.floats(0.5, 6.0)),
)


@settings(max_examples=15, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=8))
def test_random_performances_keep_the_timeline_whole(events: list[tuple[str, Any]]) -> None:
    """Whatever the performer and the generator do, every bar line gets exactly one clip
    (new or repeated) on the grid, handed over before its deadline, and no clip planned
    before a relevant change plays after it."""
    changes: list[float] = []
    tempo_changes: list[float] = []

    async def body(rig: Rig) -> None:
        await rig.clock.advance(1.5)
        for kind, value in events:
            if kind == "wait":
                await rig.clock.advance(value)
                continue
            if kind in ("denoising", "prompt", "tempo"):
                before = rig.engine.state.get(kind)
                rig.engine.state.set(kind, value)
                if before != value:
                    (tempo_changes if kind == "tempo" else changes).append(rig.clock.t)
            elif kind == "fail":
                rig.gen.failures.append(RuntimeError("crash") if value == "crash"
                                        else UnknownId("bad id"))
                if value == "bad":
                    rig.engine.state.set("seed", rig.engine.state.get("seed") + 1)
            else:
                rig.gen.extra[rig.gen.calls[-1].job_id + 1] = value
            await rig.clock.advance(0.3)
        await rig.clock.advance(6.0)
        assert rig.engine.scheduler.queue <= 2

    planned: list[GenerationJob] = []

    def record_jobs(rig: Rig) -> None:
        """Note every job the scheduler made, generated or answered by the clip cache."""
        sched = rig.engine.scheduler
        make, from_cache = sched._make_job, sched._from_cache

        def make_job(*args: Any) -> Any:
            job, position = make(*args)
            planned.append(job)
            return job, position

        def cached(slot: Any) -> bool:
            planned.append(slot.job)
            return from_cache(slot)

        sched._make_job = make_job  # type: ignore[method-assign]
        sched._from_cache = cached  # type: ignore[method-assign]

    async def recorded(rig: Rig) -> None:
        record_jobs(rig)
        await body(rig)

    rig = run({}, recorded)
    assert_on_grid_without_gaps(rig)
    t = rig.engine.transport
    created = {job.job_id: job.created for job in [*planned, *rig.gen.calls]}
    previous = None
    repeats = 0
    for s in rig.sink.scheduled:
        if previous is not None and s.job_id == previous.job_id:
            repeats += 1
        else:
            bar = t.bar_at(s.start)
            if not any(s.at / SR <= c <= s.start / SR for c in tempo_changes):
                assert (s.clip.spec.tempo, s.clip.spec.beats_per_bar) == t.tempo_at_bar(bar)
                assert abs(s.clip.spec.num_samples - t.clip_samples(bar, 1)) <= 1
            stale = [c for c in changes if created[s.job_id] < c <= s.at / SR]
            assert not stale, f"clip {s.job_id} planned before a change played after it"
        previous = s
    status = rig.engine.status()
    assert status["repeated"] == repeats
    assert status["generated"] + status["cached"] >= len({s.job_id for s in rig.sink.scheduled})


def test_two_workers_keep_up_where_one_is_late() -> None:
    """3 s generations for 2 s clips: one worker falls behind, two (one task each) keep up."""

    def play(workers: int) -> tuple[Rig, list[FakeGenerator]]:
        rig = Rig({}, lookahead=2)
        gens = [FakeGenerator(rig.clock, step_s=0.3) for _ in range(workers)]
        rig.engine = Engine(gens, rig.sink, sample_rate=SR, clock=rig.clock,
                            state=EngineState({"bars": 1, "steps": 10}),
                            config=SchedulerConfig(lookahead=2, margin_s=MARGIN_S,
                                                   max_tick_s=0.1))

        async def main() -> None:
            task = asyncio.ensure_future(rig.engine.run())
            rig.engine.play()
            await rig.clock.advance(30.0)
            rig.status = rig.engine.status()  # type: ignore[attr-defined]
            await rig.engine.close()
            await task  # run() returns normally after close()

        asyncio.run(main())
        return rig, gens

    one, _ = play(1)
    two, gens = play(2)
    assert one.status["late"] >= 5  # type: ignore[attr-defined]
    assert two.status["late"] == 0 and two.status["repeated"] == 0  # type: ignore[attr-defined]
    assert all(len(g.calls) >= 5 for g in gens)
    assert_on_grid_without_gaps(two)


def test_head_ready_and_the_players_counters_in_status() -> None:
    seen: list[bool] = []

    async def body(rig: Rig) -> None:
        await rig.clock.advance(0.5)  # the first clip is half done
        seen.append(rig.engine.scheduler.head_ready())
        await rig.clock.advance(2.0)  # clip 0 plays from 2 s; clip 1 (ready at 2 s) waits
        seen.append(rig.engine.scheduler.head_ready())  # for the bar line at 4 s

    rig = run({}, body)
    assert seen == [False, True]
    assert rig.engine.status()["xruns"] == 0  # no sink stats given: zeros
    counters = {"xruns": 3, "underruns": 7, "late": 1, "repeats": 2, "started": 9}
    engine = Engine(FakeGenerator(FakeClock()), rig.sink, sample_rate=SR,
                    sink_stats=lambda: counters)
    status = engine.status()
    assert (status["xruns"], status["underruns"], status["sink_late"],
            status["sink_repeats"]) == (3, 7, 1, 2)


def test_a_daw_cycle_loop_renumbers_planned_clips_and_discards_nothing() -> None:
    """A 2-bar cycle loop in a DAW (JACK transport relocates to bar 0 every 2 bars).

    Before: each jump back was a relocation that dropped every planned clip, or went unseen
    and skipped bar lines."""
    loop_s = 4.0  # 2 bars at 120 BPM

    async def body(rig: Rig) -> None:
        t = rig.engine.transport
        await rig.clock.advance(1.97)
        t0 = rig.clock.t
        starts = len(rig.sink.scheduled)
        while rig.clock.t < t0 + 60.0:
            elapsed = (rig.clock.t - t0) % loop_s
            bar, beat = int(elapsed // 2.0), (elapsed % 2.0) / 0.5
            t.follow(BBTObservation(rig.sink.position(), bar, min(beat, 3.999999), 120.0, 4))
            # Every clip handed over starts on a bar line of the grid it was planned on.
            for s in rig.sink.scheduled[starts:]:
                assert s.start == t.bar_start(t.bar_at(s.start)), s
            starts = len(rig.sink.scheduled)
            await rig.clock.advance(0.05)
        rig.status = rig.engine.status()  # type: ignore[attr-defined]

    rig = run({}, body)
    status = rig.status  # type: ignore[attr-defined]
    assert status["preempted"] == 0  # no planned clip was discarded
    assert status["renumbered"] >= 14  # planned clips moved at each of the 14 jumps
    # A new clip on (nearly) every bar line: 1 s jobs for 2 s bars keep up.
    new = {s.job_id for s in rig.sink.scheduled if s.at / SR >= 2.0}
    assert len(new) >= 27, len(new)
    assert status["late"] == 0 and status["repeated"] == 0


class RenderingSink:
    """The real player as the sink; it renders (hard cuts, no crossfade) up to the fake
    clock whenever its position is asked, keeping the output."""

    def __init__(self, clock: FakeClock) -> None:
        from engine.live.player import Player, PlayerConfig

        self.clock = clock
        self.player = Player(PlayerConfig(sample_rate=SR, crossfade_samples=0))
        self.out: list[np.ndarray] = []
        self.scheduled: list[Scheduled] = []

    def position(self) -> int:
        target = round(self.clock.t * SR)
        while self.player.position() < target:
            n = min(4096, target - self.player.position())
            block = np.zeros((2, n), np.float32)
            self.player.render(block)
            self.out.append(block)
            self.player.poll()
        return self.player.position()

    def schedule(self, clip: Clip, start_sample: int) -> None:
        self.scheduled.append(Scheduled(clip.job_id, start_sample, self.position(), clip))
        self.player.schedule(clip, start_sample)

    def stop(self) -> None:
        self.player.stop()

    def output(self) -> np.ndarray:
        return np.concatenate(self.out, axis=1)


def test_a_tempo_change_with_a_late_clip_restarts_the_reconformed_clip_on_the_new_grid() -> None:
    """Before: the playing clip kept looping at its old length, off the new grid."""
    rig = Rig({"bars": 1})
    sink = RenderingSink(rig.clock)
    rig.engine = Engine(rig.gen, sink, sample_rate=SR, clock=rig.clock,
                        state=EngineState({"tempo": 120.0, "bars": 1, "steps": 10}),
                        config=SchedulerConfig(lookahead=2, margin_s=MARGIN_S, max_tick_s=0.1))
    rig.gen.extra = {job_id: 30.0 for job_id in range(2, 50)}  # from job 2 on: very late

    async def main() -> None:
        task = asyncio.ensure_future(rig.engine.run())
        rig.engine.play()
        await rig.clock.advance(6.5)  # clip 1 plays from bar 2 and repeats at bar 3
        rig.engine.state.set("tempo", 90.0)  # from bar 4 (8 s)
        await rig.clock.advance(8.0)
        sink.position()
        await rig.engine.close()
        await task

    asyncio.run(main())
    t = rig.engine.transport
    new_bar = 4 * 60 * SR // 90
    assert [t.bar_start(b) for b in (4, 5, 6)] == [4 * BAR, 4 * BAR + new_bar,
                                                    4 * BAR + 2 * new_bar]
    out = sink.output()
    for bar in (4, 5, 6):
        line = t.bar_start(bar)
        # Clip 1's content (channel 0: the job that generated it), at its sample 0 on the line,
        # at the new length (channel 1: read position / length).
        assert out[0, line] == 1.0
        assert out[1, line] == 0.0, f"bar {bar}: not sample 0 ({out[1, line] * new_bar:.0f})"
        np.testing.assert_allclose(out[1, line + 1000], 1000 / new_bar, rtol=1e-6)
    refit = [s for s in sink.scheduled if s.clip.spec.tempo == 90.0]
    assert refit and refit[0].start == 4 * BAR
    assert refit[0].clip.request == sink.scheduled[1].clip.request
    assert refit[0].job_id in rig.gen.reconformed  # a conform of the kept image, no diffusion
    status = rig.engine.status()
    assert status["reconformed"] >= 1 and status["late"] == 1


def test_a_single_knob_move_reaches_the_generator_at_once() -> None:
    """Coalescing a sweep must not delay one change: the job for a single move is handed to
    the generator in the same instant (fake time), and a still knob plans nothing new."""

    async def body(rig: Rig) -> None:
        await rig.clock.run_until(lambda: len(rig.sink.scheduled) >= 2, 30.0)
        calls = len(rig.gen.calls)
        await rig.clock.advance(3.0)
        assert len(rig.gen.calls) == calls  # the still knob: the clip cache answers
        rig.engine.state.set("alpha", 0.5)
        await rig.clock.advance(0.0)
        assert rig.gen.calls[-1].request.alpha == 0.5
        assert rig.gen.calls[-1].created == rig.clock.t
        await rig.clock.advance(4.0)

    rig = run({"alpha_auto": False, "alpha": 0.2}, body)
    assert rig.engine.status()["generated"] == 2  # alpha 0.2 once, alpha 0.5 once
    assert_on_grid_without_gaps(rig)


def test_the_deadline_covers_the_sinks_pre_roll() -> None:
    """The player's crossfade ends on the bar line, so it needs each clip one crossfade
    (``lead_s``) before the line, on top of the margin: every clip and repeat is handed over
    by ``line - lead - margin``, and a clip ready after that deadline waits for the next line."""
    lead_s = 0.02
    lead = round(lead_s * SR)

    async def body(rig: Rig) -> None:
        rig.gen.extra[1] = 1.96  # job 1 is ready at 3.96 s: after 4 s - lead - margin
        await rig.clock.advance(8.0)

    rig = run({}, body, lead_s=lead_s)
    assert rig.engine.scheduler.config.deadline_samples(SR) == lead + MARGIN
    for s in rig.sink.scheduled:
        assert s.at <= s.start - lead - MARGIN + 1, (s.job_id, s.at, s.start)
    # Job 1 missed bar 2's deadline by 10 ms (it would have made it without the lead).
    assert rig.entry(1).start == 3 * BAR
    assert rig.engine.status()["late"] == 1
