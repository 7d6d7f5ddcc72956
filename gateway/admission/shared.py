"""Per-client limits in Redis: one atomic script per admission, one per settlement.

Every replica pointed at one Redis enforces one set of counters. A request is admitted by
a single Lua script that checks and takes all of its client's limits at once (so two
replicas can never both take the last unit), and settled by another that counts what was
made and releases what was held. Times come from Redis's own clock (TIME), so replicas
whose clocks differ still agree on the minute and the UTC day.

Keys of a client (the client's name in braces, so a Redis Cluster keeps them on one slot):
  lim:{name}:rpm      sorted set: admissions of the last minute (score: ms)
  lim:{name}:leases   sorted set: requests in flight (score: when the lease expires, ms);
                      renewed while the request runs, so a dead replica's leases expire
  lim:{name}:resv     hash: lease -> "day|images|cost", what each request in flight holds
  lim:{name}:day:<n>  hash: requests, images, cost settled on UTC day n (days since epoch),
                      and refused:<limit> counts; kept three days (259200 s)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..config import ClientConfig
from ..state.batch import Call, ScriptBatcher, run_scripts
from ..state.redis import RedisLink

_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(tonumber(t[1]) / 86400)
"""

# KEYS: rpm, leases, resv, day prefix. ARGV: rpm, concurrency, images_per_day, budget
# (each -1 when not set), lease id, lease ms, images, cost.
# Returns {verdict, ms (to the retry / to midnight), in flight, settled images,
# settled cost, held images, held cost, day}: verdict "ok" or the limit that refused.
_ACQUIRE = (
    _CLOCK
    + """
local rpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_images, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local id, lease_ms = ARGV[5], tonumber(ARGV[6])
local images, cost = tonumber(ARGV[7]), tonumber(ARGV[8])
local totals = KEYS[4] .. day
local function refuse(limit)
  redis.call('HINCRBY', totals, 'refused:' .. limit, 1)
  redis.call('EXPIRE', totals, 259200)
end
-- Leases past their expiry belong to replicas gone: drop them and what they held.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[3], unpack(dead))
end
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    refuse('requests_per_minute')
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'requests_per_minute', tonumber(oldest[2]) + 60000 - now, 0, 0, '0', 0, '0', day}
  end
end
local inflight = redis.call('ZCARD', KEYS[2])
if conc >= 0 and inflight >= conc then
  refuse('max_concurrent_requests')
  return {'max_concurrent_requests', 1000, inflight, 0, '0', 0, '0', day}
end
if rpm >= 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], 60000)
end
redis.call('ZADD', KEYS[2], now + lease_ms, id)
redis.call('PEXPIRE', KEYS[2], lease_ms * 2)
local used = redis.call('HMGET', totals, 'images', 'cost')
local used_images, used_cost = tonumber(used[1] or 0), tonumber(used[2] or 0)
local held_images, held_cost = 0, 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do
  local d, i, c = string.match(v, '^(%d+)|(%d+)|(.+)$')
  if tonumber(d) == day then
    held_images = held_images + tonumber(i)
    held_cost = held_cost + tonumber(c)
  end
end
local verdict = 'ok'
if max_images >= 0 and images > max_images - used_images - held_images then
  verdict = 'images_per_day'
elseif budget >= 0 and cost > budget - used_cost - held_cost + 1e-9 then
  verdict = 'budget_usd_per_day'
end
if verdict == 'ok' then
  redis.call('HSET', KEYS[3], id, day .. '|' .. images .. '|' .. ARGV[8])
  redis.call('PEXPIRE', KEYS[3], lease_ms * 2)
else
  refuse(verdict)
end
local midnight = (day + 1) * 86400000 - now
return {verdict, midnight, inflight + 1, used_images, tostring(used_cost), held_images,
        tostring(held_cost), day}
"""
)

# KEYS: leases, resv, day prefix. ARGV: lease id ("" for none), requests, images, cost,
# then pairs of (limit, refusals) to count.
_SETTLE = (
    _CLOCK
    + """
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
local totals = KEYS[3] .. day
if tonumber(ARGV[2]) ~= 0 then redis.call('HINCRBY', totals, 'requests', ARGV[2]) end
if tonumber(ARGV[3]) ~= 0 then redis.call('HINCRBY', totals, 'images', ARGV[3]) end
if tonumber(ARGV[4]) ~= 0 then redis.call('HINCRBYFLOAT', totals, 'cost', ARGV[4]) end
for i = 5, #ARGV - 1, 2 do redis.call('HINCRBY', totals, 'refused:' .. ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', totals, 259200)
return day
"""
)

# KEYS: leases, resv. ARGV: lease ms, then the ids of the leases this replica still holds.
_RENEW = (
    _CLOCK
    + """
local ms = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ms * 2)
redis.call('PEXPIRE', KEYS[2], ms * 2)
return #ARGV - 1
"""
)

# KEYS: rpm, leases, day prefix. Returns {admissions in the last minute, live leases,
# the day's totals as a flat hash, day}.
_USAGE = (
    _CLOCK
    + """
return {redis.call('ZCOUNT', KEYS[1], '(' .. (now - 60000), '+inf'),
        redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'),
        redis.call('HGETALL', KEYS[3] .. day), day}
"""
)


