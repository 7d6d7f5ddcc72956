"""The cache and the coalescing lock in Redis, shared by every replica.

Redis is an optimisation, never a dependency: a failure marks it down for a few seconds
(state/redis.py), during which the caller falls back to its own in-process cache.
Requests never fail because of Redis.

Keys (all under the configured prefix):
  e:<key>          the entry (see entry.encode), expiring with the entry
  l:<key>          the lock of the flight making <key>: its flight id, expiring at the deadline
  d:<flight id>    how that flight ended ("ok" or an error), for the replicas waiting on it
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import DomainError, SharedFlightFailed, from_wire, to_wire
from ..state.redis import RedisLink
from .entry import Entry, decode, encode

# How long a finished flight's outcome stays readable for the replicas waiting on it.
_OUTCOME_SECONDS = 120

# Deletes the lock only if this flight still holds it (it may have expired and been
# taken by another replica since).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class SharedStore:
    """Entries, locks and flight outcomes in Redis, through the replicas' shared link."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._redis = link.redis
        self._prefix = link.prefix
        self._call = link.call
        self._release = link.script(_RELEASE)

    @property
    def up(self) -> bool:
        """False from a failure until Redis answers again."""
        return self._link.up

    @property
    def available(self) -> bool:
        """False while Redis is marked down after a failure."""
        return self._link.available

    # ------------------------------------------------------------------ entries

    async def get(self, key: str) -> Entry | None:
        """The entry, or None when absent or unreadable."""
        blob = await self._call("get", lambda: self._redis.get(self._prefix + "e:" + key))
        return decode(blob) if blob else None

    async def put(self, key: str, entry: Entry, expires_at: float) -> None:
        """Store the entry until expires_at (wall-clock)."""
        ttl_ms = int((expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        blob = encode(entry)
        await self._call("put", lambda: self._redis.set(self._prefix + "e:" + key, blob, px=ttl_ms))

    # ------------------------------------------------------------------ flights

    async def acquire(self, key: str, flight: str, seconds: float) -> str | None:
        """Take the lock for key: None once this flight holds it, else the flight id of the
        one that does."""
        lock = self._prefix + "l:" + key
        ms = max(1, int(seconds * 1000))

        async def attempt() -> Any:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(lock, flight.encode(), nx=True, px=ms)
            pipe.get(lock)
            return await pipe.execute()

        taken, holder = await self._call("lock", attempt)
        if taken:
            return None
        return holder.decode() if holder else ""

    async def holder(self, key: str) -> str | None:
        """The flight id holding key's lock, or None when nobody does."""
        value = await self._call("lock", lambda: self._redis.get(self._prefix + "l:" + key))
        return value.decode() if value else None

    async def finish(self, key: str, flight: str, error: DomainError | None) -> None:
        """Publish how the flight ended, then release its lock (in that order, so a waiter
        that sees the lock gone finds the outcome)."""
        outcome = b"ok" if error is None else b"err:" + json.dumps(to_wire(error)).encode()

        async def publish() -> None:
            await self._redis.set(self._prefix + "d:" + flight, outcome, ex=_OUTCOME_SECONDS)
            await self._release(keys=[self._prefix + "l:" + key], args=[flight])

        await self._call("finish", publish)

    async def release(self, key: str, flight: str) -> None:
        """Drop the lock without an outcome (the flight was cancelled)."""
        await self._call(
            "release", lambda: self._release(keys=[self._prefix + "l:" + key], args=[flight])
        )

    async def outcome(self, flight: str) -> DomainError | bool:
        """False while the flight runs; True when it ended well; its error otherwise."""
        value = await self._call("outcome", lambda: self._redis.get(self._prefix + "d:" + flight))
        if not value:
            return False
        if value == b"ok":
            return True
        try:
            return from_wire(json.loads(value[len(b"err:") :]))
        except ValueError:
            return SharedFlightFailed()
