"""The clip cache: finished clips by what determines them, so nothing is generated twice.

A clip is determined by its request (prompt pair, seeds, alpha, steps, guidance, denoising,
seed image, mask) and its clip spec (tempo, bars, meter, sample rate, exact length); the
worker's conform settings (phase method, channels) are fixed for a run. Manual mode with a
still knob plans the same request for every clip: the cache answers it, so a still knob costs
no generation at all. The scheduler wraps a hit in a new :class:`~engine.live.jobs.Clip` with
the new job's id (the audio array is shared; clips are immutable).

Thread: the control plane (asyncio loop) only.
"""

from __future__ import annotations

import collections

from engine.errors import InvalidRequest
from engine.live.jobs import Clip, ClipSpec
from engine.model.request import InferenceRequest

#: Clips kept by default: 2-bar stereo clips at 120 BPM and 48 kHz are 1.5 MB each.
DEFAULT_CLIPS = 32
#: ... and at most this many bytes of audio (long clips at slow tempos are large).
DEFAULT_BYTES = 256 * 2**20


class ClipCache:
    """Least recently used clips by ``(request, spec)``: at most ``size`` clips and
    ``max_bytes`` of audio; ``size`` 0 keeps nothing."""

    def __init__(self, size: int = DEFAULT_CLIPS, max_bytes: int = DEFAULT_BYTES) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 4096:
            raise InvalidRequest(f"clip cache size must be 0..4096, not {size!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidRequest(f"clip cache bytes must be >= 0, not {max_bytes!r}")
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._clips: collections.OrderedDict[tuple[InferenceRequest, ClipSpec], Clip] = (
            collections.OrderedDict())

    def __len__(self) -> int:
        return len(self._clips)

    def holds(self, request: InferenceRequest, spec: ClipSpec) -> bool:
        """Whether the clip of ``request`` and ``spec`` is cached; unlike :meth:`get` it
        counts no hit and leaves the eviction order alone (for displays)."""
        return (request, spec) in self._clips

    def get(self, request: InferenceRequest, spec: ClipSpec) -> Clip | None:
        """The cached clip of ``request`` conformed to ``spec``, or None."""
        key = (request, spec)
        clip = self._clips.get(key)
        if clip is not None:
            self._clips.move_to_end(key)
            self.hits += 1
        return clip

    def put(self, clip: Clip) -> None:
        """Remember ``clip`` (the oldest entry goes when full)."""
        if not self.size or clip.audio.nbytes > self.max_bytes:
            return
        key = (clip.request, clip.spec)
        old = self._clips.pop(key, None)
        if old is not None:
            self.bytes -= old.audio.nbytes
        self._clips[key] = clip
        self.bytes += clip.audio.nbytes
        while len(self._clips) > self.size or self.bytes > self.max_bytes:
            _, gone = self._clips.popitem(last=False)
            self.bytes -= gone.audio.nbytes

    def discard(self, request: InferenceRequest, spec: ClipSpec) -> None:
        """Forget the clip of ``request`` and ``spec`` if held (a dropped lattice's)."""
        clip = self._clips.pop((request, spec), None)
        if clip is not None:
            self.bytes -= clip.audio.nbytes

    def clear(self) -> None:
        """Forget every clip."""
        self._clips.clear()
        self.bytes = 0
