"""Generation jobs and clips: the types the control plane, the worker and the player share.

The control plane (planner + scheduler, on the asyncio loop) turns the performer's state into
:class:`GenerationJob` objects, hands them to a :class:`ClipGenerator` (the worker process
behind an async facade) and gives the finished :class:`Clip` to a :class:`ClipSink` (the player)
with the sample at which it must start.

Lengths are derived once, in samples, by the transport: a clip's ``num_samples`` is the exact
span of its bars at its tempo, with the fractional remainder carried by the transport so the bar
grid never drifts (consecutive clips of the same bars may differ by one sample).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from engine import limits
from engine.errors import InvalidRequest
from engine.model.request import InferenceRequest

MAX_SAMPLE_RATE = 768_000
MAX_CHANNELS = 8

#: ``progress(step, total)``: denoising step ``step`` of ``total`` finished.
ProgressCallback = Callable[[int, int], None]


def _int(value: object, field: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidRequest(f"{field} must be an integer, not {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise InvalidRequest(f"{field} must be {bound}, not {value}")
    return value


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What a clip must be: its musical length at a tempo, and its exact length in samples.

    ``num_samples`` comes from :meth:`engine.live.transport.Transport.clip_samples` for the clip's
    start bar; it must lie within one sample of the exact (fractional) length
    ``bars * beats_per_bar * 60 / tempo * sample_rate``.
    """

    tempo: float
    bars: int
    beats_per_bar: int
    sample_rate: int
    num_samples: int

    def __post_init__(self) -> None:
        tempo = limits.check_tempo(self.tempo)
        object.__setattr__(self, "tempo", tempo)
        object.__setattr__(self, "bars", _int(self.bars, "bars", *limits.BARS))
        object.__setattr__(self, "beats_per_bar",
                           _int(self.beats_per_bar, "beats_per_bar", *limits.BEATS_PER_BAR))
        object.__setattr__(
            self, "sample_rate", _int(self.sample_rate, "sample_rate", 1000, MAX_SAMPLE_RATE)
        )
        num = _int(self.num_samples, "num_samples", 1)
        if abs(num - self.exact_samples) > 1.0:
            raise InvalidRequest(
                f"num_samples {num} does not match {self.bars} bar(s) of {self.beats_per_bar} "
                f"at {tempo:g} BPM and {self.sample_rate} Hz ({self.exact_samples:.3f} samples)"
            )
        object.__setattr__(self, "num_samples", num)

    @property
    def samples_per_beat(self) -> float:
        """Exact (fractional) samples per beat."""
        return 60.0 * self.sample_rate / self.tempo

    @property
    def exact_samples(self) -> float:
        """Exact (fractional) length of the clip's bars in samples."""
        return self.bars * self.beats_per_bar * self.samples_per_beat

    @property
    def seconds(self) -> float:
        """The clip's length in seconds (from ``num_samples``)."""
        return self.num_samples / self.sample_rate


@dataclasses.dataclass(frozen=True)
class GenerationJob:
    """One clip to generate: the request, the clip it must become, and where it will start.

    ``job_id`` is unique per engine run and increasing; ``start_bar`` is the bar the scheduler
    planned it for (it may start later when late); ``created`` is the control plane's clock
    (seconds) when the job was made.
    """

    job_id: int
    request: InferenceRequest
    spec: ClipSpec
    start_bar: int
    created: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "job_id", _int(self.job_id, "job_id", 0))
        if not isinstance(self.request, InferenceRequest):
            raise InvalidRequest("request must be an InferenceRequest")
        if not isinstance(self.spec, ClipSpec):
            raise InvalidRequest("spec must be a ClipSpec")
        object.__setattr__(self, "start_bar", _int(self.start_bar, "start_bar", -(2**62)))
        if not isinstance(self.created, int | float) or not math.isfinite(self.created):
            raise InvalidRequest(f"created must be a finite number, not {self.created!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Clip:
    """A finished clip: ``audio`` is float32 ``(spec.num_samples, channels)``, a seamless loop.

    The audio's end wraps to its start without a click, so a sink may read it circularly when
    a span between two bar lines is a sample longer than the clip. Nobody writes to ``audio``
    after the clip was made (the sink may keep a reference). ``seconds`` is how long the
    generation took.
    """

    job_id: int
    audio: np.ndarray
    spec: ClipSpec
    request: InferenceRequest
    seconds: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "job_id", _int(self.job_id, "job_id", 0))
        audio = self.audio
        if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim != 2:
            raise InvalidRequest("clip audio must be a float32 array (num_samples, channels)")
        if audio.shape[0] != self.spec.num_samples:
            raise InvalidRequest(
                f"clip audio has {audio.shape[0]} samples, its spec {self.spec.num_samples}"
            )
        if not 1 <= audio.shape[1] <= MAX_CHANNELS:
            raise InvalidRequest(f"clip audio must have 1..{MAX_CHANNELS} channels")
        if not isinstance(self.seconds, int | float) or not self.seconds >= 0:
            raise InvalidRequest(f"seconds must be a non-negative number, not {self.seconds!r}")

    @property
    def channels(self) -> int:
        """Number of audio channels."""
        return int(self.audio.shape[1])


