"""Token health shared through Redis: a token benched, cooling or broken on one replica is
so on every replica, until the same moment.

Each replica writes a token's state when its own verdicts change it, into one hash keyed
by the token's redacted id (never the token), and reads the hash every sync: a state
written by another replica after the one it holds replaces it, with the same end (a wall
time, so replicas agree whatever their monotonic clocks say). A token that recovers on one
replica (its trial succeeded) is written "ok" and is back everywhere. Redis being
unreachable only means each replica goes on with what it saw itself.

  health       hash: token id -> {"state", "until" (wall), "at" (wall, when decided),
                                  "error" (scrubbed)}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from ..state.redis import RedisLink, SharedUnavailable
from ..state.ticker import Ticker
from .health import State
from .select import Slot

log = logging.getLogger("gateway.pool")

# The states worth telling the other replicas about (probing and panic are only shown).
_SHARED = (State.OK, State.COOLING, State.BENCHED, State.BROKEN)
# An "ok" written this long ago has reached every replica: it is dropped from the hash.
_FORGET_OK_SECONDS = 600.0


class SharedHealth:
    """Writes this replica's token verdicts and adopts the other replicas'."""

    def __init__(
        self,
        link: RedisLink,
        slots: Sequence[Slot],
        *,
        sync_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._key = link.prefix + "health"
        self._by_id: dict[str, list[Slot]] = {}
        for slot in slots:
            self._by_id.setdefault(slot.id, []).append(slot)
        self._clock = clock
        self._wall = wall
        # Per token id: (state, until as wall time, decided at) as last written or adopted.
        self._known: dict[str, tuple[State, float, float]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._ticker = Ticker(sync_seconds, lambda tick: self.sync())
        self._started = False

    def observe(self, slot: Slot) -> None:
        """A verdict was applied to the slot's health: write it if it changed the state."""
        health = slot.health
        if health.state not in _SHARED:
            return
        until = self._to_wall(health.until) if health.state is not State.OK else 0.0
        known = self._known.get(slot.id)
        if known is None and health.state is State.OK:
            return  # ok all along: nothing to tell
        if known is not None and known[0] is health.state and abs(known[1] - until) < 0.01:
            return
        at = self._wall()
        self._known[slot.id] = (health.state, until, at)
        entry = {"state": health.state.value, "until": until, "at": at, "error": health.last_error}
        task = asyncio.get_running_loop().create_task(self._write(slot.id, entry))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, token: str, entry: dict[str, Any]) -> None:
        blob = json.dumps(entry).encode()
        redis = self._link.redis

        async def write() -> None:
            await cast(Awaitable[int], redis.hset(self._key, token, blob))  # type: ignore[arg-type]

        with contextlib.suppress(SharedUnavailable):
            await self._link.call("health", write)

    async def start(self) -> None:
        """Adopt what the other replicas know, then keep reading it."""
        if not self._started:
            self._started = True
            await self.sync()
            self._ticker.start()

    async def sync(self) -> None:
        """Read every replica's token states; adopt the ones newer than this replica's."""
        redis = self._link.redis

        async def read() -> dict[bytes, bytes]:
            return await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(self._key))

        async def forget(fields: list[bytes]) -> None:
            await cast(Awaitable[int], redis.hdel(self._key, *fields))  # type: ignore[arg-type]

        try:
            entries = await self._link.call("health", read)
        except SharedUnavailable:
            return
        stale = []
        for raw_id, blob in entries.items():
            token = raw_id.decode(errors="replace")
            entry = _read(blob)
            if entry is None:
                stale.append(raw_id)
                continue
            state, until, at, error = entry
            if state is State.OK and self._wall() - at > _FORGET_OK_SECONDS:
                stale.append(raw_id)
            self._adopt(token, state, until, at, error)
        if stale:
            with contextlib.suppress(SharedUnavailable):
                await self._link.call("health", lambda: forget(stale))

    def _adopt(self, token: str, state: State, until: float, at: float, error: str | None) -> None:
        slots = self._by_id.get(token)
        known = self._known.get(token)
        if not slots or (known is not None and known[2] >= at):
            return  # not one of ours, or this replica knows something newer
        self._known[token] = (state, until, at)
        now = self._clock()
        for slot in slots:
            health = slot.health
            if state is State.OK:
                if health.state is not State.OK:
                    health.ok(now)
                continue
            if state is State.BROKEN and health.state is not State.BROKEN:
                health.broken_at = now
            if health.enter(state, now + (until - self._wall())):
                log.info("token %s: %s on another replica, until then here too", token, state.value)
            health.last_error, health.last_error_at = error, at

    def _to_wall(self, monotonic: float) -> float:
        return self._wall() + (monotonic - self._clock())

    async def aclose(self) -> None:
        """Stop reading; let the last writes go out."""
        await self._ticker.stop()
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=2)


def _read(blob: bytes) -> tuple[State, float, float, str | None] | None:
    """An entry, or None when it cannot be read (written by something else)."""
    try:
        entry = json.loads(blob)
        state = State(entry["state"])
        error = entry.get("error")
        return state, float(entry["until"]), float(entry["at"]), error if error else None
    except (ValueError, KeyError, TypeError):
        return None
