"""A clock that moves only when told: the control plane run offline, faster than real time.

The scheduler, the engine and the transport take their clock by injection (``now()`` and
``async sleep()``, the :class:`~engine.live.scheduler.Clock` protocol). With this one, tests
and benchmarks run a whole performance on a real asyncio loop without waiting: every sleeper
wakes in time order when :meth:`ManualClock.advance` passes its deadline, and the loop is
allowed to settle in between, so the result is the same on a busy machine as on an idle one.

Thread: the asyncio loop that awaits it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class ManualClock:
    """Seconds that pass only when :meth:`advance` is awaited."""

    def __init__(self, settle_turns: int = 40) -> None:
        self.t = 0.0
        self.settle_turns = settle_turns
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """The current simulated time in seconds."""
        return self.t

    async def sleep(self, seconds: float) -> None:
        """Wait until :meth:`advance` has moved the clock ``seconds`` on."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(seconds, 0.0), next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        """Let every runnable task run until it waits again."""
        for _ in range(self.settle_turns):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking sleepers in deadline order."""
        target = self.t + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self.t = max(self.t, when)
            fut.set_result(None)
            await self.settle()
        self.t = target
        await self.settle()
