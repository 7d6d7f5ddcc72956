"""Tokens and upstreams: health, cooldown, selection, and retrying elsewhere.

Every token of every upstream is a slot. A request takes the best usable slot (lowest
priority group first, then least in-flight per unit of weight), and a failure that is not
the caller's fault moves it to another slot within a bounded number of attempts and an
overall deadline.

Concurrency: the pool runs on one event loop and never awaits between reading a slot's
state and changing it, so selection and bookkeeping are atomic without locks; a slot that
has been benched is never handed out again, however many requests are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from .config import PoolConfig, UpstreamConfig
from .errors import GatewayError, scrub
from .types import Job
from .upstreams.base import FailureKind, Upstream, UpstreamError, UpstreamResult

log = logging.getLogger("gateway.pool")

_BREAKER_KINDS = (
    FailureKind.SERVER_ERROR,
    FailureKind.TIMEOUT,
    FailureKind.CONNECTION,
    FailureKind.MALFORMED,
)


class State(enum.Enum):
    """A token's (or an upstream's) health."""

    OK = "ok"
    COOLING = "cooling"  # rate-limited: back after retry-after / backoff
    BENCHED = "benched"  # bad token or no balance: back after a long bench, then re-checked
    BROKEN = "broken"  # too many server errors in a row: back after a probe succeeds


def token_id(token: str) -> str:
    """A stable, non-reversible id for a token, safe for logs, metrics and admin output."""
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass
class Health:
    """Breaker state shared by slots and upstreams."""

    state: State = State.OK
    until: float = 0.0  # monotonic time the current state ends
    since: float = field(default_factory=time.time)  # wall time the current state began
    failures: int = 0  # consecutive failures that count towards the breaker
    rate_limits: int = 0  # consecutive 429s, for exponential backoff
    probing: bool = False  # a trial request is in flight after the state ended
    last_error: str | None = None
    last_error_at: float | None = None

    def blocked(self, now: float) -> bool:
        """True while the state keeps traffic away (or a probe is already out)."""
        if self.state is State.OK:
            return False
        if now < self.until:
            return True
        # Cooling ends by itself; benched and broken need one good answer first.
        return self.state is not State.COOLING and self.probing

    def needs_probe(self, now: float) -> bool:
        """True when the state has run out and the next request is a trial."""
        return self.state in (State.BENCHED, State.BROKEN) and now >= self.until

    def enter(self, state: State, until: float) -> bool:
        """Switch state; True if this is a change (worth logging)."""
        changed = self.state is not state
        if changed:
            self.since = time.time()
        self.state, self.until, self.probing = state, until, False
        return changed

    def fail(self, threshold: int, until: float) -> bool:
        """Count a failure towards the breaker; it opens at the threshold, or at once when
        the failure was a probe's. True when it has just opened (worth logging)."""
        self.failures += 1
        if self.failures >= threshold or self.probing:
            return self.enter(State.BROKEN, until)
        self.probing = False
        return False

    def ok(self) -> None:
        """A good answer: reset everything."""
        if self.state is not State.OK:
            self.since = time.time()
        self.state, self.until, self.probing = State.OK, 0.0, False
        self.failures = 0
        self.rate_limits = 0


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


class NoCapacity(GatewayError):
    """Nothing usable is left for this request; retry-after says when something returns."""


@dataclass
class Attempt:
    """What one call to one slot came to (for metrics)."""

    upstream: str
    outcome: str
    seconds: float


# The attempts made for the caller request being served, when the API layer wants them for
# its usage record: it puts a list here, and the tasks the request starts share that list.
request_attempts: ContextVar[list[Attempt] | None] = ContextVar("request_attempts", default=None)


