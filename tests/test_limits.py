"""Per-client limits, on a clock the test moves: windows, reservations, midnight, settling."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from gateway.admission.limits import Lease, Limiter
from gateway.api.errors import openai_error
from gateway.config import ClientConfig, ConfigError
from gateway.errors import LimitExceeded
from gateway.state.daybook import DayBook
from tests.support.gateway import make_config


class Clock:
    """Monotonic and wall time that only move when the test says so."""

    def __init__(self, wall: dt.datetime) -> None:
        self.mono = 1000.0
        self.wall = wall.timestamp()

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


NOON = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def limiter_for(clock: Clock, **limits: object) -> tuple[Limiter, ClientConfig]:
    client = ClientConfig(name="team-a", key="sk-team-a-0001", **limits)  # type: ignore[arg-type]
    return Limiter([client], clock=lambda: clock.mono, wall=lambda: clock.wall), client


def take(
    limiter: Limiter, client: ClientConfig, images: int = 0, cost: float | None = None
) -> Lease:
    """Admit and reserve, as the pipeline does (in-process limits never wait)."""
    lease = limiter.admit(client)
    asyncio.run(limiter.reserve(lease, images, cost))
    return lease


def reserve(limiter: Limiter, lease: Lease, images: int, cost: float | None = None) -> None:
    asyncio.run(limiter.reserve(lease, images, cost))


def usage(limiter: Limiter) -> dict[str, float]:
    return {limit: used for _, limit, used, _cap in limiter.usage()}


def test_requests_per_minute_is_a_sliding_window() -> None:
    clock = Clock(NOON)
    limiter, client = limiter_for(clock, requests_per_minute=3)
    for _ in range(3):
        limiter.settle(take(limiter, client), 0, None)
        clock.advance(10)
    with pytest.raises(LimitExceeded) as refused:
        take(limiter, client)
    assert refused.value.limit == "requests_per_minute"
    answer = openai_error(refused.value)
    assert answer.status == 429
    # The first admission (30 s ago) leaves the window in 30 s.
    assert answer.headers["retry-after"] == "30"
    assert "x-should-retry" not in answer.headers
    clock.advance(29.5)
    with pytest.raises(LimitExceeded):
        limiter.admit(client)  # known to be over its rate: refused before its body is read
    clock.advance(0.5)
    take(limiter, client)  # the oldest has left the window
    assert usage(limiter)["requests_per_minute"] == 3


def test_refused_requests_do_not_use_the_window() -> None:
    clock = Clock(NOON)
    limiter, client = limiter_for(clock, requests_per_minute=1)
    take(limiter, client)
    for _ in range(5):
        with pytest.raises(LimitExceeded):
            take(limiter, client)
    clock.advance(60)
    take(limiter, client)


def test_concurrency_is_released_by_settle_once() -> None:
    clock = Clock(NOON)
    limiter, client = limiter_for(clock, max_concurrent_requests=2)
    first, _second = take(limiter, client), take(limiter, client)
    with pytest.raises(LimitExceeded) as refused:
        take(limiter, client)
    assert refused.value.limit == "max_concurrent_requests"
    assert openai_error(refused.value).code == "rate_limit_exceeded"
    limiter.settle(first, 0, None)
    limiter.settle(first, 0, None)  # a second settle changes nothing
    assert usage(limiter)["max_concurrent_requests"] == 1
    take(limiter, client)
    with pytest.raises(LimitExceeded):
        take(limiter, client)


def test_images_per_day_reserves_then_counts_what_was_made() -> None:
    clock = Clock(NOON)
    limiter, client = limiter_for(clock, images_per_day=10)
    held = take(limiter, client, 6)
    other = limiter.admit(client)
    # 6 are held by a request still running: 5 more do not fit, 4 do.
    with pytest.raises(LimitExceeded) as refused:
        reserve(limiter, other, 5)
    assert refused.value.limit == "images_per_day"
    answer = openai_error(refused.value)
    assert answer.code == "insufficient_quota"
    assert answer.headers["x-should-retry"] == "false"
    assert answer.headers["retry-after"] == str(12 * 3600)  # until midnight UTC
    assert "4 are left today" in refused.value.message
    limiter.settle(other, 0, None)
    # The held request made only 3 of its 6 images: 7 are left.
    limiter.settle(held, 3, None)
    assert usage(limiter)["images_per_day"] == 3
    last = take(limiter, client, 7)
    limiter.settle(last, 7, None)
    with pytest.raises(LimitExceeded):
        take(limiter, client, 1)


def test_the_day_starts_again_at_midnight_utc() -> None:
    clock = Clock(dt.datetime(2025, 3, 1, 23, 59, 30, tzinfo=dt.UTC))
    limiter, client = limiter_for(clock, images_per_day=2)
    before = take(limiter, client, 2)
    with pytest.raises(LimitExceeded) as refused:
        take(limiter, client, 1)
    assert openai_error(refused.value).headers["retry-after"] == "30"
    clock.advance(31)
    # The request reserved before midnight ends after it: its images count for the new day,
    # and its old reservation is not subtracted from the new day's.
    limiter.settle(before, 2, None)
    assert usage(limiter)["images_per_day"] == 2
    clock.advance(24 * 3600)
    assert usage(limiter)["images_per_day"] == 0
    take(limiter, client, 2)


def test_budget_counts_estimated_cost() -> None:
    clock = Clock(NOON)
    limiter, client = limiter_for(clock, budget_usd_per_day=0.1)
    for _ in range(2):
        lease = take(limiter, client, 1, 0.039)
        limiter.settle(lease, 1, 0.039)
    with pytest.raises(LimitExceeded) as refused:
        take(limiter, client, 1, 0.039)
    assert refused.value.limit == "budget_usd_per_day"
    assert "$0.0220 is left" in refused.value.message
    # Exactly the budget is allowed, despite float sums.
    limiter2, client2 = limiter_for(clock, budget_usd_per_day=0.3)
    for _ in range(3):
        lease = take(limiter2, client2, 1, 0.1)
        limiter2.settle(lease, 1, 0.1)
    assert usage(limiter2)["budget_usd_per_day"] == pytest.approx(0.3)


def test_unlimited_clients_are_still_measured() -> None:
    clock = Clock(NOON)
    limiter, client = limiter_for(clock)
    for _ in range(50):
        lease = take(limiter, client, 10, 1.0)
        limiter.settle(lease, 10, 1.0)
    assert usage(limiter) == {
        "requests_per_minute": 50,
        "images_per_day": 500,
        "budget_usd_per_day": 50.0,
        "max_concurrent_requests": 0,
    }
    caps = {limit: cap for _, limit, _used, cap in limiter.usage()}
    assert set(caps.values()) == {None}


def test_a_refusal_for_the_day_keeps_the_requests_place_in_the_rate() -> None:
    # Refused for its images, a request may still be served from the cache: it counts
    # against the rate and concurrency until it is settled.
    clock = Clock(NOON)
    limiter, client = limiter_for(clock, images_per_day=1, max_concurrent_requests=1)
    lease = limiter.admit(client)
    with pytest.raises(LimitExceeded) as refused:
        reserve(limiter, lease, 2)
    assert refused.value.limit == "images_per_day"
    assert usage(limiter)["max_concurrent_requests"] == 1
    limiter.settle(lease, 0, None)
    assert usage(limiter)["max_concurrent_requests"] == 0
    assert limiter.today()[0].requests == 1
    assert limiter.today()[0].refused == {"images_per_day": 1}


def test_the_day_survives_a_restart_in_the_state_directory(tmp_path: Path) -> None:
    # Today's noon: the day book forgets days older than a week by the real calendar.
    clock = Clock(dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0))
    client = ClientConfig(name="team-a", key="sk-team-a-0001", images_per_day=5)
    book = DayBook(tmp_path)
    first = Limiter([client], daybook=book, clock=lambda: clock.mono, wall=lambda: clock.wall)
    for images in (2, 1):
        first.settle(take(first, client, images, 0.5), images, 0.5)
    asyncio.run(first.aclose())  # flushes the day book
    again = Limiter(
        [client], daybook=DayBook(tmp_path), clock=lambda: clock.mono, wall=lambda: clock.wall
    )
    (day,) = again.today()
    assert (day.requests, day.images, day.cost) == (2, 3, pytest.approx(1.0))
    with pytest.raises(LimitExceeded) as refused:
        take(again, client, 3)
    assert "2 are left today" in refused.value.message
    # The next day starts from nothing, restart or not.
    clock.advance(24 * 3600)
    tomorrow = Limiter(
        [client], daybook=DayBook(tmp_path), clock=lambda: clock.mono, wall=lambda: clock.wall
    )
    assert usage(tomorrow)["images_per_day"] == 0


# ---------------------------------------------------------------- configuration

BASE = '[[upstreams]]\nname = "m"\ntype = "mock"\n[[clients]]\nname = "a"\nkey = "sk-0123456789"\n'


def test_client_limits_parse() -> None:
    config = make_config(
        BASE + "requests_per_minute = 60\nimages_per_day = 1000\nmax_concurrent_requests = 4\n"
        'budget_usd_per_day = 25.5\nmodels = ["nano-banana", "nano-banana-pro*"]\n'
        '[prices]\n"nano-banana" = 0.04\n'
    )
    (client,) = config.clients
    assert (client.requests_per_minute, client.images_per_day) == (60, 1000)
    assert (client.max_concurrent_requests, client.budget_usd_per_day) == (4, 25.5)
    assert client.models == ("nano-banana", "nano-banana-pro*")
    assert client.cache is True


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("requests_per_minute = 0\n", "clients[0].requests_per_minute"),
        ('requests_per_minute = "10"\n', "clients[0].requests_per_minute"),
        ("images_per_day = 2.5\n", "clients[0].images_per_day"),
        ("max_concurrent_requests = -1\n", "clients[0].max_concurrent_requests"),
        ("max_concurrent_requests = true\n", "clients[0].max_concurrent_requests"),
        ("budget_usd_per_day = 5\n", "clients[0].budget_usd_per_day"),  # no [prices]
        ('models = "nano-banana"\n', "clients[0].models"),
        ('models = ["nano-banana", "gpt-image-1"]\n', "clients[0].models[1]"),
        ('models = ["dall-e-*"]\n', "clients[0].models[0]"),
        ("models = [1]\n", "clients[0].models"),
    ],
)
def test_client_limit_errors_name_the_key(extra: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(BASE + extra)
    assert str(err.value).startswith(where + ":"), str(err.value)
