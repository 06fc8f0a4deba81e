"""GenerationQueue with several workers: what ``riff serve --ray`` hands its pool at once."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from protocols.http.queue import GenerationQueue, QueueFull


def test_workers_run_at_once_then_the_queue_waits_then_it_is_full() -> None:
    gates = [threading.Event() for _ in range(3)]
    running: list[int] = []

    def work(i: int) -> Any:
        def run(cancel: Any, progress: Any) -> int:
            running.append(i)
            while not gates[i].wait(0.01):
                if cancel():
                    return -1
            return i
        return run

    async def scenario() -> None:
        queue = GenerationQueue(1, workers=2)
        queue.start()
        try:
            tickets = [queue.enqueue(work(i)) for i in range(2)]
            while queue.busy < 2 or len(running) < 2:  # both running, none waiting
                await asyncio.sleep(0.01)
            assert queue.depth == 0 and sorted(running) == [0, 1]
            third = queue.enqueue(work(2))
            assert queue.depth == 1
            with pytest.raises(QueueFull):
                queue.enqueue(work(2))
            gates[1].set()  # the second finishes first: no head-of-line blocking
            assert await tickets[1].wait() == 1
            gates[2].set()
            assert await third.wait() == 2
            gates[0].set()
            assert await tickets[0].wait() == 0
            assert queue.busy == 0 and queue.depth == 0
        finally:
            for gate in gates:
                gate.set()
            await queue.close()

    asyncio.run(scenario())


def test_one_worker_is_the_default_and_runs_in_order() -> None:
    order: list[int] = []

    async def scenario() -> None:
        queue = GenerationQueue(4)
        queue.start()
        try:
            tickets = [queue.enqueue(lambda c, p, i=i: order.append(i) or i) for i in range(3)]
            assert [await t.wait() for t in tickets] == [0, 1, 2]
        finally:
            await queue.close()

    asyncio.run(scenario())
    assert order == [0, 1, 2]


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        GenerationQueue(1, workers=0)
