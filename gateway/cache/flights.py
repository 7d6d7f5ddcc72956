"""Single flight: while one caller makes a key's images, identical requests wait for it.

The caller that finds no flight leads one and, in the common case, does the work itself,
in its own task: no task, shield or future per request when nobody else asks for the same
key (most requests), which is a good part of what a waiting request holds. Those that join
wait on a future the leader settles. A failure reaches every waiter as the same exception,
so nobody hangs.

The leader leaving must not cost the others their images:
- `detached=True` (a caller that may hang up mid-way, like a stream): the work runs in a
  task of its own from the start, the leader is one of its waiters, and the work is
  cancelled only when every waiter has gone (nobody is left to pay for it).
- otherwise (a caller cancelled only when the process stops, or a batch line): if the
  leader is cancelled while others wait, the work starts again in a task for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("outcome", "task", "waiters")

    def __init__(self) -> None:
        # The work, when it runs in a task of its own; None while the leader does it.
        self.task: asyncio.Task[T] | None = None
        self.outcome: asyncio.Future[T] | None = None  # made when someone waits on it
        self.waiters = 0  # callers awaiting `outcome`


class Flights(Generic[T]):
    """key -> the work in flight for it."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(
        self, key: Hashable, work: Callable[[], Awaitable[T]], *, detached: bool = False
    ) -> tuple[T, bool]:
        """The work's result, and whether this caller joined a flight another started."""
        flight = self._flights.get(key)
        if flight is not None:
            return await self._wait(key, flight), True
        flight = self._flights[key] = _Flight()
        if detached:
            self._start(key, flight, work)
            return await self._wait(key, flight), False
        try:
            result = await work()
        except asyncio.CancelledError:
            if flight.waiters:
                self._start(key, flight, work)  # the others still want it
            else:
                self._forget(key, flight)
            raise
        except BaseException as exc:
            self._settle(key, flight, None, exc)
            raise
        self._settle(key, flight, result, None)
        return result, False

    def _start(self, key: Hashable, flight: _Flight[T], work: Callable[[], Awaitable[T]]) -> None:
        task = flight.task = asyncio.ensure_future(work())

        def finished(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                self._forget(key, flight)
            elif (exc := task.exception()) is not None:
                self._settle(key, flight, None, exc)
            else:
                self._settle(key, flight, task.result(), None)

        task.add_done_callback(finished)

    async def _wait(self, key: Hashable, flight: _Flight[T]) -> T:
        if flight.outcome is None:
            flight.outcome = asyncio.get_running_loop().create_future()
        flight.waiters += 1
        try:
            # Shielded: one waiter leaving must not cancel what the others wait on.
            return await asyncio.shield(flight.outcome)
        finally:
            flight.waiters -= 1
            task = flight.task
            if not flight.waiters and task is not None and not task.done():
                task.cancel()  # every caller has gone (a leader in place is not a waiter)
                self._forget(key, flight)

    def _settle(
        self, key: Hashable, flight: _Flight[T], result: T | None, exc: BaseException | None
    ) -> None:
        self._forget(key, flight)
        outcome = flight.outcome
        if outcome is None or outcome.done() or not flight.waiters:
            return  # nobody waits: an exception set now would be reported as never read
        if exc is not None:
            outcome.set_exception(exc)
        else:
            outcome.set_result(result)  # type: ignore[arg-type]

    def _forget(self, key: Hashable, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
