"""The one meter: every image request's outcome, recorded once, in one place.

The pipeline opens a Record when a request arrives and hands it back once the request has
ended, however it ended (images, an error, the caller gone). From it the meter feeds the
Prometheus counters, settles the client's limits with what the upstreams made and what it
is estimated to cost (from the price list), and writes the usage log line. Upstream
attempts are counted as they happen, so a long request shows up before it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..admission.limits import Lease, Limiter
from ..admission.prices import PriceList, made_resolution
from ..errors import DomainError, LimitExceeded
from ..types import Attempt, CacheResult, ImagesResult, Job
from .metrics import Metrics
from .usage import UsageLog, timestamp

# Served without an upstream call: costs nothing, and its would-be cost is a saving.
FREE = ("hit", "coalesced")
# The status of a request whose caller hung up before its answer was complete (as nginx
# logs it), so client disconnects do not read as gateway errors.
CLIENT_CLOSED = 499


@dataclass(slots=True)  # held by every waiting request: 160 bytes, with a dict 352
class Record:
    """What one request will be metered as, filled in by the pipeline as it goes."""

    endpoint: str
    request_id: str | None = None
    batch: str | None = None  # the batch's id, for a line of one
    started: float = field(default_factory=time.monotonic)
    client: str = "unknown"
    model: str = "unknown"  # the metric label: a base model name, or "unknown"
    model_requested: str | None = None
    job: Job | None = None
    size: str | None = None
    stream: bool = False
    lease: Lease | None = None
    admitted: bool = False  # past the day's limits (or served free from the cache)
    result: ImagesResult | None = None
    error: DomainError | None = None
    cancelled: bool = False  # the caller went away
    finished: bool = False

    @property
    def cache(self) -> CacheResult:
        """How the cache answered (off when it did not, or the request failed)."""
        return self.result.cache if self.result is not None else "off"


class Meter:
    """Records request outcomes and upstream attempts."""

    def __init__(
        self,
        metrics: Metrics,
        limiter: Limiter,
        prices: PriceList,
        usage_log: UsageLog,
        *,
        describe: Callable[[DomainError], tuple[int, str | None]],
    ) -> None:
        self._metrics = metrics
        self._limiter = limiter
        self._prices = prices
        self._usage_log = usage_log
        # The status and error code a domain error is answered with (the API's table).
        self._describe = describe
        self._evictions: dict[str, Any] = {}
        # Labelled children by (metric, label values): prometheus_client's labels() checks
        # and locks on every call; a request resolves about eight of them.
        self._children: dict[tuple[Any, ...], Any] = {}
        # Start the rejection counters at zero so a first 429 shows up in increase().
        for client, limit, _used, configured in limiter.usage():
            if configured is not None:
                metrics.rate_limited.labels(client, limit)

    def estimate(self, job: Job, images: int | None = None) -> float | None:
        """The estimated cost of the job's images (or of `images` of them); None when the
        model has no price."""
        return self._prices.estimate(
            job.model, job.resolution, job.count if images is None else images
        )

    def begin(self, endpoint: str, request_id: str | None, batch: str | None = None) -> Record:
        """A request has arrived (or a batch's line has started)."""
        self._metrics.inflight.inc()
        return Record(endpoint=endpoint, request_id=request_id, batch=batch)

    def admitted(self, record: Record) -> None:
        """The request is within its limits and will be served."""
        record.admitted = True
        assert record.job is not None
        requested = self._child(self._metrics.images_requested, record.client, record.model)
        requested.inc(record.job.count)

    def attempt(self, attempt: Attempt) -> None:
        """One upstream call has ended."""
        m = self._metrics
        self._child(m.upstream_requests, attempt.upstream, attempt.outcome).inc()
        self._child(m.upstream_seconds, attempt.upstream).observe(attempt.seconds)

    def retry(self, reason: str) -> None:
        """A request moved to another token or upstream after a failure of this kind."""
        self._metrics.retries.labels(reason).inc()

    def cache_evicted(self, reason: str) -> None:
        """The in-process cache dropped an entry (size, expired)."""
        # Resolved once per reason: evictions happen on most stores of a full cache.
        counter = self._evictions.get(reason)
        if counter is None:
            counter = self._evictions[reason] = self._metrics.cache_evictions.labels(reason)
        counter.inc()

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def answer(self, record: Record) -> tuple[int, str | None]:
        """The HTTP status and error code the request ended with."""
        if record.cancelled:
            return CLIENT_CLOSED, None
        if record.error is not None:
            return self._describe(record.error)
        return (200, None) if record.result is not None else (500, None)

    def finish(self, record: Record) -> asyncio.Task[None] | None:
        """The request has ended: count it, log it, settle its limits. Once per request.
        Returns the shared limits' settlement still under way, if any (Limiter.settle)."""
        if record.finished:
            return None
        record.finished = True
        m = self._metrics
        seconds = time.monotonic() - record.started
        answer = self.answer(record)
        status = answer[0]
        m.inflight.dec()
        child = self._child
        labels = (record.endpoint, record.client, record.model, str(status), record.cache)
        child(m.requests, *labels).inc()
        child(m.request_seconds, record.endpoint, record.model).observe(seconds)
        if isinstance(record.error, LimitExceeded):
            m.rate_limited.labels(record.client, record.error.limit).inc()
        result = record.result
        images = len(result.images) if result is not None else 0
        if result is not None:
            self._count_images(record, result)
        cost, saved = self._cost(record, images)
        if cost:
            child(m.cost, record.client, record.model).inc(cost)
        if saved:
            child(m.cost_saved, record.client, record.model).inc(saved)
        self._usage_log.write(usage_line(record, answer, seconds, images, cost, saved))
        if record.lease is None:
            return None
        # The day's limits count what upstreams made: a cache hit uses no quota.
        return self._limiter.settle(record.lease, 0 if record.cache in FREE else images, cost)

    def _cost(self, record: Record, images: int) -> tuple[float | None, float | None]:
        """(cost, saved): what the images made cost, and what serving them from the cache
        saved; None where the model has no price."""
        if record.job is None or record.result is None or not images:
            return None, None
        job = record.job
        # Each image at the resolution it was made at: a provider may ignore the one asked.
        sizes = [image.size for image in record.result.images]
        value = self._prices.estimate_made(job.model, job.resolution, sizes)
        if record.cache in FREE:
            return (None if value is None else 0.0), value
        return value, None

    def _count_images(self, record: Record, result: ImagesResult) -> None:
        m = self._metrics
        if result.cache != "off":
            self._child(m.cache_requests, result.cache).inc()
        if result.calls_saved:
            m.cache_calls_saved.inc(result.calls_saved)
        images = m.images
        if result.cache in FREE:
            self._child(images, record.client, record.model, "cache").inc(len(result.images))
            return
        for upstream in result.upstreams:
            self._child(images, record.client, record.model, upstream).inc()


def usage_line(
    record: Record,
    answer: tuple[int, str | None],
    seconds: float,
    images: int,
    cost: float | None,
    saved: float | None,
) -> dict[str, Any]:
    """One usage log line. Ids, names, numbers and sizes only (the caller's validated
    size, and what was made, by which it is priced): never the prompt, an image, or a key.
    `answer` is the status and the error code it ended with."""
    job, result, err = record.job, record.result, record.error
    status, code = answer
    task_ids, trace_ids = _provider_ids(result, err)
    attempts = list(result.attempts) if result is not None else list(err.attempts if err else ())
    upstreams = list(dict.fromkeys(result.upstreams)) if result is not None else []
    return {
        "time": timestamp(time.time()),
        "request_id": record.request_id,
        "client": record.client,
        "endpoint": record.endpoint,
        "batch": record.batch,
        "model": job.model if job is not None else None,
        # What the app asked for (an alias, say), cut short: it is the caller's free text.
        "model_requested": record.model_requested[:64] if record.model_requested else None,
        "images_requested": job.count if job is not None else None,
        "images": images,
        "size": record.size,
        "size_made": made_sizes(result),
        "resolution": made_resolutions(job, result),
        "aspect_ratio": job.aspect_ratio if job is not None else None,
        "stream": record.stream,
        "cache": record.cache,
        "upstreams": upstreams,
        "attempts": len(attempts),
        "upstream_outcomes": [f"{a.upstream}:{a.outcome}" for a in attempts],
        "latency_ms": round(seconds * 1000),
        "cost_usd": cost,
        "cost_saved_usd": saved,
        # What the provider says it charged (defapi's credits), beside our estimate; only
        # for calls made for this request (a cache hit made none).
        "upstream_consumed": list(result.consumed) if result is not None else [],
        "status": status,
        "error_code": code,
        "limit": err.limit if isinstance(err, LimitExceeded) else None,
        "task_ids": task_ids,
        "trace_ids": trace_ids,
    }


def made_sizes(result: ImagesResult | None) -> str | None:
    """'WxH' of the images made ('1024x1024,2048x2048' when they differ); None when no
    image was made or none has a known size."""
    sizes = [f"{i.size[0]}x{i.size[1]}" for i in result.images if i.size] if result else []
    return ",".join(dict.fromkeys(sizes)) or None


def made_resolutions(job: Job | None, result: ImagesResult | None) -> str | None:
    """The resolution the images were made at, by their sizes ('1K,2K' when they differ);
    the one asked for when nothing was made, or a size is unknown."""
    if job is None:
        return None
    tiers = [
        made_resolution(job.model, i.size) if i.size else job.resolution
        for i in (result.images if result is not None else [])
    ]
    return ",".join(dict.fromkeys(t for t in tiers if t)) or job.resolution


def _provider_ids(
    result: ImagesResult | None, err: DomainError | None
) -> tuple[list[str], list[str]]:
    """The provider's task and trace ids: what its support asks for, failures included."""
    task_ids = list(result.task_ids) if result is not None else []
    trace_ids = list(result.trace_ids) if result is not None else []
    task_id, trace_id = getattr(err, "task_id", None), getattr(err, "trace_id", None)
    if task_id:
        task_ids.append(task_id)
    if trace_id:
        trace_ids.append(trace_id)
    return task_ids, trace_ids
