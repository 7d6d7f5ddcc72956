"""The health state machine of a token and of an upstream, and the verdict an attempt's
outcome brings. Failures are blamed on what explains them:

    token     --401/403 balance--> benched --bench_seconds--> (one trial) --ok--> ok
    token     --429--> cooling --retry-after / backoff--> ok
    upstream  --N provider failures in a row--> broken --probe_interval, doubling up to
              breaker_seconds--> (one trial at a time) --ok--> ok
    token     --M provider failures in a row while its siblings succeed (not failed
              connections, which say nothing of a token)--> broken (as above)

Provider failures (5xx, timeouts, refused or reset connections, unreadable answers) say
nothing about a token when every token of the upstream sees them: a blip of the provider
must not bench the pool's keys. A broken upstream is never left alone for long: it takes a
trial call at a short interval, and when nothing healthy is left the selector routes to it
anyway (panic, see select.py), so service resumes as soon as the provider does.

The caller's own faults (a bad request, a safety refusal) and token-side refusals (401,
429) are answers from a live provider: they reset the upstream's count.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from dataclasses import dataclass, field

from ..config import PoolConfig
from ..errors import scrub
from ..upstreams.base import FailureKind, UpstreamError

log = logging.getLogger("gateway.pool")

# An upstream that trips again within this long of its last recovery waits longer for its
# first trial (doubling per trip, up to breaker_seconds): a flapping provider gets fewer
# wasted calls, a provider with one bad minute a month is probed at the shortest interval.
FLAP_WINDOW_SECONDS = 60.0


class State(enum.Enum):
    """A token's (or an upstream's) health, and the two phases shown of a broken one."""

    OK = "ok"
    COOLING = "cooling"  # rate-limited: back after retry-after / backoff
    BENCHED = "benched"  # bad token or no balance: back after a long bench, then re-checked
    BROKEN = "broken"  # provider failures in a row: out until a trial call succeeds
    PROBING = "probing"  # shown only: broken, and its trial call is due or out
    PANIC = "panic"  # shown only: broken, yet taking calls since nothing healthy is left


def token_id(token: str) -> str:
    """A stable, non-reversible id for a token, safe for logs, metrics and admin output."""
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass
class Counters:
    """What an upstream's (or token's) breaker has done since start, for metrics."""

    ejections: int = 0
    trials_ok: int = 0
    trials_failed: int = 0  # trial and panic calls to it while broken, by how they ended
    panic_calls: int = 0
    recoveries: int = 0
    outage_seconds: float = 0.0
    last_outage_seconds: float | None = None


@dataclass
class Health:
    """The state of one token or one upstream. Times are monotonic unless named wall."""

    state: State = State.OK
    until: float = 0.0  # the current state ends (cooling, benched) / the next trial is due
    since: float = field(default_factory=time.time)  # wall time the current state began
    failures: int = 0  # consecutive provider failures
    streak_start: float = 0.0  # when the current run of failures began
    rate_limits: int = 0  # consecutive 429s, for exponential backoff
    probing: bool = False  # a trial call is out
    last_ok: float = float("-inf")
    last_failure: float = float("-inf")
    last_error: str | None = None
    last_error_at: float | None = None  # wall time
    broken_at: float = 0.0
    trials_failed: int = 0  # failed trials in the current outage: the next one waits longer
    trips: int = 0  # ejections in a row, each within FLAP_WINDOW of the last recovery
    recovered_at: float = float("-inf")
    counters: Counters = field(default_factory=Counters)

    def blocked(self, now: float) -> bool:
        """True while the state keeps ordinary traffic away (or its trial is out)."""
        if self.state is State.OK:
            return False
        if now < self.until:
            return True
        # Cooling ends by itself; benched and broken need one good answer first.
        return self.state is not State.COOLING and self.probing

    def needs_probe(self, now: float) -> bool:
        """True when the state has run out and the next call is a trial."""
        return self.state in (State.BENCHED, State.BROKEN) and now >= self.until

    def token_side(self, now: float) -> bool:
        """Benched, or cooling still: out for what only the token explains."""
        return self.state is State.BENCHED or (self.state is State.COOLING and now < self.until)

    def shown(self, now: float) -> State:
        """The state to show: a cooled-down token reads 'ok' once its time is up."""
        if self.state is State.COOLING and now >= self.until:
            return State.OK
        return self.state

    def enter(self, state: State, until: float) -> bool:
        """Switch state; True if this is a change (worth logging)."""
        changed = self.state is not state
        if changed:
            self.since = time.time()
        self.state, self.until, self.probing = state, until, False
        return changed

    def ok(self, now: float) -> float | None:
        """A good answer: reset everything. The outage's length if it was broken."""
        outage = None
        if self.state is State.BROKEN:
            outage = now - self.broken_at
            self.counters.recoveries += 1
            self.counters.outage_seconds += outage
            self.counters.last_outage_seconds = outage
            self.recovered_at = now
        if self.state is not State.OK:
            self.since = time.time()
        self.state, self.until, self.probing = State.OK, 0.0, False
        self.failures = self.rate_limits = self.trials_failed = 0
        self.last_ok = now
        return outage

    def fail(self, now: float) -> None:
        """Count one provider failure."""
        if self.failures == 0:
            self.streak_start = now
        self.failures += 1
        self.last_failure = now

    def trip(self, now: float, cfg: PoolConfig) -> None:
        """Open the breaker: out until a trial succeeds, the first one due soon."""
        if now - self.recovered_at > FLAP_WINDOW_SECONDS:
            self.trips = 0  # healthy long enough since the last outage: start short again
        self.trips += 1
        self.counters.ejections += 1
        self.broken_at = now
        self.trials_failed = 0
        self.enter(State.BROKEN, now + self._trial_wait(cfg))

    def trial_failed(self, now: float, cfg: PoolConfig) -> None:
        """A trial (or panic) call failed: the next trial waits twice as long, capped."""
        self.trials_failed += 1
        self.counters.trials_failed += 1
        self.until, self.probing = now + self._trial_wait(cfg), False

    def _trial_wait(self, cfg: PoolConfig) -> float:
        """probe_interval, doubled per trip in a row and per failed trial, capped."""
        wait = cfg.probe_interval_seconds * 2 ** (self.trips - 1 + self.trials_failed)
        return min(wait, cfg.breaker_seconds)


