"""Noticing that this process stood still: a paused VM, SIGSTOP, a long stop-the-world.

When the process resumes, every timer that ran out meanwhile fires at once: calls whose
answers are already waiting in the socket buffers end as timeouts, and connections the
provider closed while we slept fail. None of that is the provider's doing, so a failure
that overlaps a stall of the process is not counted against the upstream (the request
still moves on to another attempt).

A task ticks every TICK seconds; a gap well beyond that between two ticks is a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("gateway.pool")

TICK_SECONDS = 0.25
# A tick this late means the whole process stood still (a busy event loop is late by
# milliseconds, a garbage collection by a fraction of a second).
STALL_SECONDS = 2.0
# Failures this soon after a stall ended are put down to it.
GRACE_SECONDS = 2.0


class StallWatch:
    """Remembers the last few stalls of this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_tick = clock()
        self._stalls: deque[tuple[float, float]] = deque(maxlen=8)  # (from, to)
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        """Start ticking (from inside the running loop), if not yet."""
        if self._task is None or self._task.done():
            self._last_tick = self._clock()
            self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = self._clock()
            if now - self._last_tick > STALL_SECONDS:
                self._stalls.append((self._last_tick, now))
                log.warning(
                    "this process stood still for %.1f s (paused or starved); failures "
                    "of calls caught in it are not held against the upstreams",
                    now - self._last_tick,
                )
            self._last_tick = now

    def explains(self, started: float, now: float) -> bool:
        """True when a call that ran from `started` to `now` (monotonic) was caught in a
        stall: one is going on (the ticker has not run for too long), or one overlapped
        the call and ended only just before it failed."""
        if self._task is not None and now - self._last_tick > STALL_SECONDS:
            return True
        return any(to > started and now - to < GRACE_SECONDS for _, to in self._stalls)

    async def aclose(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
