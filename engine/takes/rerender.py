"""Offline re-render of a recorded set from its control log, deterministically.

The live engine logs every generation request (full request + clip spec) and the sample at
which each clip started (see :mod:`engine.takes.control_log`). Replaying that offline means:
generate each clip that was heard again, at a chosen quality (more denoising steps, a better
phase reconstruction, a bigger model), and place it on the same timeline through the same
bar-timeline :class:`~engine.live.player.Player` the live engine uses (same crossfades, same loops,
same stops). Nothing depends on wall-clock time or thread timing, so the same log and
settings give the same audio, sample for sample.

Timeline events used: ``clip_start`` (schedule the job's clip at that sample, read from its
``origin`` when logged: a lattice clip that came in mid-loop on a beat line), commands
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
            pending.append((event.sample, "start", (event.job, event.origin)))
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
    starts = [start[0] for _, kind, start in events if kind == "start"]
    if not starts:
        raise InvalidRequest("the control log has no clip starts: nothing was heard")
    crossfade = settings.crossfade_samples
    if crossfade is None:
        crossfade = int(header.info.get("crossfade_samples", PlayerConfig.crossfade_samples))
    player = Player(PlayerConfig(sample_rate=header.sample_rate, channels=header.channels,
                                 crossfade_samples=crossfade, max_block=settings.block))
    clips = _Clips(jobs, starts, header.sample_rate, settings, generate, progress)
    flac = out.suffix.lower() == ".flac"
    out.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(out, "w", header.sample_rate, header.channels,
                      subtype="PCM_24" if flac else "FLOAT", format="FLAC" if flac else "WAV"
                      ) as sink:
        writer = _Writer(player, sink, header.channels, settings.block,
                         origin=_take_origin(control), clip=flac)
        writer.render_until(_play_events(events, player, writer, clips))
    return RerenderResult(out, writer.written, header.sample_rate, clips.made, player.counters())


def _take_origin(control: ControlLog) -> int:
    """The sample the output starts at: a take started mid-set holds the clock from its
    take_start command on, so only what follows it is written (0 otherwise)."""
    return min((e.sample for e in control.of_type(CommandEvent) if e.name == TAKE_START),
               default=0)


def _play_events(events: list[tuple[int, str, Any]], player: Player, writer: _Writer,
                 clips: _Clips) -> int:
    """Render up to each event and apply it (schedule a clip, stop); the sample the output
    ends at: the end line's, or, without one, where the last clip has played out once.

    A clip is handed to the player one crossfade before its start sample, as the live
    scheduler does: the crossfade ends on the start sample (see :mod:`engine.live.player`)."""
    last_start, last_length = 0, 0
    lead = player.config.crossfade_samples
    for sample, kind, start in events:
        writer.render_until(sample - lead if kind == "start" else sample)
        if kind == "end":
            return sample
        if kind == "stop":
            player.stop()
            continue
        job_key, origin = start
        clip = clips.take(job_key)
        player.schedule(clip, sample, origin=origin)
        player.poll()
        last_start, last_length = sample, clip.spec.num_samples
    return max(writer.position, last_start + last_length)  # the take was cut short


class _Writer:
    """Runs the player block by block and writes what it renders from ``origin`` on."""

    def __init__(self, player: Player, sink: sf.SoundFile, channels: int, block: int, *,
                 origin: int, clip: bool) -> None:
        self.player = player
        self.sink = sink
        self.channels = channels
        self.block = block
        self.origin = origin
        self.clip = clip  # FLAC is integer PCM: keep samples within [-1, 1]
        self.buffer = np.zeros((channels, block), np.float32)
        self.position = 0  # samples rendered
        self.written = 0  # frames written (those from the origin on)

    def render_until(self, target: int) -> None:
        """Render (and write) up to sample ``target``; nothing when already there."""
        while self.position < target:
            n = min(self.block, target - self.position)
            self.player.render([self.buffer[ch, :n] for ch in range(self.channels)])
            skip = min(n, max(0, self.origin - self.position))
            block = self.buffer[:, skip:n].T
            if block.shape[0]:
                self.sink.write(np.clip(block, -1, 1) if self.clip else block)
                self.written += block.shape[0]
            self.position += n
            self.player.poll()


class _Clips:
    """The clips of the log's jobs, each generated once, when first started, and dropped when
    its last start is scheduled (the player keeps its own reference while it plays)."""

    def __init__(self, jobs: dict[str, GenerationEvent], starts: list[str], sample_rate: int,
                 settings: RerenderSettings, generate: Callable[[GenerationJob], Clip],
                 progress: Callable[[int, int], None] | None) -> None:
        self.jobs = jobs
        self.sample_rate = sample_rate
        self.settings = settings
        self.generate = generate
        self.progress = progress
        self.remaining = collections.Counter(starts)  # clip starts still ahead, per job
        self.ids = {job: i for i, job in enumerate(dict.fromkeys(starts))}
        self.clips: dict[str, Clip] = {}
        self.made = 0

    def take(self, job_key: str) -> Clip:
        """The clip of one start of ``job_key``, generated on its first start."""
        clip = self.clips.get(job_key)
        if clip is None:
            clip = self.generate(_job(self.jobs[job_key], self.ids[job_key], self.sample_rate,
                                      self.settings))
            self.clips[job_key] = clip
            self.made += 1
            if self.progress is not None:
                self.progress(self.made, len(self.ids))
        self.remaining[job_key] -= 1
        if self.remaining[job_key] == 0:
            del self.clips[job_key]
        return clip


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
