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


class ClipCache:
    """Least recently used clips by ``(request, spec)``; ``size`` 0 keeps nothing."""

    def __init__(self, size: int = DEFAULT_CLIPS) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 4096:
            raise InvalidRequest(f"clip cache size must be 0..4096, not {size!r}")
        self.size = size
        self.hits = 0
        self._clips: collections.OrderedDict[tuple[InferenceRequest, ClipSpec], Clip] = (
            collections.OrderedDict())

    def __len__(self) -> int:
        return len(self._clips)

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
        if not self.size:
            return
        key = (clip.request, clip.spec)
        self._clips[key] = clip
        self._clips.move_to_end(key)
        while len(self._clips) > self.size:
            self._clips.popitem(last=False)

    def clear(self) -> None:
        """Forget every clip."""
        self._clips.clear()