@dataclass(frozen=True)
class Verdict:
    """What the admission script decided, and the client's counters as it saw them."""

    refused: str | None  # the limit that refused, or None
    wait: float  # seconds: until the oldest admission leaves the minute / to midnight
    inflight: int
    images: int  # settled today (UTC), every replica
    cost: float
    held_images: int  # held by requests in flight
    held_cost: float
    day: int  # days since the epoch, by Redis's clock


@dataclass(frozen=True)
class Usage:
    """A client's shared counters now."""

    recent: int  # admissions in the last minute
    inflight: int
    requests: int  # settled today
    images: int
    cost: float
    refused: dict[str, int]  # refusals today, by limit
    day: int


@dataclass(frozen=True)
class Delta:
    """What this replica counted on its own (settled while Redis was unreachable,
    refusals it decided itself), to add to the shared totals."""

    client: str
    requests: int = 0
    images: int = 0
    cost: float = 0.0
    refused: tuple[tuple[str, int], ...] = ()


def _limit(value: float | None) -> str:
    return "-1" if value is None else repr(value)


class SharedLimits:
    """The scripts, run through the replicas' Redis link (which raises SharedUnavailable)."""

    def __init__(self, link: RedisLink, *, lease_seconds: float) -> None:
        self._link = link
        self._prefix = link.prefix + "lim:"
        self._lease_ms = str(int(lease_seconds * 1000))
        self._acquire = link.script(_ACQUIRE)
        self._settle = link.script(_SETTLE)
        self._renew = link.script(_RENEW)
        self._usage = link.script(_USAGE)
        # Taking and settling, one per request: sent together when requests overlap.
        self._batch = ScriptBatcher(link, "limits")

    @property
    def round_trips(self) -> int:
        """Round trips that took or settled limits, since start."""
        return self._batch.round_trips

    @property
    def up(self) -> bool:
        """False from a Redis failure until it answers again."""
        return self._link.up

    def _keys(self, client: str) -> tuple[str, str, str, str]:
        base = f"{self._prefix}{{{client}}}:"
        return base + "rpm", base + "leases", base + "resv", base + "day:"

    async def acquire(self, client: ClientConfig, lease: str, images: int, cost: float) -> Verdict:
        """Check and take every limit of the client for one request, atomically."""
        rpm, leases, resv, day = self._keys(client.name)
        args = (
            _limit(client.requests_per_minute),
            _limit(client.max_concurrent_requests),
            _limit(client.images_per_day),
            _limit(client.budget_usd_per_day),
            lease,
            self._lease_ms,
            str(images),
            repr(cost),
        )
        reply = await self._batch.run(self._acquire, (rpm, leases, resv, day), args)
        verdict = reply[0].decode()
        return Verdict(
            refused=None if verdict == "ok" else verdict,
            wait=max(0.0, float(reply[1]) / 1000),
            inflight=int(reply[2]),
            images=int(reply[3]),
            cost=float(reply[4]),
            held_images=int(reply[5]),
            held_cost=float(reply[6]),
            day=int(reply[7]),
        )

    async def settle(self, client: str, lease: str, images: int, cost: float) -> None:
        """Count one request's images and cost on today's totals; release its lease."""
        _rpm, leases, resv, day = self._keys(client)
        args = (lease, "1", str(images), repr(cost))
        await self._batch.run(self._settle, (leases, resv, day), args)

    async def merge(self, deltas: Sequence[Delta]) -> None:
        """Add what was settled while Redis was unreachable (one pipeline)."""
        calls: list[Call] = []
        for d in deltas:
            _rpm, leases, resv, day = self._keys(d.client)
            args = ["", str(d.requests), str(d.images), repr(d.cost)]
            for limit, count in d.refused:
                args += [limit, str(count)]
            calls.append((self._settle, (leases, resv, day), args))
        await self._link.call(
            "limits_merge", functools.partial(run_scripts, self._link.redis, calls)
        )

    async def renew(self, held: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Extend the leases this replica still holds, (client, lease ids) at a time."""
        calls: list[Call] = []
        for client, ids in held:
            _rpm, leases, resv, _day = self._keys(client)
            calls.append((self._renew, (leases, resv), (self._lease_ms, *ids)))
        if calls:
            await self._link.call(
                "limits_renew", functools.partial(run_scripts, self._link.redis, calls)
            )

    async def usage(self, clients: Sequence[str]) -> dict[str, Usage]:
        """Every named client's shared counters (one pipeline)."""
        calls: list[Call] = []
        for client in clients:
            rpm, leases, _resv, day = self._keys(client)
            calls.append((self._usage, (rpm, leases, day), ()))
        replies = await self._link.call(
            "limits_usage", lambda: run_scripts(self._link.redis, calls)
        )
        return {client: _usage(reply) for client, reply in zip(clients, replies, strict=True)}


def _usage(reply: list[object]) -> Usage:
    recent, inflight, flat, day = reply
    assert isinstance(flat, list)
    totals = {
        bytes(k).decode(): bytes(v).decode() for k, v in zip(flat[::2], flat[1::2], strict=True)
    }
    refused = {
        name.removeprefix("refused:"): int(v)
        for name, v in totals.items()
        if name.startswith("refused:")
    }
    return Usage(
        recent=int(str(recent)),
        inflight=int(str(inflight)),
        requests=int(totals.get("requests", 0)),
        images=int(totals.get("images", 0)),
        cost=float(totals.get("cost", 0.0)),
        refused=refused,
        day=int(str(day)),
    )
