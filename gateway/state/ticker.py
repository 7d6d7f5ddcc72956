"""A step run at an interval in the background, and a stop that always stops it.

The replicas' syncs (limits, token health) run this way. Cancelling alone is not enough
to stop such a loop on Python 3.11: when the write a Redis call awaits completes in the
same event-loop step as the cancellation, `asyncio.wait_for` returns the result and the
cancellation is lost (CPython gh-86296, fixed in 3.12), and the loop would go on forever,
holding up shutdown. So the loop also checks a flag, and the stop waits a bounded time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.state")


class Ticker:
    """`step(tick)` every `seconds` (tick counts from 1) until `stop()`."""

    def __init__(self, seconds: float, step: Callable[[int], Awaitable[None]]) -> None:
        self._seconds = seconds
        self._step = step
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        for tick in itertools.count(1):
            await asyncio.sleep(self._seconds)
            if self._stopping:
                return
            try:
                await self._step(tick)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one step must not end the syncing for good
                log.exception("background step failed")
            if self._stopping:
                return

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop; waits at most `timeout` for a step under way."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)
