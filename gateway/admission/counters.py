"""One client's counters as this process knows them, a request's hold on them, and the
refusals they lead to (admission/limits.py decides)."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from ..config import ClientConfig
from ..errors import LimitExceeded
from .shared import Delta, Usage

WINDOW_SECONDS = 60.0


class UtcDay:
    """The UTC day by a wall clock, and when it ends: most calls compare one float instead
    of building a datetime (this runs several times per request)."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        self._day: dt.date | None = None
        self._ends = 0.0

    def today(self) -> dt.date:
        wall = self._wall()
        if self._day is None or wall >= self._ends or wall < self._ends - 86400:
            day = dt.datetime.fromtimestamp(wall, dt.UTC).date()
            midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
            self._day, self._ends = day, midnight.timestamp()
        return self._day

    def seconds_left(self) -> float:
        """Until midnight UTC."""
        self.today()  # brings the day's end up to date
        return self._ends - self._wall()


class ClientCounters:
    """One client's counters as this process knows them."""

    def __init__(self, cfg: ClientConfig, day: dt.date) -> None:
        self.cfg = cfg
        self.recent: deque[float] = deque()  # this process's admissions within the minute
        self.inflight = 0  # this process's requests in flight
        self.day = day
        self.requests_today = 0
        self.images_today = 0
        self.cost_today = 0.0
        self.refused: Counter[str] = Counter()  # refusals today, by limit
        self.reserved_images = 0  # held by this process's requests in flight
        self.reserved_cost = 0.0
        self.refused_until = 0.0  # over its rate until then (monotonic)
        self.shared: Usage | None = None  # the shared counters, as last read
        # Counted here but not yet in Redis (settled while it was down, early refusals).
        self.unshared = Delta(cfg.name)

    def roll(self, today: dt.date, horizon: float) -> None:
        """Start a new day's count at midnight UTC; forget admissions before `horizon`."""
        if self.day != today:
            self.day = today
            self.requests_today = self.images_today = self.reserved_images = 0
            self.cost_today = self.reserved_cost = 0.0
            self.refused.clear()
        while self.recent and self.recent[0] <= horizon:
            self.recent.popleft()

    def release(self, lease: Lease, images: int, cost: float) -> None:
        """A request has ended: its place and hold released, what it made counted."""
        if lease.counted:
            self.inflight -= 1
            self.requests_today += 1
        if lease.day == self.day:  # a reservation from before midnight was already dropped
            self.reserved_images -= lease.images
            self.reserved_cost -= lease.cost
        self.images_today += images
        self.cost_today += cost

    def unshare(
        self, *, requests: int = 0, images: int = 0, cost: float = 0.0, refused: str = ""
    ) -> None:
        """Note usage counted here that Redis has not heard of yet."""
        d = self.unshared
        counts = dict(d.refused)
        if refused:
            counts[refused] = counts.get(refused, 0) + 1
        self.unshared = Delta(
            d.client, d.requests + requests, d.images + images, d.cost + cost,
            tuple(counts.items()),
        )  # fmt: skip

    @property
    def limited(self) -> bool:
        cfg = self.cfg
        return any(
            v is not None
            for v in (
                cfg.requests_per_minute,
                cfg.max_concurrent_requests,
                cfg.images_per_day,
                cfg.budget_usd_per_day,
            )
        )

    @property
    def daily(self) -> bool:
        return self.cfg.images_per_day is not None or self.cfg.budget_usd_per_day is not None


@dataclass(eq=False)
class Lease:
    """One request's hold on its client's limits, released by `settle`."""

    state: ClientCounters
    id: str
    day: dt.date | None = None  # the day its reservation was taken on
    images: int = 0
    cost: float = 0.0
    counted: bool = False  # holds a place in the rate and concurrency limits
    shared: bool = False  # that place and the reservation are in Redis
    settled: bool = False


@dataclass(frozen=True)
class ClientDay:
    """A client's day so far, for operators: what it used and what was refused."""

    client: str
    requests: int
    images: int
    cost: float
    refused: dict[str, int]
    inflight: int
    recent: int  # admissions in the last minute
    shared: bool  # read from the shared store (every replica's), not this process's


# ---------------------------------------------------------------------- refusals


def over_rate(cfg: ClientConfig, wait: float) -> LimitExceeded:
    return LimitExceeded(
        "requests_per_minute",
        f"Client '{cfg.name}' is limited to {cfg.requests_per_minute} requests per "
        f"minute; retry after {max(1, math.ceil(wait))} s.",
        wait,
        daily=False,
    )


def over_concurrency(cfg: ClientConfig, inflight: int) -> LimitExceeded:
    return LimitExceeded(
        "max_concurrent_requests",
        f"Client '{cfg.name}' already has {inflight} requests in progress, its "
        f"limit; retry when one has finished.",
        1,
        daily=False,
    )


def over_images(cfg: ClientConfig, left: int, images: int, wait: float) -> LimitExceeded:
    return LimitExceeded(
        "images_per_day",
        f"Client '{cfg.name}' may have {cfg.images_per_day} images per day (UTC); "
        f"{max(0, left)} are left today and this request asks for {images}.",
        wait,
        daily=True,
    )


def over_budget(cfg: ClientConfig, left: float, cost: float, wait: float) -> LimitExceeded:
    return LimitExceeded(
        "budget_usd_per_day",
        f"Client '{cfg.name}' has a budget of ${cfg.budget_usd_per_day:.2f} per "
        f"day (UTC); ${max(0.0, left):.4f} is left today and this request is "
        f"estimated at ${cost:.4f}.",
        wait,
        daily=True,
    )