@runtime_checkable
class ClipGenerator(Protocol):
    """Turns a :class:`GenerationJob` into a :class:`Clip` (the worker process's facade).

    Thread: ``generate`` is awaited on the control plane's asyncio loop; it must never block
    that loop (the work happens in another process or thread).

    Cancellation contract: cancelling the asyncio task that awaits ``generate`` cancels the
    job. The implementation stops the generation at the next denoising step boundary (the
    worker maps the cancellation to a flag polled between steps) and lets ``CancelledError``
    propagate promptly; it must not wait for the worker to finish before raising. A later
    ``generate`` call on the same generator is accepted at once and may queue behind the
    cancelled job's last step internally; a cancelled job never yields a clip, and one
    cancelled before the generator started it never starts.

    Calls may overlap: the scheduler keeps one planned job in flight per generator, and may
    ask for a re-conform of the playing clip (the same request at a new tempo) beside it,
    which a generator that kept the request's image answers without diffusion.

    ``progress(step, total)``, when given, is called on the loop thread after each denoising
    step; it must not block.

    Optional: ``async generate_batch(jobs) -> list[Clip]`` renders jobs that differ only in
    their alpha (one clip spec) in one call, the alphas sharing their UNet calls (the
    worker's); the scheduler's lattice uses it where it exists and ``generate`` one job at
    a time elsewhere. Cancelling it cancels every job of the batch.

    Errors: :class:`~engine.errors.InvalidRequest`, :class:`~engine.errors.UnknownId` and
    :class:`~engine.errors.InvalidImage` mean the job itself is bad (the scheduler reports it
    and does not retry). Any other exception (worker crashed, out of memory, model not
    loaded, broken pipe) is treated as transient: the scheduler retries with backoff.
    """

    async def generate(
        self, job: GenerationJob, progress: ProgressCallback | None = None
    ) -> Clip:
        """Generate ``job``; returns a clip with ``clip.spec == job.spec``."""
        ...


@runtime_checkable
class ClipSink(Protocol):
    """Where clips go to be heard (the player).

    The sink owns the audio clock. It plays a scheduled clip from ``start_sample`` until the
    next scheduled clip starts (with a crossfade that ends on that bar line, so the player
    needs the clip a crossfade before it: ``SchedulerConfig.lead_s``); when nothing new is
    scheduled it keeps looping the current clip (never silence). The scheduler also schedules
    the current clip again explicitly at each bar line where it repeats, so repeats stay on
    the bar grid.
    """

    def schedule(self, clip: Clip, start_sample: int, origin: int | None = None) -> None:
        """Start ``clip`` at ``start_sample`` on the sink's clock, read from ``origin``
        (``None``: from ``start_sample``; else an earlier sample, so the clip comes in at
        ``(start_sample - origin) mod length``: the scheduler passes it only for a lattice
        jump on a beat line, see :mod:`engine.live.scheduler`).

        Thread: the control plane (asyncio loop). Must not block, allocate audio-thread
        memory under a lock the audio thread waits on, or raise for a start in the past (a
        late start begins at once, with the clip's read position offset by the lateness).
        A clip scheduled at the same start as an earlier one replaces it.
        """
        ...

    def position(self) -> int:
        """Samples played so far (the audio clock); monotonic, counts while silent too.

        Thread: any; must not block.
        """
        ...

    def stop(self) -> None:
        """Fade out and go silent; clips scheduled later are dropped. ``position`` keeps running.

        Thread: the control plane; must not block.
        """
        ...
