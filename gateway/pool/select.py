"""Which token takes the next call: the best usable slot, or why there is none.

A request takes the lowest priority group that has a usable slot, then the slot with the
fewest calls in flight per unit of weight. Benched or broken tokens whose time is up get
the next request as their re-check (one at a time), and a broken upstream takes one probe
at a time.

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

from ..config import UpstreamConfig
from ..errors import CapacityTimeout, ModelUnavailable, NoCapacity
from ..types import Job
from ..upstreams.base import Upstream
from .health import Health, State, token_id


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


class Selector:
    """Every slot of every upstream, and the choice between them."""

    def __init__(
        self,
        upstreams: Sequence[tuple[Upstream, UpstreamConfig]],
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self.upstreams = [u for u, _ in upstreams]
        self.upstream_health: dict[str, Health] = {u.name: Health() for u, _ in upstreams}
        self.upstream_inflight: dict[str, int] = {u.name: 0 for u, _ in upstreams}
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
        return min(u.max_count_per_call for u in self.upstreams if u.name in names)

    def usable(self, slot: Slot, now: float) -> bool:
        """Could this slot take a call now?"""
        up = self.upstream_health[slot.upstream.name]
        if up.blocked(now) or slot.health.blocked(now) or slot.full():
            return False
        # A broken upstream whose time is up takes one probe at a time.
        return not (up.needs_probe(now) and self.upstream_inflight[slot.upstream.name] > 0)

    def blocked_by_health(self, slot: Slot, now: float) -> bool:
        """True while the slot's or its upstream's state keeps traffic away."""
        return slot.health.blocked(now) or self.upstream_health[slot.upstream.name].blocked(now)

    def _pick(self, slots: list[Slot], now: float) -> Slot | None:
        usable = [s for s in slots if self.usable(s, now)]
        if not usable:
            return None
        best_priority = min(s.cfg.priority for s in usable)
        group = [s for s in usable if s.cfg.priority == best_priority]
        # A benched or broken token whose time is up gets the next request as its re-check;
        # if that fails the request simply moves on, so nothing is lost by probing.
        probes = [s for s in group if s.health.needs_probe(now)]
        if probes:
            return min(probes, key=lambda s: s.picks)
        # Least in flight per unit of weight; among equals (an idle pool, say) the one with
        # the smallest weighted share so far, so even sequential traffic is spread by weight.
        return min(group, key=lambda s: (s.inflight / s.cfg.weight, s.picks / s.cfg.weight))

    def _take(self, slot: Slot, now: float) -> None:
        if slot.health.needs_probe(now):
            slot.health.probing = True
        up = self.upstream_health[slot.upstream.name]
        if up.needs_probe(now):
            up.probing = True
        slot.inflight += 1
        slot.picks += 1
        self.upstream_inflight[slot.upstream.name] += 1

    def release(self, slot: Slot) -> None:
        """The call on this slot is over."""
        slot.inflight -= 1
        self.upstream_inflight[slot.upstream.name] -= 1
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

    async def acquire(self, slots: list[Slot], tried: set[int], deadline: float) -> Slot:
        """The best slot not tried yet (else the best tried one), taken. Waits while only
        concurrency caps stand in the way; NoCapacity when health keeps every slot away,
        CapacityTimeout when the deadline passes waiting."""
        while True:
            now = self._clock()
            fresh = [s for s in slots if id(s) not in tried]
            slot = self._pick(fresh, now) or self._pick(slots, now)
            if slot is not None:
                self._take(slot, now)
                return slot
            if not any(s.full() for s in slots if not self.blocked_by_health(s, now)):
                raise self._no_capacity(slots, now)
            self._released.clear()
            remaining = deadline - now
            if remaining <= 0:
                raise CapacityTimeout()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout=min(remaining, 1.0))
