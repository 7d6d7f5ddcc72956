"""Per-client limits: requests per minute, requests in flight, images and estimated spend
per UTC day.

A request is admitted once its body is read and translated, when what it will cost is
known: `reserve` checks and takes every limit at once and holds the n images asked for and
their estimate against the day, until `settle` counts what the upstreams actually made and
releases the hold. So concurrent requests can never together overrun a day's limit, and a
request the limits still allow is never refused for another's estimate once it has ended.

Where the counters live:
  - with [redis] url, in Redis (admission/shared.py): one set for every replica, taken by
    one script per request. This process mirrors them (refreshed every sync) for its
    metrics and for when Redis is unreachable: then it enforces what it knows, the last
    shared counts plus its own traffic since, and merges its own counts back once Redis
    answers ([redis] daily_limits_when_down = "refuse" refuses daily-limited clients
    instead);
  - without, in this process, the day's counts written to the state directory (DayBook),
    so a restart keeps the day.

`admit` runs before the body is read and refuses only what is already known to be
refused: a client over its per-minute rate, until its oldest admission leaves the minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from ..config import ClientConfig
from ..errors import LimitExceeded, LimitsUnavailable
from ..state.daybook import DayBook
from ..state.redis import SharedUnavailable
from ..state.ticker import Ticker
from .counters import (
    WINDOW_SECONDS,
    ClientCounters,
    ClientDay,
    Lease,
    UtcDay,
    over_budget,
    over_concurrency,
    over_images,
    over_rate,
)
from .shared import Delta, SharedLimits, Verdict

log = logging.getLogger("gateway.limits")

DAILY = ("images_per_day", "budget_usd_per_day")


class Limiter:
    """Every client's limits: in Redis when `shared` is given, else in this process."""

    def __init__(
        self,
        clients: Sequence[ClientConfig],
        *,
        shared: SharedLimits | None = None,
        daybook: DayBook | None = None,
        refuse_when_down: bool = False,
        sync_seconds: float = 1.0,
        lease_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._shared = shared
        self._daybook = daybook if shared is None else None
        self._refuse_when_down = refuse_when_down
        self._renew_every = max(1, int(lease_seconds / 3 / sync_seconds))
        self._ticker = Ticker(sync_seconds, self._tick)
        self._started = False
        self._held: dict[str, Lease] = {}  # shared leases in flight, by id
        self._tasks: set[asyncio.Task[None]] = set()  # shared settlements under way
        prefix = secrets.token_hex(4)  # once: per lease, the count makes the id unique
        self._ids = (f"{prefix}-{n}" for n in itertools.count())
        self.local_admissions = 0  # admitted on this process's knowledge, Redis down
        self._day = UtcDay(wall)
        today = self._day.today()
        self._states = {c.name: ClientCounters(c, today) for c in clients}
        if self._daybook is not None:
            for name, used in self._daybook.load(today.isoformat()).items():
                state = self._states.get(name)
                if state is not None:
                    state.requests_today, state.images_today = used.requests, used.images
                    state.cost_today = used.cost

    def _state(self, client: ClientConfig) -> ClientCounters:
        state = self._states.get(client.name)
        if state is None:  # the anonymous caller of an open gateway
            state = self._states[client.name] = ClientCounters(client, self._day.today())
        self._roll(state)
        return state

    def _roll(self, state: ClientCounters) -> None:
        state.roll(self._day.today(), self._clock() - WINDOW_SECONDS)

    # ------------------------------------------------------------------ the request path

    def admit(self, client: ClientConfig) -> Lease:
        """A request has arrived: refused at once (LimitExceeded) if its client is known to
        be over its rate; otherwise a lease that `reserve` fills."""
        state = self._state(client)
        wait = state.refused_until - self._clock()
        if wait > 0:
            self._refused(state, "requests_per_minute")
            raise over_rate(state.cfg, wait)
        return Lease(state, next(self._ids))

    async def reserve(self, lease: Lease, images: int, cost: float | None) -> None:
        """Take the rate and concurrency limits and hold `images` and their estimated cost
        against the day's, or raise LimitExceeded (LimitsUnavailable when set to refuse
        while Redis is unreachable).

        A request refused for a daily limit keeps its place in the rate limits (it may
        still be served from the cache); one refused for rate or concurrency holds nothing.
        The message says what is left, so the caller can ask for fewer images.
        """
        state = lease.state
        self._roll(state)
        cost = cost or 0.0
        if self._shared is not None and state.limited:
            try:
                verdict = await self._acquire(lease, images, cost)
            except SharedUnavailable:
                if self._refuse_when_down and state.daily:
                    raise LimitsUnavailable(state.cfg.name) from None
                self._take_locally(lease, images, cost)
                self.local_admissions += 1
                return
            self._apply(lease, verdict, images, cost)
            return
        self._take_locally(lease, images, cost)

    async def _acquire(self, lease: Lease, images: int, cost: float) -> Verdict:
        """The shared admission, run to its end even if the caller goes away meanwhile: a
        lease Redis granted to a request that is gone is released at once, not left to
        expire."""
        assert self._shared is not None
        call = asyncio.ensure_future(self._shared.acquire(lease.state.cfg, lease.id, images, cost))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._abandoned(lease, done))
            raise

    def _abandoned(self, lease: Lease, done: asyncio.Future[Verdict]) -> None:
        if done.cancelled() or done.exception() is not None or lease.settled:
            return
        verdict = done.result()
        if verdict.refused in (None, *DAILY):
            with contextlib.suppress(LimitExceeded):
                self._apply(lease, verdict, lease.images, lease.cost)
            self.settle(lease, 0, 0.0)

    def _apply(self, lease: Lease, verdict: Verdict, images: int, cost: float) -> None:
        """What Redis decided, mirrored here."""
        state, cfg = lease.state, lease.state.cfg
        limit = verdict.refused
        if limit == "requests_per_minute":
            state.refused_until = self._clock() + verdict.wait
            raise over_rate(cfg, verdict.wait)
        if limit == "max_concurrent_requests":
            raise over_concurrency(cfg, verdict.inflight)
        # Past those two, the script has read the day's totals: mirror them.
        unshared = state.unshared
        state.images_today = verdict.images + unshared.images
        state.cost_today = verdict.cost + unshared.cost
        lease.counted = lease.shared = True
        self._held[lease.id] = lease
        state.recent.append(self._clock())
        state.inflight += 1
        if limit == "images_per_day":
            left = (cfg.images_per_day or 0) - verdict.images - verdict.held_images
            raise over_images(cfg, left, images, verdict.wait)
        if limit == "budget_usd_per_day":
            left_usd = (cfg.budget_usd_per_day or 0.0) - verdict.cost - verdict.held_cost
            raise over_budget(cfg, left_usd, cost, verdict.wait)
        self._hold(lease, images, cost)

    def _take_locally(self, lease: Lease, images: int, cost: float) -> None:
        """The same checks on this process's counters."""
        state = lease.state
        cfg = state.cfg
        if cfg.max_concurrent_requests is not None and (
            state.inflight >= cfg.max_concurrent_requests
        ):
            self._refused(state, "max_concurrent_requests")
            raise over_concurrency(cfg, state.inflight)
        if cfg.requests_per_minute is not None and len(state.recent) >= cfg.requests_per_minute:
            wait = state.recent[0] + WINDOW_SECONDS - self._clock()
            state.refused_until = self._clock() + wait
            self._refused(state, "requests_per_minute")
            raise over_rate(cfg, wait)
        state.recent.append(self._clock())
        state.inflight += 1
        lease.counted = True
        if cfg.images_per_day is not None:
            left = cfg.images_per_day - state.images_today - state.reserved_images
            if images > left:
                self._refused(state, "images_per_day")
                raise over_images(cfg, left, images, self._day.seconds_left())
        if cfg.budget_usd_per_day is not None:
            left_usd = cfg.budget_usd_per_day - state.cost_today - state.reserved_cost
            # A cent's fraction of slack, so float sums of exact prices never refuse wrongly.
            if cost > left_usd + 1e-9:
                self._refused(state, "budget_usd_per_day")
                raise over_budget(cfg, left_usd, cost, self._day.seconds_left())
        self._hold(lease, images, cost)

    def _hold(self, lease: Lease, images: int, cost: float) -> None:
        state = lease.state
        state.reserved_images += images
        state.reserved_cost += cost
        lease.day, lease.images, lease.cost = state.day, images, cost

    def _refused(self, state: ClientCounters, limit: str) -> None:
        """Count a refusal this process decided (Redis counts the ones it decides)."""
        state.refused[limit] += 1
        if self._shared is not None:
            state.unshare(refused=limit)

    def settle(self, lease: Lease, images: int, cost: float | None) -> asyncio.Task[None] | None:
        """End a request: count what it was billed for, release its hold. Idempotent.

        This process's counters change at once; with Redis, the shared ones in the task
        returned, which the caller awaits before answering (so a follow-up request on
        another replica finds the hold released) and which goes on if the caller is
        cancelled (so nothing counted is lost)."""
        if lease.settled:
            return None
        lease.settled = True
        state = lease.state
        self._roll(state)
        cost = cost or 0.0
        requests = 1 if lease.counted else 0
        state.release(lease, images, cost)
        if self._shared is None:
            if self._daybook is not None and (requests or images or cost):
                day = state.day.isoformat()
                self._daybook.add(day, state.cfg.name, requests=requests, images=images, cost=cost)
            return None
        self._held.pop(lease.id, None)
        if not (requests or images or cost or lease.shared):
            return None
        task = asyncio.get_running_loop().create_task(
            self._settle_shared(state, lease.id if lease.shared else "", requests, images, cost)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _settle_shared(
        self, state: ClientCounters, lease: str, requests: int, images: int, cost: float
    ) -> None:
        assert self._shared is not None
        try:
            await self._shared.settle(state.cfg.name, lease, images, cost)
        except SharedUnavailable:
            state.unshare(requests=requests, images=images, cost=cost)

    # ------------------------------------------------------------------ sharing

    async def start(self) -> None:
        """Read the shared counters once and keep them fresh (with Redis only)."""
        if self._shared is None or self._started:
            return
        self._started = True
        await self.sync()
        self._ticker.start()

    async def _tick(self, tick: int) -> None:
        if tick % self._renew_every == 0:
            await self._renew()
        await self.sync()

    async def _renew(self) -> None:
        """Extend the leases of this process's requests in flight."""
        assert self._shared is not None
        by_client: dict[str, list[str]] = {}
        for lease in self._held.values():
            by_client.setdefault(lease.state.cfg.name, []).append(lease.id)
        with contextlib.suppress(SharedUnavailable):
            await self._shared.renew(by_client.items())

    async def sync(self) -> None:
        """Send what this process counted alone, then read every client's shared counters."""
        shared = self._shared
        if shared is None:
            return
        states = list(self._states.values())
        unshared = [s.unshared for s in states if _pending(s.unshared)]
        try:
            if unshared:
                await shared.merge(unshared)
                for s in states:
                    s.unshared = Delta(s.cfg.name)
            usage = await shared.usage([s.cfg.name for s in states])
        except SharedUnavailable:
            return
        for s in states:
            used = usage.get(s.cfg.name)
            if used is None:
                continue
            self._roll(s)
            s.shared = used
            s.requests_today = used.requests + s.unshared.requests
            s.images_today = used.images + s.unshared.images
            s.cost_today = used.cost + s.unshared.cost

    async def aclose(self) -> None:
        """Stop syncing; send what is still unshared; flush the day book."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._started:
            self._started = False
            await self._ticker.stop()
            await self.sync()
        if self._daybook is not None:
            await asyncio.to_thread(self._daybook.close)

    # ------------------------------------------------------------------ visibility

    @property
    def redis_round_trips(self) -> int | None:
        """Round trips to Redis that took or settled limits (None without Redis)."""
        return None if self._shared is None else self._shared.round_trips

    def _current(self, state: ClientCounters) -> tuple[int, int, bool]:
        """(admissions in the last minute, in flight, whether the day's counts are the
        shared ones). Only a limited client's admissions go through Redis: an unlimited
        one's minute and in-flight counts are this process's."""
        self._roll(state)
        used = state.shared
        shared = self._shared is not None and self._shared.up and used is not None
        if shared and used is not None and state.limited:
            return used.recent, used.inflight, True
        return len(state.recent), state.inflight, shared

    def usage(self) -> Iterator[tuple[str, str, float, float | None]]:
        """(client, limit, used now, configured limit or None) for every client and limit."""
        for name, state in self._states.items():
            recent, inflight, _shared = self._current(state)
            cfg = state.cfg
            yield name, "requests_per_minute", recent, cfg.requests_per_minute
            yield name, "images_per_day", state.images_today, cfg.images_per_day
            yield name, "budget_usd_per_day", state.cost_today, cfg.budget_usd_per_day
            yield name, "max_concurrent_requests", inflight, cfg.max_concurrent_requests

    def today(self) -> list[ClientDay]:
        """Every client's day so far."""
        days = []
        for name, state in self._states.items():
            recent, inflight, shared = self._current(state)
            refused = Counter(state.refused)
            if shared and state.shared is not None:
                refused = Counter(state.shared.refused) + Counter(dict(state.unshared.refused))
            days.append(
                ClientDay(
                    client=name,
                    requests=state.requests_today,
                    images=state.images_today,
                    cost=state.cost_today,
                    refused=dict(refused),
                    inflight=inflight,
                    recent=recent,
                    shared=shared,
                )
            )
        return days


def _pending(delta: Delta) -> bool:
    return bool(delta.requests or delta.images or delta.cost or delta.refused)
