"""Clip audio from the worker process to the daemon through shared memory.

Why: a clip of 16 bars at 40 BPM is 37 MB of stereo float32. Pickled through the worker's
pipe it was read with a blocking ``recv`` on the daemon's asyncio loop (about 0.2 s of stall,
xruns on a real server). Now the daemon owns a small pool of shared memory segments
(:class:`SlotPool`); each job carries the name of a slot big enough for its clip, the worker
copies the clip into it once (:class:`SlotWriter`) and answers with a small header over the
pipe; the daemon copies the slot into a buffer of its own in a thread (numpy releases the GIL
for the copy, so the loop never waits) and recycles the slot at once.

Why copy once more instead of lending the slot to the player: clips live on in the clip
cache (up to 256 MB) and in the player for minutes; lent slots would pin that much of
``/dev/shm`` (64 MB by default in a container) and make the pool grow without bound. Copied
out, the pool holds at most the clips in flight (a planned job and a re-conform), and a
segment's pages are reserved when it is made (``posix_fallocate``), so a full ``/dev/shm`` is
an error the daemon sees at once (it then falls back to the pipe), never a SIGBUS in the
worker.

Lifetime: the daemon creates and unlinks every segment (the worker only attaches), so a
worker crash cannot leak one; :meth:`SlotPool.close` unlinks them all, and Python's resource
tracker unlinks them if the daemon itself is killed.

Threads: :class:`SlotPool` belongs to the daemon's asyncio loop (``copy_out`` runs its copy in
the loop's default executor). :class:`SlotWriter` belongs to the worker process's main thread.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import uuid
from multiprocessing import shared_memory

import numpy as np

log = logging.getLogger(__name__)

#: Segment sizes are rounded up to this, so slightly longer clips reuse a slot.
GRAIN = 1 << 20
#: Free segments kept for reuse; more are unlinked.
KEEP_FREE = 2
#: Segments the worker keeps attached (it cannot know when the daemon unlinks one).
ATTACHED = 4


def segment_prefix() -> str:
    """The name prefix of this process's segments (``riff-<pid>-``): tests look for leaks."""
    return f"riff-{os.getpid()}-"


class SlotPool:
    """Shared memory slots for clips on their way from the worker. Loop thread only."""

    def __init__(self, keep_free: int = KEEP_FREE) -> None:
        self.keep_free = keep_free
        self._free: list[shared_memory.SharedMemory] = []
        self._busy: dict[str, shared_memory.SharedMemory] = {}
        self._ids = itertools.count()
        self._tag = uuid.uuid4().hex[:6]
        self.created = 0
        self.failed = 0
        self.closed = False

    def acquire(self, nbytes: int) -> str | None:
        """A slot of at least ``nbytes`` (its name), or None when ``/dev/shm`` has no room
        (the clip then travels over the pipe). Creating a segment reserves its pages."""
        if self.closed:
            return None
        fits = [s for s in self._free if s.size >= nbytes]
        if fits:
            shm = min(fits, key=lambda s: s.size)
            self._free.remove(shm)
        else:
            size = -(-max(nbytes, 1) // GRAIN) * GRAIN
            name = f"{segment_prefix()}{self._tag}-{next(self._ids)}"
            shm = shared_memory.SharedMemory(name, create=True, size=size)
            try:
                os.posix_fallocate(shm._fd, 0, size)  # type: ignore[attr-defined]
            except OSError as exc:
                shm.close()
                shm.unlink()
                self.failed += 1
                log.warning("no room for a %d MB clip slot in shared memory (%s); clips "
                            "come over the pipe instead", size >> 20, exc)
                return None
            self.created += 1
        self._busy[shm.name] = shm
        return shm.name

    def view(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 array of ``shape`` at the start of busy slot ``name`` (no copy)."""
        shm = self._busy[name]
        count = int(np.prod(shape))
        if count * 4 > shm.size:
            raise ValueError(f"a {shape} clip does not fit slot {name} ({shm.size} bytes)")
        return np.ndarray(shape, np.float32, buffer=shm.buf)

    async def copy_out(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A private copy of the clip in slot ``name``; the slot is free again afterwards.
        The copy runs in the loop's default executor without the GIL: the loop goes on."""
        try:
            src = self.view(name, shape)
            dst = np.empty(shape, np.float32)
            await asyncio.get_running_loop().run_in_executor(None, np.copyto, dst, src)
            del src
            return dst
        finally:
            self.release(name)

    def release(self, name: str) -> None:
        """Slot ``name`` is free again (its job ended, however). Unknown names are ignored:
        a slot is released once, by whoever ends its job."""
        shm = self._busy.pop(name, None)
        if shm is None:
            return
        if self.closed:  # close() unlinked it already; only the mapping is left
            shm.close()
            return
        self._free.append(shm)
        while len(self._free) > self.keep_free:
            self._drop(min(self._free, key=lambda s: s.size))

    def _drop(self, shm: shared_memory.SharedMemory) -> None:
        if shm in self._free:
            self._free.remove(shm)
        shm.close()
        shm.unlink()

    @property
    def segments(self) -> int:
        """Segments that exist now (free and busy)."""
        return len(self._free) + len(self._busy)

    def close(self) -> None:
        """Unlink every segment; busy ones are unmapped when released (their copy may still
        be running in the executor). Safe to call twice."""
        self.closed = True
        for shm in list(self._free):
            self._drop(shm)
        for name, shm in list(self._busy.items()):
            shm.unlink()
            try:
                shm.close()
            except BufferError:  # a copy still reads it: unmapped on release
                continue
            del self._busy[name]


class SlotWriter:
    """The worker's side: attach to slots by name and copy clips into them. Worker main
    thread only."""

    def __init__(self, attached: int = ATTACHED) -> None:
        self.attached = attached
        self._segments: collections.OrderedDict[str, shared_memory.SharedMemory] = (
            collections.OrderedDict())

    def write(self, name: str, audio: np.ndarray) -> bool:
        """Copy ``audio`` (float32) into slot ``name``; False when the slot is gone or too
        small (the caller then sends the audio over the pipe)."""
        shm = self._segments.get(name)
        if shm is None:
            try:
                shm = shared_memory.SharedMemory(name)
            except FileNotFoundError:
                return False
            self._segments[name] = shm
            while len(self._segments) > self.attached:
                self._segments.popitem(last=False)[1].close()
        else:
            self._segments.move_to_end(name)
        if audio.dtype != np.float32 or audio.nbytes > shm.size:
            return False
        np.copyto(np.ndarray(audio.shape, np.float32, buffer=shm.buf), audio)
        return True

    def close(self) -> None:
        """Unmap every attached slot."""
        while self._segments:
            self._segments.popitem()[1].close()
