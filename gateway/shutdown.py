"""Graceful shutdown: when it began, and when in-flight work must give up.

On SIGTERM the server stops accepting connections (uvicorn does that) and the requests it
holds get `grace_seconds` to finish. A request still running then is answered with an
OpenAI-shaped 503 (see api/middleware.py), so its caller gets an error it can retry
elsewhere, not a connection cut in silence.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("gateway")


class Shutdown:
    """The shutdown clock, shared by the command line (which sees the signal) and the app."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cutoff: asyncio.Future[None] | None = None
        self._begun = False
        self._cut_off = False
        # The tasks serving image requests now: cancelled at the cutoff (see api/middleware).
        self._running: set[asyncio.Task[object]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop that serves requests (at app startup)."""
        self._loop = loop
        self._cutoff = loop.create_future()
        if self._begun:
            loop.call_soon(self._start)

    @property
    def begun(self) -> bool:
        """True once shutdown has been asked for: new image requests are refused."""
        return self._begun

    def cutoff(self) -> asyncio.Future[None]:
        """Done when the grace period is over; in-flight requests are then cut off.

        Binds to the running loop if startup did not (an app driven without its lifespan,
        as some test clients do, each request on a loop of its own).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._cutoff is None:
            self.bind(loop)
        assert self._cutoff is not None
        return self._cutoff

    @property
    def cut_off(self) -> bool:
        """True once the grace period is over."""
        return self._cut_off

    def track(self, task: asyncio.Task[object]) -> None:
        """Cancel `task` when the grace period ends (until untrack)."""
        self._running.add(task)

    def untrack(self, task: asyncio.Task[object]) -> None:
        self._running.discard(task)

    def begin(self) -> None:
        """Start the grace period. Safe to call from a signal handler or another thread."""
        if self._begun:
            return
        self._begun = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        log.info(
            "shutting down: new requests are refused; in-flight image requests have %gs",
            self.grace_seconds,
        )
        assert self._loop is not None
        self._loop.call_later(self.grace_seconds, self._cut)

    def _cut(self) -> None:
        self._cut_off = True
        if self._cutoff is not None and not self._cutoff.done():
            self._cutoff.set_result(None)
        for task in list(self._running):
            task.cancel()
