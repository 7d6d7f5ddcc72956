"""Per-client limits: requests per minute, images and estimated spend per day, and requests
in flight.

The counters live in this process: with several replicas each enforces the limits on its
own share of the traffic (the README says so). A request is admitted in two steps, because
what it will cost is only known once its body has been read:

  1. `admit` (before parsing): requests per minute and concurrency, cheap to refuse early;
  2. `reserve` (after translation): the day's images and budget, for the n it asks for.

The `Lease` it gets back is settled once the request ends, with the images the upstreams
actually made for it and their estimated cost; until then its n and estimate are held as a
reservation, so concurrent requests cannot together overrun the day's limit.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..config import ClientConfig
from ..errors import LimitExceeded

_WINDOW_SECONDS = 60.0


class _ClientState:
    """One client's counters."""

    def __init__(self, cfg: ClientConfig, day: dt.date) -> None:
        self.cfg = cfg
        self.recent: deque[float] = deque()  # monotonic admission times within the window
        self.inflight = 0
        self.day = day
        self.images_today = 0
        self.cost_today = 0.0
        self.reserved_images = 0
        self.reserved_cost = 0.0


@dataclass(eq=False)
class Lease:
    """One admitted request's hold on its client's limits, released by `settle`."""

    state: _ClientState
    day: dt.date | None = None  # the day its reservation was taken on
    images: int = 0
    cost: float = 0.0
    settled: bool = False


class Limiter:
    """Every client's limits in this process."""

    def __init__(
        self,
        clients: Sequence[ClientConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        # The UTC day and when it ends, so most calls compare one float instead of
        # building a datetime (this runs several times per request).
        self._day: dt.date | None = None
        self._day_ends = 0.0
        today = self._today()
        self._states = {c.name: _ClientState(c, today) for c in clients}

    def _today(self) -> dt.date:
        wall = self._wall()
        if self._day is None or wall >= self._day_ends or wall < self._day_ends - 86400:
            day = dt.datetime.fromtimestamp(wall, dt.UTC).date()
            midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
            self._day, self._day_ends = day, midnight.timestamp()
        return self._day

    def _seconds_to_midnight(self) -> float:
        self._today()  # brings the day's end up to date
        return self._day_ends - self._wall()

    def _state(self, client: ClientConfig) -> _ClientState:
        state = self._states.get(client.name)
        if state is None:  # the anonymous caller of an open gateway
            state = self._states[client.name] = _ClientState(client, self._today())
        self._roll(state)
        return state

    def _roll(self, state: _ClientState) -> None:
        """Start a new day's count at midnight UTC; forget admissions older than a minute."""
        today = self._today()
        if state.day != today:
            state.day = today
            state.images_today = 0
            state.cost_today = 0.0
            state.reserved_images = 0
            state.reserved_cost = 0.0
        horizon = self._clock() - _WINDOW_SECONDS
        while state.recent and state.recent[0] <= horizon:
            state.recent.popleft()

    def admit(self, client: ClientConfig) -> Lease:
        """Let a request in under the per-minute and concurrency limits, or raise
        LimitExceeded."""
        state = self._state(client)
        cfg = state.cfg
        if cfg.max_concurrent_requests is not None and state.inflight >= (
            cfg.max_concurrent_requests
        ):
            raise LimitExceeded(
                "max_concurrent_requests",
                f"Client '{cfg.name}' already has {state.inflight} requests in progress, its "
                f"limit; retry when one has finished.",
                1,
                daily=False,
            )
        if cfg.requests_per_minute is not None and len(state.recent) >= cfg.requests_per_minute:
            wait = state.recent[0] + _WINDOW_SECONDS - self._clock()
            raise LimitExceeded(
                "requests_per_minute",
                f"Client '{cfg.name}' is limited to {cfg.requests_per_minute} requests per "
                f"minute; retry after {max(1, math.ceil(wait))} s.",
                wait,
                daily=False,
            )
        state.recent.append(self._clock())
        state.inflight += 1
        return Lease(state)

    def reserve(self, lease: Lease, images: int, cost: float | None) -> None:
        """Hold `images` and their estimated cost against the day's limits, or raise
        LimitExceeded.

        The request is refused whole when it does not fit: the message says what is left,
        so the caller can ask for fewer images.
        """
        state = lease.state
        self._roll(state)
        cfg = state.cfg
        cost = cost or 0.0
        if cfg.images_per_day is not None:
            left = cfg.images_per_day - state.images_today - state.reserved_images
            if images > left:
                raise LimitExceeded(
                    "images_per_day",
                    f"Client '{cfg.name}' may have {cfg.images_per_day} images per day (UTC); "
                    f"{max(0, left)} are left today and this request asks for {images}.",
                    self._seconds_to_midnight(),
                    daily=True,
                )
        if cfg.budget_usd_per_day is not None:
            left_usd = cfg.budget_usd_per_day - state.cost_today - state.reserved_cost
            # A cent's fraction of slack, so float sums of exact prices never refuse wrongly.
            if cost > left_usd + 1e-9:
                raise LimitExceeded(
                    "budget_usd_per_day",
                    f"Client '{cfg.name}' has a budget of ${cfg.budget_usd_per_day:.2f} per "
                    f"day (UTC); ${max(0.0, left_usd):.4f} is left today and this request is "
                    f"estimated at ${cost:.4f}.",
                    self._seconds_to_midnight(),
                    daily=True,
                )
        state.reserved_images += images
        state.reserved_cost += cost
        lease.day, lease.images, lease.cost = state.day, images, cost

    def settle(self, lease: Lease, images: int, cost: float | None) -> None:
        """End a request: count what it was billed for, release its hold. Idempotent."""
        if lease.settled:
            return
        lease.settled = True
        state = lease.state
        self._roll(state)
        state.inflight -= 1
        if lease.day == state.day:  # a reservation from before midnight was already dropped
            state.reserved_images -= lease.images
            state.reserved_cost -= lease.cost
        state.images_today += images
        state.cost_today += cost or 0.0

    def usage(self) -> Iterator[tuple[str, str, float, float | None]]:
        """(client, limit, used now, configured limit or None) for every client and limit."""
        for name, state in self._states.items():
            self._roll(state)
            cfg = state.cfg
            yield name, "requests_per_minute", len(state.recent), cfg.requests_per_minute
            yield name, "images_per_day", state.images_today, cfg.images_per_day
            yield name, "budget_usd_per_day", state.cost_today, cfg.budget_usd_per_day
            yield name, "max_concurrent_requests", state.inflight, cfg.max_concurrent_requests
