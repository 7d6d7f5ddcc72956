"""Every Prometheus metric the gateway exports, defined in one place.

Labels are bounded sets taken from configuration or from fixed vocabularies: client names
(plus "anonymous" and "unknown"), upstream names (plus "cache"), the known model names
(plus "unknown"), HTTP status codes the gateway answers with, cache results, outcomes,
limit names and redacted token ids. Never a prompt, a key, a URL or a token.

The counters are fed by the meter (meter.py); the collectors below read state fresh at
each scrape and are registered by app.py.

Each process exports its own counters: run one uvicorn worker per process and scale with
processes or replicas, each scraped as its own target (Prometheus sums them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..admission.limits import Limiter
    from ..pool import Pool, UpstreamView

# Image calls take from a fraction of a second (a cache hit, a refusal) to minutes (4K images
# at a slow provider): 0.1 s to 10 min, the OpenAI SDK's own timeout.
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
_STATES = ("ok", "cooling", "benched", "broken")
_UPSTREAM_STATES = ("ok", "broken", "probing", "panic")


class Metrics:
    """The gateway's metrics, on a registry of its own (so several apps can live in one
    process, as they do in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "nano_banana_requests_total",
            "Caller image requests answered, by endpoint, client, model, HTTP status and "
            "cache result (hit, miss, coalesced, bypass, off).",
            ["endpoint", "client", "model", "status", "cache"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "nano_banana_request_duration_seconds",
            "Time to answer a caller image request (to the last byte of a stream).",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.images_requested = Counter(
            "nano_banana_images_requested_total",
            "Images asked for (n) by admitted requests, by client and model.",
            ["client", "model"],
            registry=r,
        )
        self.images = Counter(
            "nano_banana_images_total",
            "Images handed to callers, by client, model and the upstream that made them "
            '("cache" when served from the identical-request cache).',
            ["client", "model", "upstream"],
            registry=r,
        )
        self.cost = Counter(
            "nano_banana_cost_usd_total",
            "Estimated cost in USD of the images upstreams made for callers, from [prices].",
            ["client", "model"],
            registry=r,
        )
        self.cost_saved = Counter(
            "nano_banana_cost_saved_usd_total",
            "Estimated cost in USD of images served from the cache instead of an upstream.",
            ["client", "model"],
            registry=r,
        )
        self.rate_limited = Counter(
            "nano_banana_rate_limited_total",
            "Requests refused with 429 because a client was over one of its limits.",
            ["client", "limit"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "nano_banana_upstream_requests_total",
            "Calls to upstreams, by outcome (ok, bad_request, safety, auth, balance, "
            "rate_limited, server_error, timeout, connection, malformed).",
            ["upstream", "outcome"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "nano_banana_upstream_request_duration_seconds",
            "Time one upstream call took, polling included.",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "nano_banana_retries_total",
            "Requests moved to another token or upstream, by the failure that moved them.",
            ["reason"],
            registry=r,
        )
        self.inflight = Gauge(
            "nano_banana_inflight_requests",
            "Caller requests being worked on now.",
            registry=r,
        )

        self.cache_requests = Counter(
            "nano_banana_cache_requests_total",
            "Image requests by how the cache answered: hit, miss, coalesced (waited for an "
            "identical request in flight), bypass (no-store, client opt-out, unreadable input).",
            ["result"],
            registry=r,
        )
        self.cache_calls_saved = Counter(
            "nano_banana_cache_upstream_calls_saved_total",
            "Upstream calls not made because a hit or a coalesced wait answered instead.",
            registry=r,
        )
        self.cache_evictions = Counter(
            "nano_banana_cache_evictions_total",
            "Entries dropped from the in-process cache, by reason (size, expired).",
            ["reason"],
            registry=r,
        )
        self.redis_errors = Counter(
            "nano_banana_redis_errors_total",
            "Shared-Redis operations that failed or timed out, by operation (the cache, "
            "the limits and the token health fell back to what this process knows).",
            ["operation"],
            registry=r,
        )


class LimitsCollector(Collector):
    """Each client's configured limits and its use of them, read at each scrape: every
    replica's use when the limits are shared through Redis, this process's otherwise."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        configured = GaugeMetricFamily(
            "nano_banana_client_limit",
            "Each client's configured limits (requests_per_minute, images_per_day, "
            "budget_usd_per_day, max_concurrent_requests).",
            labels=["client", "limit"],
        )
        used = GaugeMetricFamily(
            "nano_banana_client_limit_usage",
            "Each client's use of each limit now: requests in the last minute, images and "
            "estimated USD today (UTC), requests in flight (every replica's, when shared).",
            labels=["client", "limit"],
        )
        for client, limit, now, cap in self._limiter.usage():
            used.add_metric([client, limit], float(now))
            if cap is not None:
                configured.add_metric([client, limit], float(cap))
        yield configured
        yield used
        yield CounterMetricFamily(
            "nano_banana_limits_local_admissions",
            "Requests admitted on this process's own counts because the shared Redis was "
            "unreachable (merged back into the shared counts once it answers).",
            value=float(self._limiter.local_admissions),
        )
        trips = self._limiter.redis_round_trips
        if trips is not None:
            yield CounterMetricFamily(
                "nano_banana_limits_redis_round_trips",
                "Round trips to Redis that took or settled client limits (requests that "
                "overlap share them).",
                value=float(trips),
            )


class CacheSize(Protocol):
    """What the cache collector reads."""

    @property
    def nbytes(self) -> int: ...

    @property
    def entries(self) -> int: ...


class CacheCollector(Collector):
    """What the in-process cache holds, read fresh at each scrape."""

    def __init__(self, cache: CacheSize) -> None:
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "nano_banana_cache_bytes",
            "Bytes of images and links held by the in-process cache.",
            value=float(self._cache.nbytes),
        )
        yield GaugeMetricFamily(
            "nano_banana_cache_entries",
            "Results held by the in-process cache.",
            value=float(self._cache.entries),
        )


class RedisState(Protocol):
    """What the Redis collector reads."""

    @property
    def up(self) -> bool: ...


class RedisCollector(Collector):
    """Whether the shared Redis answers; registered only where one is configured, so no
    alert fires without it."""

    def __init__(self, redis: RedisState) -> None:
        self._redis = redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "nano_banana_redis_up",
            "1 while the shared Redis answers, 0 while it is marked down (the replica then "
            "caches, limits and tracks token health on its own).",
            value=1.0 if self._redis.up else 0.0,
        )


class PoolCollector(Collector):
    """The pool's token and upstream state, read from its view at each scrape."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        token_state = GaugeMetricFamily(
            "nano_banana_token_state",
            "1 for each token's current state (ok, cooling, benched, broken).",
            labels=["upstream", "token", "state"],
        )
        token_inflight = GaugeMetricFamily(
            "nano_banana_token_inflight",
            "Calls in flight on each token.",
            labels=["upstream", "token"],
        )
        upstream_state = GaugeMetricFamily(
            "nano_banana_upstream_state",
            "1 for each upstream's breaker state: ok, broken (out, its next trial not yet "
            "due), probing (a trial call due or out), panic (taking calls though broken, "
            "since nothing healthy is left).",
            labels=["upstream", "state"],
        )
        available = GaugeMetricFamily(
            "nano_banana_upstream_tokens_available",
            "Tokens of each upstream that could take a request now.",
            labels=["upstream"],
        )
        breaker = _BreakerFamilies()
        for upstream in self._pool.view():
            for token in upstream.tokens:
                for state in _STATES:
                    token_state.add_metric(
                        [upstream.name, token.id, state], 1.0 if state == token.state.value else 0.0
                    )
                token_inflight.add_metric([upstream.name, token.id], float(token.inflight))
            for state in _UPSTREAM_STATES:
                upstream_state.add_metric(
                    [upstream.name, state], 1.0 if upstream.state.value == state else 0.0
                )
            available.add_metric([upstream.name], float(upstream.tokens_available))
            breaker.add(upstream)
        yield token_state
        yield token_inflight
        yield upstream_state
        yield available
        yield from breaker.families()


class _BreakerFamilies:
    """The breaker's counters, per upstream, from the pool's view."""

    def __init__(self) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["upstream", *labels])

        self.ejections = counter(
            "nano_banana_upstream_ejections", "Times the upstream's breaker opened."
        )
        self.trials = counter(
            "nano_banana_upstream_trials",
            "Trial and panic calls to a broken upstream, by result (ok, failed).",
            ("result",),
        )
        self.recoveries = counter(
            "nano_banana_upstream_recoveries", "Times a broken upstream answered well again."
        )
        self.outage = counter(
            "nano_banana_upstream_outage_seconds",
            "Seconds upstreams spent broken, counted when each outage ends.",
        )
        self.panic = counter(
            "nano_banana_upstream_panic_calls",
            "Calls sent to a broken upstream because no healthy one was left.",
        )
        self.stale = counter(
            "nano_banana_upstream_stale_connection_retries",
            "Calls re-sent at once on a fresh connection after a kept-alive one turned "
            "out closed (not counted as failures).",
        )
        self.panic_inflight = GaugeMetricFamily(
            "nano_banana_upstream_panic_inflight",
            "Panic calls in flight to each upstream.",
            labels=["upstream"],
        )

    def add(self, upstream: UpstreamView) -> None:
        name, b = upstream.name, upstream.breaker
        self.ejections.add_metric([name], b.ejections)
        self.trials.add_metric([name, "ok"], b.trials_ok)
        self.trials.add_metric([name, "failed"], b.trials_failed)
        self.recoveries.add_metric([name], b.recoveries)
        self.outage.add_metric([name], b.outage_seconds_total)
        self.panic.add_metric([name], b.panic_calls)
        self.stale.add_metric([name], b.stale_connection_retries)
        self.panic_inflight.add_metric([name], upstream.panic_inflight)

    def families(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from (self.ejections, self.trials, self.recoveries, self.outage, self.panic)
        yield from (self.stale, self.panic_inflight)
