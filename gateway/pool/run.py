"""Running a job on the pool: the best slot, and on failures that are not the caller's,
another one, within a bounded number of attempts and the request's deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..config import PoolConfig, UpstreamConfig
from ..errors import DomainError, scrub
from ..state.redis import RedisLink
from ..types import Attempt, Job
from ..upstreams.base import FailureKind, Upstream, UpstreamError, UpstreamResult
from ..upstreams.forms import REMEMBER_SECONDS, Field
from .health import Verdicts
from .select import Selector, Slot, Taken
from .shared import SharedHealth
from .stall import StallWatch
from .view import UpstreamView, pool_view

log = logging.getLogger("gateway.pool")


@dataclass
class Run:
    """A job done: what the upstream made, who made it, and every attempt it took."""

    result: UpstreamResult
    upstream: str
    attempts: list[Attempt]


class Pool:
    """All tokens of all upstreams: selection, retries and health."""

    def __init__(
        self,
        upstreams: Sequence[tuple[Upstream, UpstreamConfig]],
        cfg: PoolConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_attempt: Callable[[Attempt], None] = lambda attempt: None,
        on_retry: Callable[[str], None] = lambda reason: None,
        secrets: Sequence[str] = (),
        redis: RedisLink | None = None,
        sync_seconds: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self._on_attempt = on_attempt
        self._on_retry = on_retry
        self._select = Selector(upstreams, cfg, clock)
        self._stalls = StallWatch(clock)
        self._secrets = (*secrets, *(t for _, c in upstreams for t in c.tokens))
        self._verdicts = Verdicts(cfg, self._secrets)
        self.upstreams = self._select.upstreams
        self._shared = None
        if redis is not None:
            self._shared = SharedHealth(
                redis, self._select.slots, sync_seconds=sync_seconds, clock=clock
            )

    async def start(self) -> None:
        """Adopt the token health other replicas share, and keep doing so."""
        if self._shared is not None:
            await self._shared.start()

    def max_count_per_call(self, job: Job) -> int:
        """Images one upstream call may ask for (ModelUnavailable when none can serve)."""
        return self._select.max_count_per_call(job)

    def answered(self, run: Run, job: Job) -> None:
        """A call asked for `job.count` images and `run` holds what came back: an upstream
        that returned fewer is asked for at most that many per call from now on (it makes
        one image per call whatever `count` says, say), so the rest go out in parallel."""
        got = len(run.result.images)
        for upstream in self.upstreams:
            if upstream.name == run.upstream and upstream.capacity.answered(
                job.model, job.count, got
            ):
                log.warning(
                    "upstream %s returned %d of %d images for %s: asking it for at most %d "
                    "per call from now on",
                    upstream.name, got, job.count, job.model, got,
                )  # fmt: skip

    def run(self, job: Job, deadline: float) -> Awaitable[Run]:
        """Run a job on the best slot, moving to others on failures that aren't the caller's.

        `deadline` is a monotonic time. Raises UpstreamError for the caller's faults and for
        the last failure when attempts run out, NoCapacity when nothing is usable; each with
        the attempts made in `attempts`. (The attempts' own coroutine, handed back rather
        than awaited here: one frame fewer for every waiting request to hold.)
        """
        self._stalls.ensure_running()
        return self._attempts(job, deadline)

    async def _attempts(self, job: Job, deadline: float) -> Run:
        attempts: list[Attempt] = []
        try:
            slots = self._select.candidates(job)
            tried: set[int] = set()
            last: UpstreamError | None = None
            for attempt in range(self.cfg.max_attempts):
                if attempt:
                    self._on_retry(last.kind.value if last else "unknown")
                    if all(id(s) in tried for s in slots):
                        # Every slot has had a go: give a transient fault a moment before the
                        # same slot is asked again.
                        await asyncio.sleep(
                            min(self.cfg.retry_backoff_seconds * 2 ** (attempt - 1), 2.0)
                        )
                # Raises NoCapacity (with when the first returns) once every slot is out.
                taken = await self._select.acquire(slots, tried, deadline)
                tried.add(id(taken.slot))
                started = self._clock()
                try:
                    result = await self._call(taken, job, deadline - started)
                except TimeoutError:
                    err = UpstreamError(
                        FailureKind.TIMEOUT,
                        f"{taken.slot.upstream.name}: no answer within the request's deadline",
                    )
                    attempts.append(self._failed(taken, err, started))
                    raise err from None
                except UpstreamError as err:
                    attempts.append(self._failed(taken, err, started))
                    if err.kind.callers_fault:
                        raise
                    if err.kind is FailureKind.UNSUPPORTED:
                        slots = self._refused(taken, job, err, slots)
                    last = err
                    if self._clock() >= deadline:
                        break
                    continue
                except asyncio.CancelledError:
                    raise  # the caller went away: no verdict on the token
                else:
                    attempts.append(self._succeeded(taken, started))
                    return Run(result, taken.slot.upstream.name, attempts)
                finally:
                    self._select.release(taken)
            assert last is not None
            raise last
        except DomainError as err:
            err.attempts = tuple(attempts)
            raise

    def _refused(self, taken: Taken, job: Job, err: UpstreamError, slots: list[Slot]) -> list[Slot]:
        """The upstream refused a field the gateway chose: it remembers that (later requests
        skip it or leave the field out), and this request goes on without it, or to it in
        another form; re-raised when no upstream is left."""
        upstream = taken.slot.upstream
        field = Field.named(err.param) or Field.MODEL
        reason = scrub(err.message, self._secrets)
        if upstream.refusals.add(job.model, field, reason, self._clock()):
            log.warning(
                "upstream %s refuses %s for %s (%s); such requests go elsewhere for %d s",
                upstream.name, field.value, job.model, reason[:120], REMEMBER_SECONDS,
            )  # fmt: skip
        if upstream.cannot_serve(job) is None:
            return slots  # it can take the job in another form (uploads as links, say)
        rest = [s for s in slots if s.upstream is not upstream]
        if not rest:
            raise err
        return rest

    async def _call(self, taken: Taken, job: Job, remaining: float) -> UpstreamResult:
        """One call within what is left of the deadline: its result, an UpstreamError for
        every failure of the upstream's, TimeoutError when the deadline ran out."""
        slot = taken.slot
        upstream = slot.upstream
        if remaining <= 0:
            raise UpstreamError(FailureKind.TIMEOUT, "the request's deadline passed")
        try:
            bound = upstream.run_seconds
            if bound is not None and bound < remaining:
                # The upstream's own bound ends the run before the deadline could: no
                # second timer for every waiting call (one costs ~0.7 KiB on uvloop).
                return await upstream.run(job, slot.token)
            async with asyncio.timeout(remaining):
                return await upstream.run(job, slot.token)
        except (UpstreamError, TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug in a provider module must not lose the request
            log.exception("upstream %s raised unexpectedly", upstream.name)
            raise UpstreamError(
                FailureKind.MALFORMED, f"{upstream.name}: {type(exc).__name__}"
            ) from None

    def _succeeded(self, taken: Taken, started: float) -> Attempt:
        slot, now = taken.slot, self._clock()
        upstream = self._select.upstream_health[slot.upstream.name]
        names = (slot.upstream.name, slot.id)
        self._verdicts.succeeded(slot.health, upstream, taken.lease, now, names)
        if self._shared is not None:
            self._shared.observe(slot)
        slot.served += 1
        return self._report(Attempt(slot.upstream.name, "ok", now - started))

    def _failed(self, taken: Taken, err: UpstreamError, started: float) -> Attempt:
        slot, now = taken.slot, self._clock()
        attempt = self._report(Attempt(slot.upstream.name, err.kind.value, now - started))
        if err.kind.providers_fault and self._stalls.explains(started, now):
            return attempt  # our own pause, not the provider's failure: no verdict
        upstream = self._select.upstream_health[slot.upstream.name]
        names = (slot.upstream.name, slot.id)
        self._verdicts.failed(slot.health, upstream, err, taken.lease, now, names)
        if self._shared is not None:
            self._shared.observe(slot)
        return attempt

    def _report(self, attempt: Attempt) -> Attempt:
        self._on_attempt(attempt)
        return attempt

    # ------------------------------------------------------------------ visibility

    def usable(self) -> bool:
        """At least one slot could take a request now, by trial or in panic (for /readyz):
        a provider's outage does not take the replicas out of their Service, where callers
        would get connection errors instead of an OpenAI-shaped answer."""
        now = self._clock()
        select = self._select
        return any(select.servable(s, now) for s in select.slots)

    def view(self) -> tuple[UpstreamView, ...]:
        """Every upstream and token as they stand now."""
        return pool_view(self._select, self._clock())

    async def aclose(self) -> None:
        """Stop sharing health; close every upstream's client."""
        if self._shared is not None:
            await self._shared.aclose()
        await self._stalls.aclose()
        for upstream in self.upstreams:
            await upstream.aclose()

    def capacity(self) -> tuple[int, int]:
        """(call slots of the usable tokens, calls in flight on them): a token's slots are
        its max_concurrency, or 1,000 with none (then never the limiting factor). The
        batch runner starts a line only while enough are left for interactive requests."""
        now = self._clock()
        select = self._select
        slots = busy = 0
        for slot in select.slots:
            if select.usable(slot, now):
                cap = slot.cfg.max_concurrency
                slots += 1_000 if cap is None else cap
                busy += slot.inflight
        return slots, busy