class Pool:
    """All slots of all upstreams, with selection and retries."""

    def __init__(
        self,
        upstreams: Sequence[tuple[Upstream, UpstreamConfig]],
        cfg: PoolConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_attempt: Callable[[Attempt], None] | None = None,
        on_retry: Callable[[str], None] | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        # Upstream error text is shown on /admin: scrub it of every configured secret.
        self._secrets = (*secrets, *(t for _, c in upstreams for t in c.tokens))
        self._on_attempt = on_attempt or (lambda a: None)
        self._on_retry = on_retry or (lambda r: None)
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

    # ------------------------------------------------------------------ selection

    def candidates(self, job: Job) -> list[Slot]:
        """Slots whose upstream can honour the job; 400 naming the parameter if none can."""
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
                raise GatewayError(
                    400,
                    f"No configured upstream serves model '{job.model}' ({reason}).",
                    param="model",
                    code="model_not_available",
                )
            raise GatewayError(
                400, f"No configured upstream can do this request: {reason}.", param=param
            )
        return [s for s in self.slots if s.upstream.name in able]

    def max_count_per_call(self, job: Job) -> int:
        """Images one call may ask for, for whichever candidate ends up serving it."""
        names = {s.upstream.name for s in self.candidates(job)}
        return min(u.max_count_per_call for u in self.upstreams if u.name in names)

    def _usable(self, slot: Slot, now: float) -> bool:
        up = self.upstream_health[slot.upstream.name]
        if up.blocked(now) or slot.health.blocked(now) or slot.full():
            return False
        # A broken upstream whose time is up takes one probe at a time.
        return not (up.needs_probe(now) and self.upstream_inflight[slot.upstream.name] > 0)

    def _pick(self, slots: list[Slot], now: float) -> Slot | None:
        usable = [s for s in slots if self._usable(s, now)]
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

    def _release(self, slot: Slot) -> None:
        slot.inflight -= 1
        self.upstream_inflight[slot.upstream.name] -= 1
        self._released.set()

    def _no_capacity(self, slots: list[Slot], now: float) -> NoCapacity:
        waits: list[float] = []
        only_rate_limited = True
        for s in slots:
            up = self.upstream_health[s.upstream.name]
            until = max(s.health.until, up.until)
            waits.append(max(0.0, until - now))
            blocking = [h for h in (s.health, up) if h.state is not State.OK]
            if not blocking or any(h.state is not State.COOLING for h in blocking):
                only_rate_limited = False
        retry_after = max(1, math.ceil(min(waits))) if waits else 1
        if only_rate_limited:
            return NoCapacity(
                429,
                f"Every upstream token is rate-limited right now; retry after {retry_after} s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(retry_after)},
            )
        return NoCapacity(
            503,
            "No upstream token is available right now (all are benched, broken or cooling "
            f"down); the earliest returns in about {retry_after} s.",
            type="server_error",
            code="upstreams_unavailable",
            headers={"retry-after": str(retry_after)},
        )

    async def _acquire(self, slots: list[Slot], tried: set[int], deadline: float) -> Slot:
        while True:
            now = self._clock()
            fresh = [s for s in slots if id(s) not in tried]
            slot = self._pick(fresh, now) or self._pick(slots, now)
            if slot is not None:
                self._take(slot, now)
                return slot
            if not any(s.full() for s in slots if not self._blocked_by_health(s, now)):
                raise self._no_capacity(slots, now)
            # Only concurrency caps stand in the way: wait for a release, not an error.
            self._released.clear()
            remaining = deadline - now
            if remaining <= 0:
                raise GatewayError(
                    504,
                    "Timed out waiting for a free upstream token.",
                    type="server_error",
                    code="upstream_timeout",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout=min(remaining, 1.0))

    def _blocked_by_health(self, slot: Slot, now: float) -> bool:
        return slot.health.blocked(now) or self.upstream_health[slot.upstream.name].blocked(now)

    # ------------------------------------------------------------------ running

    async def run(self, job: Job, deadline: float) -> tuple[UpstreamResult, Slot]:
        """Run a job on the best slot, moving to others on failures that aren't the caller's.

        `deadline` is a monotonic time. Raises UpstreamError for the caller's faults and for
        the last failure when attempts run out, NoCapacity when nothing is usable.
        """
        slots = self.candidates(job)
        tried: set[int] = set()
        last: UpstreamError | None = None
        for attempt in range(self.cfg.max_attempts):
            if attempt:
                self._on_retry(last.kind.value if last else "unknown")
                if len(tried) >= len(slots):
                    # Every slot has had a go: give a transient fault a moment before the
                    # same slot is asked again.
                    await asyncio.sleep(
                        min(self.cfg.retry_backoff_seconds * 2 ** (attempt - 1), 2.0)
                    )
            # Raises NoCapacity (503/429 with retry-after) once every slot is out.
            slot = await self._acquire(slots, tried, deadline)
            tried.add(id(slot))
            started = self._clock()
            try:
                remaining = deadline - started
                if remaining <= 0:
                    raise UpstreamError(FailureKind.TIMEOUT, "the request's deadline passed")
                async with asyncio.timeout(remaining):
                    result = await slot.upstream.run(job, slot.token)
            except TimeoutError:
                err = UpstreamError(
                    FailureKind.TIMEOUT,
                    f"{slot.upstream.name}: no answer within the request's deadline",
                )
                self._failed(slot, err, started)
                raise err from None
            except UpstreamError as err:
                self._failed(slot, err, started)
                if err.kind.callers_fault:
                    raise
                last = err
                if self._clock() >= deadline:
                    break
                continue
            except asyncio.CancelledError:
                # The caller went away: no verdict on the token.
                raise
            except Exception as exc:  # a bug in a provider module must not lose the request
                log.exception("upstream %s raised unexpectedly", slot.upstream.name)
                bug = UpstreamError(
                    FailureKind.MALFORMED, f"{slot.upstream.name}: {type(exc).__name__}"
                )
                self._failed(slot, bug, started)
                last = bug
                continue
            finally:
                self._release(slot)
            self._succeeded(slot, started)
            return result, slot
        assert last is not None
        raise last

    # ------------------------------------------------------------------ verdicts

    def _succeeded(self, slot: Slot, started: float) -> None:
        slot.health.ok()
        slot.served += 1
        self.upstream_health[slot.upstream.name].ok()
        self._report(Attempt(slot.upstream.name, "ok", self._clock() - started))

    def _report(self, attempt: Attempt) -> None:
        self._on_attempt(attempt)
        attempts = request_attempts.get()
        if attempts is not None:
            attempts.append(attempt)

    def _failed(self, slot: Slot, err: UpstreamError, started: float) -> None:
        now = self._clock()
        self._report(Attempt(slot.upstream.name, err.kind.value, now - started))
        h = slot.health
        up = self.upstream_health[slot.upstream.name]
        detail = scrub(err.message, self._secrets)
        h.last_error = f"{err.kind.value}: {err.code or err.status or ''} {detail}"[:300]
        h.last_error_at = time.time()
        kind = err.kind
        if kind.callers_fault:
            # The upstream answered sensibly: it is alive, and so is the token.
            h.ok()
            up.ok()
            return
        if kind in (FailureKind.AUTH, FailureKind.BALANCE):
            if h.enter(State.BENCHED, now + self.cfg.bench_seconds):
                log.warning(
                    "token benched: upstream=%s token=%s reason=%s for=%ss",
                    slot.upstream.name,
                    slot.id,
                    kind.value,
                    int(self.cfg.bench_seconds),
                )
            up.probing = False
            return
        if kind is FailureKind.RATE_LIMITED:
            h.rate_limits += 1
            wait = err.retry_after
            if wait is None:
                wait = self.cfg.cooldown_seconds * 2 ** (h.rate_limits - 1)
            wait = min(wait, self.cfg.cooldown_max_seconds)
            h.enter(State.COOLING, now + wait)
            up.probing = False
            return
        # Server errors, timeouts, broken connections and unreadable answers: breakers.
        until = now + self.cfg.breaker_seconds
        if h.fail(self.cfg.breaker_threshold, until):
            log.warning(
                "token broken: upstream=%s token=%s after %d failures (%s)",
                slot.upstream.name, slot.id, h.failures, kind.value,
            )  # fmt: skip
        up.last_error, up.last_error_at = h.last_error, h.last_error_at
        if up.fail(self.cfg.upstream_breaker_threshold, until):
            log.warning(
                "upstream broken: %s after %d failures in a row (%s)",
                slot.upstream.name, up.failures, kind.value,
            )  # fmt: skip

    # ------------------------------------------------------------------ visibility

    def token_state(self, slot: Slot, now: float | None = None) -> State:
        """The state to show: a cooled-down token reads 'ok' once its time is up."""
        now = self._clock() if now is None else now
        if slot.health.state is State.COOLING and now >= slot.health.until:
            return State.OK
        return slot.health.state

    def usable(self) -> bool:
        """At least one slot could take a request now (for /readyz)."""
        now = self._clock()
        return any(
            not self._blocked_by_health(s, now) or s.health.needs_probe(now) for s in self.slots
        )

    def snapshot(self) -> list[dict[str, object]]:
        """Upstreams and their tokens (ids only) for /admin/upstreams."""
        now = self._clock()
        wall = time.time()
        out: list[dict[str, object]] = []
        for upstream in self.upstreams:
            uh = self.upstream_health[upstream.name]
            tokens = []
            for s in (s for s in self.slots if s.upstream is upstream):
                h = s.health
                state = self.token_state(s, now)
                tokens.append(
                    {
                        "id": s.id,
                        "index": s.index,
                        "state": state.value,
                        "inflight": s.inflight,
                        "max_concurrency": s.cfg.max_concurrency,
                        "served": s.served,
                        "consecutive_failures": h.failures,
                        "last_error": h.last_error,
                        "last_error_at": h.last_error_at,
                        "since": h.since,
                        "returns_at": wall + (h.until - now)
                        if state is not State.OK and h.until > now
                        else None,
                        "returns_in_seconds": round(h.until - now, 3)
                        if state is not State.OK and h.until > now
                        else None,
                    }
                )
            out.append(
                {
                    "name": upstream.name,
                    "type": upstream.kind,
                    "priority": next(s.cfg.priority for s in self.slots if s.upstream is upstream),
                    "weight": next(s.cfg.weight for s in self.slots if s.upstream is upstream),
                    "models": list(upstream.models()),
                    "state": uh.state.value,
                    "inflight": self.upstream_inflight[upstream.name],
                    "consecutive_failures": uh.failures,
                    "last_error": uh.last_error,
                    "returns_in_seconds": round(uh.until - now, 3)
                    if uh.state is not State.OK and uh.until > now
                    else None,
                    "tokens": tokens,
                    "tokens_available": sum(
                        1 for s in self.slots if s.upstream is upstream and self._usable(s, now)
                    ),
                }
            )
        return out

    async def aclose(self) -> None:
        """Close every upstream's client."""
        for upstream in self.upstreams:
            await upstream.aclose()
