"""One typed view of the pool's state, read by /admin/upstreams and the metrics collector.

Times are given both as wall-clock moments (for people) and as seconds from now (for
scripts); token secrets never appear, only redacted ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..upstreams.base import Upstream
from .health import Counters, Health, State
from .select import Selector, Slot


@dataclass(frozen=True)
class TokenView:
    """One token's state, by redacted id."""

    id: str
    index: int
    state: State
    inflight: int
    max_concurrency: int | None
    served: int
    consecutive_failures: int
    last_error: str | None
    last_error_at: float | None
    since: float
    returns_at: float | None
    returns_in_seconds: float | None


@dataclass(frozen=True)
class UpstreamView:
    """One upstream's state, with its tokens."""

    name: str
    type: str
    priority: int
    weight: float
    models: tuple[str, ...]
    state: State  # ok, broken, probing (its trial is due or out) or panic
    inflight: int
    consecutive_failures: int
    last_error: str | None
    returns_in_seconds: float | None  # broken: when its next trial call is due
    broken_since: float | None  # wall time
    panic_inflight: int
    breaker: BreakerView
    learned: LearnedView
    tokens: tuple[TokenView, ...]
    tokens_available: int


@dataclass(frozen=True)
class RefusalView:
    """A field the upstream refused for a model, remembered for a while."""

    model: str
    field: str
    reason: str
    expires_in_seconds: float


@dataclass(frozen=True)
class LearnedView:
    """What the upstream's answers taught: fields it refuses, images it makes per call."""

    refuses: tuple[RefusalView, ...]
    images_per_call: dict[str, int]  # model -> lowered maximum (absent: as declared)


@dataclass(frozen=True)
class BreakerView:
    """What an upstream's breaker has done since start (counters, for metrics)."""

    ejections: int
    trials_ok: int
    trials_failed: int
    recoveries: int
    outage_seconds_total: float
    last_outage_seconds: float | None
    panic_calls: int
    stale_connection_retries: int


def _returns_in(health: Health, state: State, now: float) -> float | None:
    if state is State.OK or health.until <= now:
        return None
    return round(health.until - now, 3)


def _upstream_state(health: Health, panic_inflight: int, now: float) -> State:
    if health.state is not State.BROKEN:
        return health.shown(now)
    if panic_inflight:
        return State.PANIC
    if health.probing or now >= health.until:
        return State.PROBING
    return State.BROKEN


def _learned(upstream: Upstream, now: float) -> LearnedView:
    refuses = tuple(
        RefusalView(r.model, r.field.value, r.reason, round(r.until - now, 1))
        for r in upstream.refusals.active(now)
    )
    return LearnedView(refuses=refuses, images_per_call=upstream.capacity.learned())


def _breaker(c: Counters, stale: int) -> BreakerView:
    return BreakerView(
        ejections=c.ejections,
        trials_ok=c.trials_ok,
        trials_failed=c.trials_failed,
        recoveries=c.recoveries,
        outage_seconds_total=round(c.outage_seconds, 3),
        last_outage_seconds=None
        if c.last_outage_seconds is None
        else round(c.last_outage_seconds, 3),
        panic_calls=c.panic_calls,
        stale_connection_retries=stale,
    )


def _token(slot: Slot, now: float, wall: float) -> TokenView:
    h = slot.health
    state = h.shown(now)
    returns_in = _returns_in(h, state, now)
    return TokenView(
        id=slot.id,
        index=slot.index,
        state=state,
        inflight=slot.inflight,
        max_concurrency=slot.cfg.max_concurrency,
        served=slot.served,
        consecutive_failures=h.failures,
        last_error=h.last_error,
        last_error_at=h.last_error_at,
        since=h.since,
        returns_at=None if returns_in is None else wall + (h.until - now),
        returns_in_seconds=returns_in,
    )


def pool_view(selector: Selector, now: float) -> tuple[UpstreamView, ...]:
    """Every upstream and token as they stand at monotonic time `now`."""
    wall = time.time()
    views: list[UpstreamView] = []
    for upstream in selector.upstreams:
        slots = [s for s in selector.slots if s.upstream is upstream]
        uh = selector.upstream_health[upstream.name]
        panic = selector.upstream_panic[upstream.name]
        broken = uh.state is State.BROKEN
        views.append(
            UpstreamView(
                name=upstream.name,
                type=upstream.kind,
                priority=slots[0].cfg.priority,
                weight=slots[0].cfg.weight,
                models=tuple(upstream.models()),
                state=_upstream_state(uh, panic, now),
                inflight=selector.upstream_inflight[upstream.name],
                consecutive_failures=uh.failures,
                last_error=uh.last_error,
                returns_in_seconds=_returns_in(uh, uh.state, now),
                broken_since=uh.since if broken else None,
                panic_inflight=panic,
                breaker=_breaker(uh.counters, upstream.stale_retries),
                learned=_learned(upstream, now),
                tokens=tuple(_token(s, now, wall) for s in slots),
                tokens_available=sum(1 for s in slots if selector.usable(s, now)),
            )
        )
    return tuple(views)
