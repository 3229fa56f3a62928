"""Whether the asyncio event loop stays free while a call runs: a task that ticks every 5 ms.

    async with Heartbeat() as beat:
        t0 = time.perf_counter(); await llm.agenerate(...); t1 = time.perf_counter()
    assert beat.kept_ticking(t0, t1)

A loop blocked by the call ticks at most once in that time; a free one ticks about every 5 ms
(the check asks for 30 % of that, at least 3, as a loaded machine stretches sleeps)."""

from __future__ import annotations

import asyncio
import time

PERIOD = 0.005


class Heartbeat:
    def __init__(self) -> None:
        self.ticks: list[float] = []
        self._done = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def _beat(self) -> None:
        while not self._done.is_set():
            self.ticks.append(time.perf_counter())
            await asyncio.sleep(PERIOD)

    async def __aenter__(self) -> "Heartbeat":
        self._task = asyncio.create_task(self._beat())
        await asyncio.sleep(2 * PERIOD)
        return self

    async def __aexit__(self, *exc) -> None:
        self._done.set()
        await self._task

    def count(self, t0: float, t1: float) -> int:
        return sum(t0 <= t <= t1 for t in self.ticks)

    def kept_ticking(self, t0: float, t1: float) -> bool:
        return self.count(t0, t1) >= max(3, int((t1 - t0) / PERIOD * 0.3))
