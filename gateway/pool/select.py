"""Which token takes the next call: the best usable slot, or why there is none.

A request takes the lowest priority group that has a usable slot, then the slot with the
fewest calls in flight per unit of weight. Benched or broken tokens whose time is up get
the next request as their re-check (one at a time), and a broken upstream takes one trial
call at a time.

Panic: when no slot is usable and some are out only for the provider's failures (broken,
not benched or cooling), the request is sent to the least recently failed of those anyway,
at most `panic_concurrency` calls at once per upstream and no more often than that many
per `probe_interval_seconds` (a provider in trouble is not hammered by every waiting
request's retries), as Envoy routes to every host below its panic threshold. Refusing
would turn a provider's blip into the gateway's outage; the panic calls double as trials,
so service resumes with the provider's first good answer. A request that finds no panic
call free waits `panic_wait_seconds` for one.

Concurrency: the pool runs on one event loop and never awaits between reading a slot's
state and changing it, so selection and bookkeeping are atomic without locks; a slot that
has been benched is never handed out again, however many requests are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..config import PoolConfig, UpstreamConfig
from ..errors import CapacityTimeout, ModelUnavailable, NoCapacity
from ..types import Job
from ..upstreams.base import Upstream
from .health import Health, Lease, State, token_id


@dataclass(eq=False)
class Slot:
    """One token of one upstream."""

    upstream: Upstream
    cfg: UpstreamConfig
    token: str = field(repr=False)
    id: str = ""
    index: int = 0
    health: Health = field(default_factory=Health)
    inflight: int = 0
    picks: int = 0  # times handed out, for spreading load by weight
    served: int = 0

    def full(self) -> bool:
        """At its configured concurrency cap."""
        return self.cfg.max_concurrency is not None and self.inflight >= self.cfg.max_concurrency


@dataclass(frozen=True)
class Taken:
    """A slot handed out for one call, and what that call is to its health."""

    slot: Slot
    lease: Lease


class Selector:
    """Every slot of every upstream, and the choice between them."""

    def __init__(
        self,
        upstreams: Sequence[tuple[Upstream, UpstreamConfig]],
        cfg: PoolConfig,
        clock: Callable[[], float],
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self.upstreams = [u for u, _ in upstreams]
        self.upstream_health: dict[str, Health] = {u.name: Health() for u, _ in upstreams}
        self.upstream_inflight: dict[str, int] = {u.name: 0 for u, _ in upstreams}
        self.upstream_panic: dict[str, int] = {u.name: 0 for u, _ in upstreams}
        self._panic_next: dict[str, float] = {u.name: 0.0 for u, _ in upstreams}
        self.slots: list[Slot] = [
            Slot(upstream=u, cfg=c, token=t, id=token_id(t), index=i)
            for u, c in upstreams
            for i, t in enumerate(c.tokens)
        ]
        # Woken whenever a slot is released, for requests waiting on concurrency caps.
        self._released = asyncio.Event()

    def candidates(self, job: Job) -> list[Slot]:
        """Slots whose upstream can honour the job; ModelUnavailable naming the parameter
        when none can."""
        reasons: list[tuple[str, str]] = []
        able = set()
        for upstream in self.upstreams:
            why = upstream.cannot_serve(job)
            if why is None:
                able.add(upstream.name)
            else:
                reasons.append(why)
        if not able:
            param, reason = reasons[0] if reasons else ("model", "no upstream configured")
            if param == "model":
                raise ModelUnavailable(
                    "model", f"No configured upstream serves model '{job.model}' ({reason})."
                )
            raise ModelUnavailable(param, f"No configured upstream can do this request: {reason}.")
        return [s for s in self.slots if s.upstream.name in able]

    def max_count_per_call(self, job: Job) -> int:
        """Images one call may ask for, for whichever candidate ends up serving it."""
        names = {s.upstream.name for s in self.candidates(job)}
        return min(u.per_call(job.model) for u in self.upstreams if u.name in names)

    def usable(self, slot: Slot, now: float) -> bool:
        """Could this slot take an ordinary call now?"""
        return not (self.blocked_by_health(slot, now) or slot.full())

    def blocked_by_health(self, slot: Slot, now: float) -> bool:
        """True while the slot's or its upstream's state keeps traffic away."""
        return slot.health.blocked(now) or self.upstream_health[slot.upstream.name].blocked(now)

    def servable(self, slot: Slot, now: float) -> bool:
        """Could this slot serve at all, by trial or in panic (for /readyz)? Only what the
        token explains (benched, cooling) keeps it out."""
        return not slot.health.token_side(now) or slot.health.needs_probe(now)

    def _pick(self, slots: list[Slot], now: float) -> Slot | None:
        usable = [s for s in slots if self.usable(s, now)]
        if not usable:
            return None
        best_priority = min(s.cfg.priority for s in usable)
        group = [s for s in usable if s.cfg.priority == best_priority]
        # A benched or broken token (or upstream) whose time is up gets the next request as
        # its trial; if that fails the request simply moves on, so nothing is lost by it.
        probes = [s for s in group if self._trial_due(s, now)]
        if probes:
            return min(probes, key=lambda s: s.picks)
        # Least in flight per unit of weight; among equals (an idle pool, say) the one with
        # the smallest weighted share so far, so even sequential traffic is spread by weight.
        return min(group, key=lambda s: (s.inflight / s.cfg.weight, s.picks / s.cfg.weight))

    def _trial_due(self, slot: Slot, now: float) -> bool:
        return slot.health.needs_probe(now) or self.upstream_health[slot.upstream.name].needs_probe(
            now
        )

    def _panic_able(self, slot: Slot, now: float) -> bool:
        """Out only for the provider's failures: a panic call may go to it."""
        up = self.upstream_health[slot.upstream.name]
        broken = up.state is State.BROKEN or slot.health.state is State.BROKEN
        return broken and not slot.health.token_side(now)

    def _panic_pick(self, slots: list[Slot], now: float) -> Slot | None:
        able = [
            s
            for s in slots
            if self._panic_able(s, now)
            and not s.full()
            and self.upstream_panic[s.upstream.name] < self._cfg.panic_concurrency
            and now >= self._panic_next[s.upstream.name]
        ]
        if not able:
            return None

        def last_failed(s: Slot) -> float:
            return max(s.health.last_failure, self.upstream_health[s.upstream.name].last_failure)

        return min(able, key=lambda s: (last_failed(s), s.inflight / s.cfg.weight))

    def _take(self, slot: Slot, now: float, *, panic: bool = False) -> Taken:
        token_trial = slot.health.needs_probe(now) and not slot.health.probing
        if token_trial:
            slot.health.probing = True
        up = self.upstream_health[slot.upstream.name]
        upstream_trial = up.needs_probe(now) and not up.probing
        if upstream_trial:
            up.probing = True
        if panic:
            name = slot.upstream.name
            self.upstream_panic[name] += 1
            up.counters.panic_calls += 1
            self._panic_next[name] = now + self._cfg.probe_interval_seconds / (
                self._cfg.panic_concurrency
            )
        slot.inflight += 1
        slot.picks += 1
        self.upstream_inflight[slot.upstream.name] += 1
        return Taken(slot, Lease(token_trial, upstream_trial, panic))

    def release(self, taken: Taken) -> None:
        """The call is over (its verdict, if any, already given)."""
        slot, lease = taken.slot, taken.lease
        slot.inflight -= 1
        self.upstream_inflight[slot.upstream.name] -= 1
        # A trial that ended without a verdict (the caller went away) must not leave its
        # slot waiting for an answer that never comes.
        if lease.token_trial:
            slot.health.probing = False
        if lease.upstream_trial:
            self.upstream_health[slot.upstream.name].probing = False
        if lease.panic:
            self.upstream_panic[slot.upstream.name] -= 1
        self._released.set()

    def _no_capacity(self, slots: list[Slot], now: float) -> NoCapacity:
        waits: list[float] = []
        only_rate_limited = True
        for s in slots:
            up = self.upstream_health[s.upstream.name]
            waits.append(max(0.0, max(s.health.until, up.until) - now))
            blocking = [h for h in (s.health, up) if h.state is not State.OK]
            if not blocking or any(h.state is not State.COOLING for h in blocking):
                only_rate_limited = False
        retry_after = max(1, math.ceil(min(waits))) if waits else 1
        if only_rate_limited:
            message = (
                f"Every upstream token is rate-limited right now; retry after {retry_after} s."
            )
        else:
            message = (
                "No upstream token is available right now (all are benched, broken or cooling "
                f"down); the earliest returns in about {retry_after} s."
            )
        return NoCapacity(message, retry_after=retry_after, rate_limited=only_rate_limited)

    async def acquire(self, slots: list[Slot], tried: set[int], deadline: float) -> Taken:
        """The best slot not tried yet (else the best tried one; else a panic call), taken.
        Waits while only concurrency caps stand in the way (until the deadline, then
        CapacityTimeout) or while every panic call is taken (panic_wait_seconds, then
        NoCapacity); NoCapacity at once when only token trouble keeps every slot away."""
        panic_until: float | None = None
        while True:
            now = self._clock()
            taken = self._take_best(slots, tried, now)
            if taken is not None:
                return taken
            limit = deadline
            if not any(s.full() for s in slots if not self.blocked_by_health(s, now)):
                if not any(self._panic_able(s, now) for s in slots):
                    raise self._no_capacity(slots, now)
                if panic_until is None:
                    panic_until = now + self._cfg.panic_wait_seconds
                limit = min(deadline, panic_until)
            if now >= limit:
                raise CapacityTimeout() if limit >= deadline else _panic_full()
            await self._wait(min(limit - now, 1.0), panicking=panic_until is not None, now=now)

    def _take_best(self, slots: list[Slot], tried: set[int], now: float) -> Taken | None:
        fresh = [s for s in slots if id(s) not in tried]
        slot = self._pick(fresh, now) or self._pick(slots, now)
        if slot is not None:
            return self._take(slot, now)
        slot = self._panic_pick(slots, now)
        return None if slot is None else self._take(slot, now, panic=True)

    async def _wait(self, wait: float, *, panicking: bool, now: float) -> None:
        """Until a release, or (panicking) until the next panic call may start."""
        paced = [t - now for t in self._panic_next.values() if t > now]
        if paced and panicking:
            wait = min(wait, *paced)
        self._released.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout=wait)


def _panic_full() -> NoCapacity:
    return NoCapacity(
        "Every upstream that can serve this request is failing right now; trial calls are "
        "in flight. Retry in a second.",
        retry_after=1,
        rate_limited=False,
    )
