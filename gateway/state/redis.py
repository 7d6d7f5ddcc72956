"""The one connection to the shared Redis, and what "Redis is down" means.

The cache, the limits and the pool's token health all go through this link. Redis is
what makes replicas agree, never what makes a request fail: every call is bounded by a
short timeout, and a failure marks Redis down for a few seconds (one warning in the log,
one in the metrics) during which each part falls back to what this process knows. The
first call that succeeds afterwards marks it up again, and the parts merge back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.retry import Retry

from ..config.state import RedisConfig

log = logging.getLogger("gateway.redis")

T = TypeVar("T")

# How long Redis is left alone after a failure before the next call tries it again.
DOWN_SECONDS = 5.0


class SharedUnavailable(Exception):
    """Redis could not be used just now; fall back to what this process knows."""


def safe_location(url: str) -> str:
    """host:port/db of a Redis URL, for logs: never its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"


class RedisLink:
    """A Redis client with a memory of its last failure. `on_error(operation)` is told of
    every failed call (for metrics)."""

    def __init__(
        self,
        cfg: RedisConfig,
        *,
        on_error: Callable[[str], None] = lambda operation: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert cfg.url is not None
        self.prefix = cfg.prefix
        self._timeout = cfg.timeout_seconds
        self._on_error = on_error
        self._clock = clock
        self.where = safe_location(cfg.url)
        self._down_until = 0.0
        self._was_down = False
        self._listeners: list[Callable[[bool], None]] = []
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            cfg.url,
            socket_timeout=cfg.timeout_seconds,
            socket_connect_timeout=cfg.timeout_seconds,
            # One try: a slow Redis must cost a request at most one timeout.
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )

    @property
    def up(self) -> bool:
        """False from a failure until Redis answers again."""
        return not self._was_down

    @property
    def available(self) -> bool:
        """False while Redis is marked down after a failure (calls are not even tried)."""
        return self._clock() >= self._down_until

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(up)` whenever Redis goes down or comes back."""
        self._listeners.append(listener)

    def script(self, source: str) -> AsyncScript:
        """A Lua script, sent by its digest (and loaded on first use)."""
        return self.redis.register_script(source)

    async def call(self, operation: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call (or pipeline); SharedUnavailable when Redis is down or fails."""
        if not self.available:
            raise SharedUnavailable(operation)
        try:
            async with asyncio.timeout(self._timeout * 2):
                result = await make()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(operation, exc)
            raise SharedUnavailable(operation) from None
        if self._was_down:
            self._was_down = False
            log.warning(
                "Redis at %s answers again: cache, limits and token health are shared again",
                self.where,
            )
            self._tell(True)
        return result

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._down_until = self._clock() + DOWN_SECONDS
        self._on_error(operation)
        if self._was_down:
            return
        self._was_down = True
        log.warning(
            "Redis at %s is unavailable (%s during %s): serving from the in-process cache, "
            "enforcing limits on what this replica knows, keeping token health local, "
            "until it answers again",
            self.where,
            type(exc).__name__,
            operation,
        )
        self._tell(False)

    def _tell(self, up: bool) -> None:
        for listener in self._listeners:
            listener(up)

    async def aclose(self) -> None:
        """Close the connection pool."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()
