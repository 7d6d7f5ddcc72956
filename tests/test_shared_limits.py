"""Client limits in a real Redis, with two limiters standing for two replicas: exact under
concurrency, leases that expire, the day kept, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.admission.limits import Limiter
from gateway.admission.shared import SharedLimits
from gateway.config import ClientConfig
from gateway.config.state import RedisConfig
from gateway.errors import LimitExceeded, LimitsUnavailable
from gateway.state.redis import RedisLink
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.asyncio


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def client(**limits: object) -> ClientConfig:
    return ClientConfig(name="team-a", key="sk-team-a-0001", **limits)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def replicas(
    server: RedisServer, cfg: ClientConfig, count: int = 2, **settings: object
) -> AsyncIterator[list[Limiter]]:
    """`count` limiters, each with its own Redis connection, as replicas have."""
    redis_cfg = RedisConfig(url=server.url, timeout_seconds=0.3, **settings)  # type: ignore[arg-type]
    links = [RedisLink(redis_cfg) for _ in range(count)]
    limiters = [
        Limiter(
            [cfg],
            shared=SharedLimits(link, lease_seconds=redis_cfg.lease_seconds),
            refuse_when_down=redis_cfg.daily_limits_when_down == "refuse",
            sync_seconds=redis_cfg.sync_seconds,
            lease_seconds=redis_cfg.lease_seconds,
        )
        for link in links
    ]
    try:
        yield limiters
    finally:
        for limiter in limiters:
            await limiter.aclose()
        for link in links:
            await link.aclose()


async def request(
    limiter: Limiter, cfg: ClientConfig, images: int, made: int | None = None, *, hold: float = 0
) -> str:
    """One request's admission, a pause as long as its upstream call, and its settlement:
    "ok" or the limit that refused it."""
    try:
        lease = limiter.admit(cfg)
    except LimitExceeded as known:  # known to be over its rate: nothing was taken
        return known.limit
    try:
        await limiter.reserve(lease, images, 0.04 * images)
    except LimitExceeded as refused:
        task = limiter.settle(lease, 0, None)
        if task is not None:
            await task
        return refused.limit
    await asyncio.sleep(hold)
    done = images if made is None else made
    task = limiter.settle(lease, done, 0.04 * done)
    if task is not None:
        await task
    return "ok"


async def test_fifty_concurrent_requests_over_two_replicas_never_overrun_the_day(
    redis_server: RedisServer,
) -> None:
    cfg = client(images_per_day=20)
    async with replicas(redis_server, cfg) as (a, b):
        outcomes = await asyncio.gather(
            *(request(a if i % 2 else b, cfg, 1, hold=0.05) for i in range(50))
        )
        assert outcomes.count("ok") == 20
        assert outcomes.count("images_per_day") == 30
        await a.sync()
        await b.sync()
        for limiter in (a, b):
            used = {limit: v for _, limit, v, _cap in limiter.usage()}
            assert used["images_per_day"] == 20
            assert used["budget_usd_per_day"] == pytest.approx(0.8)
        # Requests that overlapped shared their round trips to Redis.
        assert a.redis_round_trips is not None and a.redis_round_trips < 50


async def test_a_request_the_quota_still_allows_is_never_refused(redis_server: RedisServer) -> None:
    # Each request asks for 2 and makes 1: once the first ones have settled, their unmade
    # images are free again, and the day fills exactly.
    cfg = client(images_per_day=10)
    async with replicas(redis_server, cfg) as (a, b):
        outcomes = []
        for i in range(20):
            outcomes.append(await request(a if i % 2 else b, cfg, 2, made=1))
        assert outcomes.count("ok") == 9  # 9 made, 1 left: a request for 2 does not fit
        assert outcomes[:9] == ["ok"] * 9
        assert await request(a, cfg, 1) == "ok"
        assert await request(b, cfg, 1) == "images_per_day"


async def test_budget_across_replicas(redis_server: RedisServer) -> None:
    cfg = client(budget_usd_per_day=0.2)  # 0.04 per image: exactly five
    async with replicas(redis_server, cfg) as (a, b):
        outcomes = await asyncio.gather(
            *(request(a if i % 2 else b, cfg, 1, hold=0.02) for i in range(12))
        )
        assert outcomes.count("ok") == 5
        assert outcomes.count("budget_usd_per_day") == 7


async def test_requests_per_minute_across_replicas(redis_server: RedisServer) -> None:
    cfg = client(requests_per_minute=5)
    async with replicas(redis_server, cfg) as (a, b):
        outcomes = [await request(a if i % 2 else b, cfg, 1) for i in range(8)]
        assert outcomes == ["ok"] * 5 + ["requests_per_minute"] * 3
        # Now known to be over its rate: refused before its body is read, on that replica.
        with pytest.raises(LimitExceeded) as early:
            a.admit(cfg)
        assert early.value.limit == "requests_per_minute"
        assert 55 <= early.value.retry_after <= 60
        # A refusal for the rate says nothing of the day: the mirrored count stays.
        used = {limit: v for _, limit, v, _cap in b.usage()}
        assert used["images_per_day"] == 5


async def test_concurrency_across_replicas_and_a_dead_replicas_lease_expires(
    redis_server: RedisServer,
) -> None:
    cfg = client(max_concurrent_requests=2)
    async with replicas(redis_server, cfg, count=3, lease_seconds=1.0) as (a, b, dead):
        held = [dead.admit(cfg) for _ in range(2)]
        for lease in held:
            await dead.reserve(lease, 1, 0.04)
        # The "dead" replica never settles nor renews them (it was killed).
        assert await request(a, cfg, 1) == "max_concurrent_requests"
        assert await request(b, cfg, 1) == "max_concurrent_requests"
        await asyncio.sleep(1.2)
        assert await request(a, cfg, 1) == "ok"
        assert await request(b, cfg, 1) == "ok"


async def test_a_long_request_keeps_its_lease_by_renewing_it(redis_server: RedisServer) -> None:
    cfg = client(max_concurrent_requests=1)
    async with replicas(redis_server, cfg, lease_seconds=1.0, sync_seconds=0.1) as (a, b):
        await a.start()
        long = asyncio.ensure_future(request(a, cfg, 1, hold=2.5))
        await asyncio.sleep(0.3)
        for _ in range(4):  # well past the lease's second: still held
            assert await request(b, cfg, 1) == "max_concurrent_requests"
            await asyncio.sleep(0.5)
        assert await long == "ok"
        assert await request(b, cfg, 1) == "ok"


async def test_redis_down_local_enforcement_then_merged_back(redis_server: RedisServer) -> None:
    cfg = client(images_per_day=6)
    async with replicas(redis_server, cfg) as (a, b):
        assert [await request(a, cfg, 1) for _ in range(2)] == ["ok", "ok"]
        await a.sync()
        redis_server.stop()
        # Redis gone: a goes on with what it knows (2 made today), so 4 more fit, not 5.
        outcomes = [await request(a, cfg, 1) for _ in range(5)]
        assert outcomes == ["ok"] * 4 + ["images_per_day"]
        assert a.local_admissions == 4  # the refused one was not admitted
        redis_server.start()
        await asyncio.sleep(5.2)  # the link tries Redis again 5 s after its failure
        await a.sync()  # sends what a counted alone
        await b.sync()
        used = {limit: v for _, limit, v, _cap in b.usage()}
        # The server restarted empty (it keeps nothing on disk): the day holds what a
        # counted alone, and the scripts are loaded again on first use.
        assert used["images_per_day"] == 4
        assert await request(b, cfg, 2) == "ok"
        assert await request(a, cfg, 1) == "images_per_day"


async def test_what_each_replica_counted_alone_is_added_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    cfg = client(images_per_day=100)
    try:
        async with replicas(server, cfg) as (a, b):
            assert await request(b, cfg, 3) == "ok"
            server.stop()
            assert await request(a, cfg, 2) == "ok"  # counted alone
            assert await request(b, cfg, 1) == "ok"
            server.start()
            await asyncio.sleep(5.2)
            await a.sync()
            await b.sync()
            (day,) = b.today()
            # The first 3 went with the server (it keeps nothing on disk); what the two
            # replicas counted alone while it was away is in the shared day now.
            assert (day.images, day.requests, day.shared) == (3, 2, True)
    finally:
        server.stop()


async def test_refusing_daily_limited_clients_while_redis_is_down(
    redis_server: RedisServer,
) -> None:
    limited, unlimited = client(images_per_day=5), ClientConfig(name="team-b", key="sk-b-0001")
    redis_cfg = RedisConfig(url=redis_server.url, timeout_seconds=0.3)
    link = RedisLink(redis_cfg)
    limiter = Limiter(
        [limited, unlimited], shared=SharedLimits(link, lease_seconds=30), refuse_when_down=True
    )
    try:
        redis_server.stop()
        with pytest.raises(LimitsUnavailable):
            await limiter.reserve(limiter.admit(limited), 1, 0.04)
        lease = limiter.admit(unlimited)
        await limiter.reserve(lease, 1, 0.04)  # no daily limit: served
        limiter.settle(lease, 1, 0.04)
        assert not link.up
    finally:
        await limiter.aclose()
        await link.aclose()