@dataclass(frozen=True)
class Lease:
    """What a call was to its slot's health: a trial of the token, of the upstream, or a
    panic call (sent to a broken upstream because nothing healthy was left)."""

    token_trial: bool = False
    upstream_trial: bool = False
    panic: bool = False


class Verdicts:
    """Applies what an attempt came to to the token's and its upstream's health."""

    def __init__(self, cfg: PoolConfig, secrets: tuple[str, ...]) -> None:
        self._cfg = cfg
        # Upstream error text is shown on /admin: scrub it of every configured secret.
        self._secrets = secrets

    def succeeded(
        self, token: Health, upstream: Health, lease: Lease, now: float, names: tuple[str, str]
    ) -> None:
        """A good answer: both are healthy again."""
        token.ok(now)
        self._alive(upstream, lease, now, names[0])

    def _alive(self, upstream: Health, lease: Lease, now: float, name: str) -> None:
        """The provider answered sensibly: whatever its breaker said, it is back."""
        if upstream.state is State.BROKEN and (lease.upstream_trial or lease.panic):
            upstream.counters.trials_ok += 1
        trials = upstream.trials_failed
        outage = upstream.ok(now)
        if outage is not None:
            log.warning(
                "upstream recovered: %s after %.1f s out (%d failed trials)", name, outage, trials
            )

    def failed(
        self,
        token: Health,
        upstream: Health,
        err: UpstreamError,
        lease: Lease,
        now: float,
        names: tuple[str, str],
    ) -> None:
        """A failed attempt; `names` are the upstream's name and the token's id, for the log."""
        detail = scrub(err.message, self._secrets)
        token.last_error = f"{err.kind.value}: {err.code or err.status or ''} {detail}"[:300]
        token.last_error_at = time.time()
        kind = err.kind
        if kind.callers_fault or kind is FailureKind.UNSUPPORTED:
            # The upstream answered sensibly: it is alive, and so is the token.
            token.ok(now)
            self._alive(upstream, lease, now, names[0])
        elif not kind.providers_fault:  # auth, balance, rate limited: the token's
            self._token_refused(token, err, now, names)
            self._alive(upstream, lease, now, names[0])
        else:
            upstream.last_error, upstream.last_error_at = token.last_error, token.last_error_at
            self._provider_failed(token, upstream, kind, lease, now, names)

    def _token_refused(
        self, token: Health, err: UpstreamError, now: float, names: tuple[str, str]
    ) -> None:
        """What only this token explains: bench it, or cool it down."""
        cfg = self._cfg
        if err.kind is FailureKind.RATE_LIMITED:
            token.rate_limits += 1
            wait = err.retry_after
            if wait is None:
                wait = cfg.cooldown_seconds * 2 ** (token.rate_limits - 1)
            token.enter(State.COOLING, now + min(wait, cfg.cooldown_max_seconds))
            return
        if token.enter(State.BENCHED, now + cfg.bench_seconds):
            log.warning(
                "token benched: upstream=%s token=%s reason=%s for=%ss",
                *names, err.kind.value, int(cfg.bench_seconds),
            )  # fmt: skip

    def _provider_failed(
        self,
        token: Health,
        upstream: Health,
        kind: FailureKind,
        lease: Lease,
        now: float,
        names: tuple[str, str],
    ) -> None:
        """5xx, timeouts, broken connections, unreadable answers: the provider's failure,
        counted against the upstream; against the token only when its siblings succeed."""
        cfg = self._cfg
        token.fail(now)
        if token.state is State.BROKEN:
            if lease.token_trial:
                token.trial_failed(now, cfg)
        elif (
            kind is not FailureKind.CONNECTION
            and token.failures >= cfg.breaker_threshold
            and upstream.last_ok > token.streak_start
        ):
            # Another token of this upstream succeeded while this one kept failing: the
            # token is what explains it. Not a connection that failed, though: that says
            # nothing of the token sent over it (a provider restarting refuses new
            # connections while it finishes the calls it has, on whichever tokens).
            token.trip(now, cfg)
            log.warning(
                "token broken: upstream=%s token=%s after %d failures while its siblings "
                "succeed (%s)",
                *names, token.failures, kind.value,
            )  # fmt: skip
        upstream.fail(now)
        if upstream.state is State.BROKEN:
            # Calls already in flight when it broke say nothing new; a failed trial does.
            if lease.upstream_trial or lease.panic:
                upstream.trial_failed(now, cfg)
        elif upstream.failures >= cfg.upstream_breaker_threshold:
            upstream.trip(now, cfg)
            log.warning(
                "upstream broken: %s after %d failures in a row (%s); next trial in %.1f s",
                names[0], upstream.failures, kind.value, upstream.until - now,
            )  # fmt: skip
