"""The health state machine of a token (and of an upstream), and the verdict an attempt's
outcome brings.

    ok --401/403 balance--> benched --bench_seconds--> (one probe) --ok--> ok
    ok --429--> cooling --retry-after / backoff--> ok
    ok --N server errors, timeouts, bad answers--> broken --breaker_seconds--> (one probe)

The caller's own faults (a bad request, a safety refusal) say the token and the upstream
are alive: they reset both.
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
    """Breaker state shared by tokens and upstreams."""

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


class Verdicts:
    """Applies what an attempt came to to the token's and its upstream's health."""

    def __init__(self, cfg: PoolConfig, secrets: tuple[str, ...]) -> None:
        self._cfg = cfg
        # Upstream error text is shown on /admin: scrub it of every configured secret.
        self._secrets = secrets

    def succeeded(self, token: Health, upstream: Health) -> None:
        """A good answer: both are healthy again."""
        token.ok()
        upstream.ok()

    def failed(
        self,
        token: Health,
        upstream: Health,
        err: UpstreamError,
        now: float,
        names: tuple[str, str],
    ) -> None:
        """A failed attempt; `names` are the upstream's name and the token's id, for the log."""
        cfg = self._cfg
        detail = scrub(err.message, self._secrets)
        token.last_error = f"{err.kind.value}: {err.code or err.status or ''} {detail}"[:300]
        token.last_error_at = time.time()
        kind = err.kind
        if kind.callers_fault:
            # The upstream answered sensibly: it is alive, and so is the token.
            token.ok()
            upstream.ok()
            return
        if kind in (FailureKind.AUTH, FailureKind.BALANCE):
            if token.enter(State.BENCHED, now + cfg.bench_seconds):
                log.warning(
                    "token benched: upstream=%s token=%s reason=%s for=%ss",
                    *names, kind.value, int(cfg.bench_seconds),
                )  # fmt: skip
            upstream.probing = False
            return
        if kind is FailureKind.RATE_LIMITED:
            token.rate_limits += 1
            wait = err.retry_after
            if wait is None:
                wait = cfg.cooldown_seconds * 2 ** (token.rate_limits - 1)
            token.enter(State.COOLING, now + min(wait, cfg.cooldown_max_seconds))
            upstream.probing = False
            return
        # Server errors, timeouts, broken connections and unreadable answers: breakers.
        until = now + cfg.breaker_seconds
        if token.fail(cfg.breaker_threshold, until):
            log.warning(
                "token broken: upstream=%s token=%s after %d failures (%s)",
                *names, token.failures, kind.value,
            )  # fmt: skip
        upstream.last_error, upstream.last_error_at = token.last_error, token.last_error_at
        if upstream.fail(cfg.upstream_breaker_threshold, until):
            log.warning(
                "upstream broken: %s after %d failures in a row (%s)",
                names[0], upstream.failures, kind.value,
            )  # fmt: skip
