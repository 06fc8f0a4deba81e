"""Offline re-render of a recorded set from its control log, deterministically.

The live engine logs every generation request (full request + clip spec) and the sample at
which each clip started (see :mod:`engine.takes.control_log`). Replaying that offline means:
generate each clip that was heard again, at a chosen quality (more denoising steps, a better
phase reconstruction, a bigger model), and place it on the same timeline through the same
bar-timeline :class:`~engine.live.player.Player` the live engine uses (same crossfades, same loops,
same stops). Nothing depends on wall-clock time or thread timing, so the same log and
settings give the same audio, sample for sample.

Timeline events used: ``clip_start`` (schedule the job's clip at that sample), commands
``/riff/stop`` (fade to silence), ``take_start`` (a take started mid-set: only the clock from
there on is written, so the output lines up with the take's audio) and the ``end`` line (the
length; without it, the last clip plays once more after the last event). Jobs that were
generated but never started (pre-empted or late) are not rendered. A clip that arrived late
in the live take (the current clip repeated meanwhile) starts on its bar line here: the
re-render is the set as it was meant.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from engine.errors import InvalidRequest
from engine.live.jobs import Clip, GenerationJob
from engine.live.player import Player, PlayerConfig
from engine.live.wire import parse_spec
from engine.takes.control_log import (
    ClipStartEvent,
    CommandEvent,
    ControlLog,
    EndEvent,
    GenerationEvent,
)
from engine.takes.recording import TAKE_START

log = logging.getLogger(__name__)

STOP_COMMANDS = frozenset({"/riff/stop", "stop"})


@dataclasses.dataclass(frozen=True)
class RerenderSettings:
    """Quality overrides for a re-render; ``None`` keeps what the log says."""

    steps: int | None = None
    crossfade_samples: int | None = None
    block: int = 4096

    def __post_init__(self) -> None:
        if self.steps is not None and not 1 <= self.steps <= 150:
            raise InvalidRequest(f"steps must be between 1 and 150, not {self.steps}")
        if self.crossfade_samples is not None and self.crossfade_samples < 0:
            raise InvalidRequest("crossfade must not be negative")
        if not 16 <= self.block <= 65536:
            raise InvalidRequest(f"block must be between 16 and 65536, not {self.block}")


@dataclasses.dataclass(frozen=True)
class RerenderResult:
    """What was written: frames, clips generated, and the player's counters."""

    path: Path
    frames: int
    sample_rate: int
    clips: int
    counters: dict[str, int]


def timeline(control: ControlLog) -> tuple[list[tuple[int, str, Any]], dict[str, GenerationEvent]]:
    """The replayable events sorted by sample (file order kept for equal samples), and the
    generation requests by job id. Raises InvalidRequest for a clip start of an unknown job.

    A clip scheduled ahead and then dropped by a stop (logged after it, taking effect at or
    before its start) was never heard, so it is left out, as the player left it out.
    """
    jobs: dict[str, GenerationEvent] = {}
    events: list[tuple[int, str, Any]] = []
    pending: list[tuple[int, str, Any]] = []  # starts not yet known to survive later stops
    for event in control.events:
        if isinstance(event, GenerationEvent):
            jobs[event.job] = event
        elif isinstance(event, ClipStartEvent):
            if event.job not in jobs:
                raise InvalidRequest(f"clip_start at sample {event.sample} names job "
                                     f"{event.job!r}, which no generation line requested")
            pending.append((event.sample, "start", event.job))
        elif isinstance(event, CommandEvent) and event.name in STOP_COMMANDS:
            events.extend(p for p in pending if p[0] < event.sample)
            pending = []
            events.append((event.sample, "stop", None))
        elif isinstance(event, EndEvent):  # a start at or after the end was never heard
            events.extend(p for p in pending if p[0] < event.sample)
            pending = []
            events.append((event.sample, "end", None))
    events.extend(pending)
    events.sort(key=lambda e: e[0])  # stable: equal samples keep file order
    return events, jobs


def rerender(
    control: ControlLog,
    out: Path,
    generate: Callable[[GenerationJob], Clip],
    settings: RerenderSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RerenderResult:
    """Re-render ``control`` into ``out`` (.wav float or .flac 24-bit).

    ``generate(job)`` makes a clip (``engine.takes.render.Renderer.render_clip`` offline);
    ``progress(done, total)`` is called after each clip is generated.
    """
    settings = settings or RerenderSettings()
    header = control.header
    events, jobs = timeline(control)
    starts = [job for _, kind, job in events if kind == "start"]
    if not starts:
        raise InvalidRequest("the control log has no clip starts: nothing was heard")
    crossfade = settings.crossfade_samples
    if crossfade is None:
        crossfade = int(header.info.get("crossfade_samples", PlayerConfig.crossfade_samples))
    player = Player(PlayerConfig(sample_rate=header.sample_rate, channels=header.channels,
                                 crossfade_samples=crossfade, max_block=settings.block))
    remaining = collections.Counter(starts)  # clip starts still ahead, per job
    ids = {job: i for i, job in enumerate(dict.fromkeys(starts))}
    clips: dict[str, Clip] = {}
    made = 0
    buffer = np.zeros((header.channels, settings.block), np.float32)
    fmt = "FLAC" if out.suffix.lower() == ".flac" else "WAV"
    subtype = "PCM_24" if fmt == "FLAC" else "FLOAT"
    end: int | None = None
    position = 0
    # A take started mid-set holds the clock from its take_start command on: write from there.
    origin = min((e.sample for e in control.of_type(CommandEvent) if e.name == TAKE_START),
                 default=0)
    written = 0
    last_start, last_length = 0, 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(out, "w", header.sample_rate, header.channels, subtype=subtype,
                      format=fmt) as sink:

        def render_until(target: int) -> None:
            nonlocal position, written
            while position < target:
                n = min(settings.block, target - position)
                player.render([buffer[ch, :n] for ch in range(header.channels)])
                skip = min(n, max(0, origin - position))
                block = buffer[:, skip:n].T
                if block.shape[0]:
                    sink.write(np.clip(block, -1, 1) if fmt == "FLAC" else block)
                    written += block.shape[0]
                position += n
                player.poll()

        for sample, kind, job_key in events:
            render_until(sample)
            if kind == "end":
                end = sample
                break
            if kind == "stop":
                player.stop()
                continue
            clip = clips.get(job_key)
            if clip is None:
                clip = generate(_job(jobs[job_key], ids[job_key], header.sample_rate,
                                     settings))
                clips[job_key] = clip
                made += 1
                if progress is not None:
                    progress(made, len(ids))
            player.schedule(clip, sample)
            player.poll()
            last_start, last_length = sample, clip.spec.num_samples
            remaining[job_key] -= 1
            if remaining[job_key] == 0:  # the player keeps its own reference while it plays
                del clips[job_key]
        if end is None:  # no end line (the take was cut short): let the last clip play out
            end = max(position, last_start + last_length)
        render_until(end)
    return RerenderResult(out, written, header.sample_rate, made, player.counters())


def _job(event: GenerationEvent, job_id: int, sample_rate: int, settings: RerenderSettings
         ) -> GenerationJob:
    spec = parse_spec(dict(event.clip))
    if spec.sample_rate != sample_rate:
        raise InvalidRequest(f"job {event.job}: clip at {spec.sample_rate} Hz in a "
                             f"{sample_rate} Hz log")
    request = event.request
    if settings.steps is not None:
        request = request.replace(num_inference_steps=settings.steps)
    return GenerationJob(job_id=job_id, request=request, spec=spec,
                         start_bar=int(event.bar), created=0.0)
