"""The bounded, in-order queue between HTTP handlers and the one generation thread.

A GPU runs one generation at a time, so requests wait their turn in arrival order. The queue
holds at most ``limit`` waiting requests (the running one not counted); one more is refused
at once with :class:`QueueFull` (the server answers 503 with Retry-After) instead of piling
up work nobody will wait for.

The work itself runs in a dedicated thread, never on the event loop. ``workers`` > 1 lets
that many items run at once (each on its own thread): for a backend that forwards to a pool
of generators (``riff serve --ray``), where the pool, not this queue, decides what runs on
which GPU and batches concurrent requests. A waiting
request whose client goes away is skipped; a running one is asked to stop through the
``cancel()`` poll it receives (the pipeline checks it between denoising steps).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
#: ``progress(step, total)``.
Progress = Callable[[int, int], None]
#: The work: ``work(cancel, progress) -> result``, run on the generation thread.
Work = Callable[[Callable[[], bool], Progress], T]


class QueueFull(Exception):
    """The queue already holds its limit of waiting requests."""


@dataclasses.dataclass
class _Item(Generic[T]):
    work: Work[T]
    future: asyncio.Future[T]
    progress: Progress | None
    cancelled: bool = False


class Ticket(Generic[T]):
    """A queued piece of work: wait for its result, or cancel it."""

    def __init__(self, item: _Item[T]) -> None:
        self._item = item

    @property
    def future(self) -> asyncio.Future[T]:
        """Done when the work finished, failed or was skipped."""
        return self._item.future

    def cancel(self) -> None:
        """Skip the work if it has not started, else ask it to stop. Thread: the event loop."""
        self._item.cancelled = True

    async def wait(self) -> T:
        """The work's result; cancelling the waiting task cancels the work (see cancel)."""
        try:
            return await asyncio.shield(self._item.future)
        except asyncio.CancelledError:
            self._item.cancelled = True
            raise


class GenerationQueue:
    """FIFO of generation work, executed ``workers`` at a time (default one) on dedicated
    threads.

    Thread: every method is called on the event loop thread. ``on_done(seconds, error)`` is
    called there after each executed item.
    """

    def __init__(
        self, limit: int, on_done: Callable[[float, BaseException | None], None] | None = None,
        workers: int = 1,
    ) -> None:
        if limit < 1:
            raise ValueError("queue limit must be at least 1")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.limit = limit
        self.workers = workers
        self._on_done = on_done
        self._queue: asyncio.Queue[_Item[Any]] = asyncio.Queue()
        # The same items in order, to count the live ones: a cancelled item stays in the
        # asyncio queue until the consumer skips it, but no longer counts as waiting.
        self._waiting: collections.deque[_Item[Any]] = collections.deque()
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, "riff-generate")
        self._tasks: list[asyncio.Task[None]] = []
        #: Items running now (0 or 1 with one worker).
        self.busy = 0

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the one running, nor those whose client left)."""
        return sum(not item.cancelled for item in self._waiting)

    def start(self) -> None:
        """Start the consumer tasks (one per worker) on the running loop."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume()) for _ in range(self.workers)]

    async def close(self) -> None:
        """Stop taking work, fail waiting requests, and wait for the running one to end."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._waiting.popleft()
            if not item.future.done() and not item.cancelled:
                item.future.set_exception(RuntimeError("server is shutting down"))
        # The running work stops at its next denoising step; wait for it off the loop.
        await asyncio.to_thread(self._executor.shutdown, True)

    def enqueue(self, work: Work[T], progress: Progress | None = None) -> Ticket[T]:
        """Queue ``work`` now; raises QueueFull when ``limit`` requests already wait for a
        worker (not counting those an idle worker is about to take).

        ``progress`` is called on the loop thread. Thread: the event loop.
        """
        # Waiting items that an idle worker takes at the loop's next turn are not waiting
        # for a turn: with several workers a burst must not be refused while workers idle.
        if self.depth >= self.limit + max(0, self.workers - self.busy):
            raise QueueFull(f"{self.limit} requests are already waiting")
        item: _Item[T] = _Item(work, asyncio.get_running_loop().create_future(), progress)
        self._queue.put_nowait(item)
        self._waiting.append(item)
        return Ticket(item)

    async def submit(self, work: Work[T], progress: Progress | None = None) -> T:
        """Queue ``work`` and wait for its result (see :meth:`enqueue` and :meth:`Ticket.wait`)."""
        return await self.enqueue(work, progress).wait()

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            self._waiting.popleft()
            if item.cancelled:
                item.future.cancel()
                continue
            self.busy += 1
            started = time.perf_counter()
            error: BaseException | None = None

            def progress(step: int, total: int, item: _Item[Any] = item) -> None:
                """Called on the generation thread; hands the update to the loop."""
                if item.progress is not None:
                    loop.call_soon_threadsafe(item.progress, step, total)

            try:
                result = await loop.run_in_executor(
                    self._executor, item.work, lambda item=item: item.cancelled, progress
                )
            except asyncio.CancelledError:  # close(): ask the work to stop, fail its request
                item.cancelled = True
                if not item.future.done():
                    item.future.set_exception(RuntimeError("server is shutting down"))
                raise
            except Exception as exc:  # handed to the waiting request, counted by on_done
                error = exc
                if item.cancelled:
                    item.future.cancel()  # nobody waits for it; no unretrieved exception
                elif not item.future.done():
                    item.future.set_exception(exc)
            else:
                if not item.future.done():
                    item.future.set_result(result)
            finally:
                self.busy -= 1
            if self._on_done is not None:
                self._on_done(time.perf_counter() - started, error)
