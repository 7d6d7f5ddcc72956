"""The endpoints. Each handler reads top to bottom in the order a request travels:
auth -> parse -> translate -> make (pool, upstreams) -> shape -> record usage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..cache import ImageCache, policy_for
from ..config import Config
from ..errors import GatewayError
from ..limits import Lease, Limiter, LimitExceeded
from ..metrics import Metrics
from ..models import MODELS, base_model
from ..pool import Attempt, Pool, request_attempts
from ..prices import PriceList
from ..service import ImageService
from ..store import ImageStore
from ..translate import build_job, resolve_model
from ..types import CacheResult, ImagesResult, Job, Output
from ..usage import UsageLog, timestamp
from . import parse
from .auth import ClientAuth, check_admin, check_model, model_allowed
from .responses import (
    DONE,
    KEEPALIVE,
    PartsResponse,
    completed_event,
    error_event,
    error_response,
    images_b64_parts,
    images_body,
    result_headers,
)

log = logging.getLogger("gateway.api")

Endpoint = Literal["generations", "edits"]

# Names OpenAI apps send, listed by /v1/models so SDK users can see they are understood.
_OPENAI_NAMES = (
    "gpt-image-1",
    "gpt-image-1.5",
    "gpt-image-1-mini",
    "chatgpt-image-latest",
    "dall-e-2",
    "dall-e-3",
)
_MOCK_WARNING = (
    "No upstream tokens are configured: this gateway answers with offline placeholder "
    "images from its built-in mock upstream."
)


# The status metered for a caller that hung up before its answer was complete (as nginx
# logs it), so client disconnects do not read as gateway errors.
_CLIENT_CLOSED = 499

# Served without an upstream call: costs nothing, and its would-be cost is a saving.
_FREE = ("hit", "coalesced")


@dataclass
class _Usage:
    """What one request will be metered as, filled in as the request goes."""

    endpoint: str
    request_id: str | None = None
    client: str = "unknown"
    model: str = "unknown"  # the metric label: a base model name, or "unknown"
    job: Job | None = None
    size: str | None = None
    stream: bool = False
    model_requested: str | None = None
    # Set by the cache: hit, miss, coalesced, bypass (not cacheable / client opted out), off.
    cache: CacheResult = "off"
    lease: Lease | None = None
    result: ImagesResult | None = None
    error: GatewayError | None = None
    attempts: list[Attempt] = field(default_factory=list)
    finished: bool = False


class _MeteredStream(StreamingResponse):
    """A stream that is metered even if its body never started (the caller hung up before
    the first byte), so the client's concurrency slot and the in-flight gauge come back."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None], **kw: Any):
        super().__init__(events, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class API:
    """The gateway's HTTP handlers, bound to one configuration."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        service: ImageService,
        cache: ImageCache,
        metrics: Metrics,
        store: ImageStore,
    ) -> None:
        self.config = config
        self.pool = pool
        self.service = service
        self.cache = cache
        self.metrics = metrics
        self.store = store
        self.auth = ClientAuth(config.clients)
        self._cache_allowed = {c.name: c.cache for c in config.clients}
        self.limiter = Limiter(config.clients)
        self.prices = PriceList(config.prices)
        self.usage_log = UsageLog(config.usage.log)
        metrics.watch_limits(self.limiter)

    # ------------------------------------------------------------------ images

    async def generations(self, request: Request) -> Response:
        """POST /v1/images/generations"""
        return await self._images(request, "generations")

    async def edits(self, request: Request) -> Response:
        """POST /v1/images/edits"""
        return await self._images(request, "edits")

    async def _images(self, request: Request, endpoint: Endpoint) -> Response:
        started = time.monotonic()
        usage = _Usage(endpoint=endpoint, request_id=getattr(request.state, "request_id", None))
        # Every upstream attempt this request makes lands in usage.attempts.
        attempts_token = request_attempts.set(usage.attempts)
        self.metrics.inflight.inc()
        status = 500
        streaming = False
        try:
            # Who is calling, and may they now: before the body is read, so a client over
            # its rate costs the gateway as little as possible.
            caller = self.auth.identify(request)
            usage.client = caller.name
            usage.lease = self.limiter.admit(caller)
            if endpoint == "generations":
                req = parse.parse_generation(await parse.read_json(request))
            else:
                req = await parse.parse_edit(request, max_bytes=self.config.images.upload_max_bytes)
            usage.model_requested = req.model
            job, output = build_job(
                req,
                default_model=self.config.images.default_model,
                aliases=self.config.images.aliases,
            )
            usage.model = base_model(job.model)
            usage.job, usage.size, usage.stream = job, req.size, output.stream
            check_model(caller, job.model)
            policy = policy_for(
                request.headers, client_allows=self._cache_allowed.get(usage.client, True)
            )
            estimate = self.prices.estimate(job.model, job.resolution, job.count)
            stored = None
            try:
                self.limiter.reserve(usage.lease, job.count, estimate)
            except LimitExceeded:
                # A stored answer costs nothing, so a team out of quota still gets it.
                stored = await self.cache.stored(job, output, policy)
                if stored is None:
                    raise
            self.metrics.images_requested.labels(usage.client, usage.model).inc(job.count)
            allow_partial = _allow_partial(request, self.config.images.allow_partial)
            response: Response
            if output.stream:
                make: asyncio.Future[ImagesResult]
                if stored is not None:
                    make = asyncio.get_running_loop().create_future()
                    make.set_result(stored)
                else:
                    make = asyncio.ensure_future(
                        self.cache.make(job, output, allow_partial=allow_partial, policy=policy)
                    )
                response = await self._stream(request, make, job, output, usage, started)
                streaming = isinstance(response, StreamingResponse)
            else:
                # Awaited in this task: no task of its own needed when nothing streams.
                result = stored or await self.cache.make(
                    job, output, allow_partial=allow_partial, policy=policy
                )
                if output.response_format == "b64_json":
                    response = PartsResponse(
                        images_b64_parts(result, output), headers=result_headers(result)
                    )
                else:
                    response = JSONResponse(
                        # The base URL is only built when the gateway hosts an image.
                        images_body(result, output, self.store, lambda: str(request.base_url)),
                        headers=result_headers(result),
                    )
                self._count_images(usage, result)
            status = response.status_code
            return response
        except GatewayError as err:
            status = err.status
            usage.error = err
            return error_response(err)
        except asyncio.CancelledError:
            status = _CLIENT_CLOSED
            raise
        finally:
            request_attempts.reset(attempts_token)
            if not streaming:
                self._finish(usage, status, started)

    async def _stream(
        self,
        request: Request,
        make: asyncio.Future[ImagesResult],
        job: Job,
        output: Output,
        usage: _Usage,
        started: float,
    ) -> Response:
        """SSE answer. A request that fails before the first keep-alive is due still gets a
        plain error status, so SDK apps see the same exception class as without stream."""
        kind = "image_generation" if job.action == "generate" else "image_edit"
        keepalive = self.config.images.stream_keepalive_seconds
        try:
            await asyncio.wait_for(asyncio.shield(make), timeout=keepalive)
        except TimeoutError:
            pass
        except GatewayError:
            make.cancel()
            raise
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        if make.done():
            headers.update(result_headers(make.result()))

        async def events() -> AsyncIterator[str]:
            status = _CLIENT_CLOSED  # until the stream is complete
            try:
                while not make.done():
                    done, _ = await asyncio.wait({make}, timeout=keepalive)
                    if not done:
                        yield KEEPALIVE
                try:
                    result = make.result()
                except GatewayError as err:
                    status = err.status
                    usage.error = err
                    yield error_event(err)
                    return
                created = int(time.time())
                for image in result.images:
                    yield completed_event(kind, image, output, created)
                self._count_images(usage, result)
                status = 200
                yield DONE
            finally:
                if not make.done():
                    make.cancel()  # the caller hung up: stop waiting on the upstream
                self._finish(usage, status, started)

        def closed() -> None:
            # A no-op when events() got to its end; otherwise the body never ran.
            if not make.done():
                make.cancel()
            self._finish(usage, _CLIENT_CLOSED, started)

        return _MeteredStream(events(), closed, media_type="text/event-stream", headers=headers)

    def _count_images(self, usage: _Usage, result: ImagesResult) -> None:
        usage.cache = result.cache
        usage.result = result
        if usage.cache in _FREE:
            self.metrics.images.labels(usage.client, usage.model, "cache").inc(len(result.images))
            return
        for upstream in result.upstreams:
            self.metrics.images.labels(usage.client, usage.model, upstream).inc()

    def _finish(self, usage: _Usage, status: int, started: float) -> None:
        """Record a finished request: metrics, the client's limits, and the usage log.
        Once per request, whichever path ends it first."""
        if usage.finished:
            return
        usage.finished = True
        seconds = time.monotonic() - started
        self.metrics.inflight.dec()
        self.metrics.requests.labels(
            usage.endpoint, usage.client, usage.model, str(status), usage.cache
        ).inc()
        self.metrics.request_seconds.labels(usage.endpoint, usage.model).observe(seconds)
        if isinstance(usage.error, LimitExceeded):
            self.metrics.rate_limited.labels(usage.client, usage.error.limit).inc()

        images = len(usage.result.images) if usage.result is not None else 0
        cost = saved = None
        if usage.job is not None and images:
            value = self.prices.estimate(usage.job.model, usage.job.resolution, images)
            if usage.cache in _FREE:
                saved = value
                cost = None if value is None else 0.0
            else:
                cost = value
        if cost:
            self.metrics.cost.labels(usage.client, usage.model).inc(cost)
        if saved:
            self.metrics.cost_saved.labels(usage.client, usage.model).inc(saved)
        if usage.lease is not None:
            # The day's limits count what upstreams made: a cache hit uses no quota.
            billed = 0 if usage.cache in _FREE else images
            self.limiter.settle(usage.lease, billed, cost)
        self.usage_log.write(_usage_record(usage, status, seconds, images, cost, saved))

    async def stored_image(self, request: Request) -> Response:
        """GET /v1/images/store/{name}: images the gateway hosts for url answers."""
        found = self.store.get(request.path_params["name"])
        if found is None:
            raise GatewayError(
                404, "This image link has expired or never existed.", code="not_found"
            )
        data, mime = found
        return Response(data, media_type=mime, headers={"cache-control": "private, max-age=3600"})

    # ------------------------------------------------------------------ models

    def _model_entries(self) -> list[dict[str, object]]:
        served = {m for u in self.pool.upstreams for m in u.models()}
        created = 1_700_000_000
        owner = "nano-banana-gateway (mock)" if self.config.mock_only else "google"
        entries: list[dict[str, object]] = [
            {"id": name, "object": "model", "created": created, "owned_by": owner}
            for name in MODELS
            if name in served
        ]
        aliases = dict(self.config.images.aliases)
        names = [a for a in aliases if not any(c in a for c in "*?[")]
        for name in [*names, *_OPENAI_NAMES]:
            if any(e["id"] == name for e in entries):
                continue
            try:
                target = resolve_model(name, self.config.images.default_model, aliases)
            except GatewayError:
                continue
            entries.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "nano-banana-gateway",
                    "alias_for": target,
                }
            )
        return entries

    def _entries_for(self, request: Request) -> list[dict[str, object]]:
        """The models list as the calling client may use it."""
        caller = self.auth.identify(request)
        return [
            e
            for e in self._model_entries()
            if model_allowed(caller, str(e.get("alias_for") or e["id"]))
        ]

    async def models(self, request: Request) -> Response:
        """GET /v1/models (only the models the calling client may use)."""
        body: dict[str, object] = {"object": "list", "data": self._entries_for(request)}
        if self.config.mock_only:
            body["warning"] = _MOCK_WARNING
        return JSONResponse(body)

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{model}"""
        wanted = request.path_params["model"]
        for entry in self._entries_for(request):
            if entry["id"] == wanted:
                return JSONResponse(entry)
        raise GatewayError(
            404, f"The model '{wanted}' does not exist", param="model", code="model_not_found"
        )

    # ------------------------------------------------------------------ operations

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: the process is up."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """GET /readyz: config loaded and at least one upstream token usable."""
        if self.pool.usable():
            body: dict[str, object] = {"status": "ready", "mock": self.config.mock_only}
            return JSONResponse(body)
        return JSONResponse({"status": "unavailable", "reason": "no usable upstream token"}, 503)

    async def metrics_text(self, request: Request) -> Response:
        """GET /metrics: Prometheus text format."""
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def admin_upstreams(self, request: Request) -> Response:
        """GET /admin/upstreams: every upstream and token (redacted) with its state."""
        check_admin(request, self.config.admin.key)
        return JSONResponse(
            {
                "mock": self.config.mock_only,
                "config_source": self.config.source,
                "upstreams": self.pool.snapshot(),
            }
        )


def _usage_record(
    usage: _Usage,
    status: int,
    seconds: float,
    images: int,
    cost: float | None,
    saved: float | None,
) -> dict[str, Any]:
    """One usage log line. Ids, names, numbers and the validated size only: never the
    prompt, an image, or a key."""
    job, result, err = usage.job, usage.result, usage.error
    task_ids = list(result.task_ids) if result is not None else []
    trace_ids = list(result.trace_ids) if result is not None else []
    if err is not None:
        # Upstream errors carry the provider's ids too: they are what its support asks for.
        task_ids += [t for t in err.headers.get("x-upstream-task-id", "").split(",") if t]
        trace_ids += [t for t in err.headers.get("x-upstream-trace-id", "").split(",") if t]
    upstreams = list(dict.fromkeys(result.upstreams)) if result is not None else []
    return {
        "time": timestamp(time.time()),
        "request_id": usage.request_id,
        "client": usage.client,
        "endpoint": usage.endpoint,
        "model": job.model if job is not None else None,
        # What the app asked for (an alias, say), cut short: it is the caller's free text.
        "model_requested": usage.model_requested[:64] if usage.model_requested else None,
        "images_requested": job.count if job is not None else None,
        "images": images,
        "size": usage.size,
        "resolution": job.resolution if job is not None else None,
        "aspect_ratio": job.aspect_ratio if job is not None else None,
        "stream": usage.stream,
        "cache": usage.cache,
        "upstreams": upstreams,
        "attempts": len(usage.attempts),
        "upstream_outcomes": [f"{a.upstream}:{a.outcome}" for a in usage.attempts],
        "latency_ms": round(seconds * 1000),
        "cost_usd": cost,
        "cost_saved_usd": saved,
        "status": status,
        "error_code": err.code if err is not None else None,
        "limit": err.limit if isinstance(err, LimitExceeded) else None,
        "task_ids": task_ids,
        "trace_ids": trace_ids,
    }


def _allow_partial(request: Request, default: bool) -> bool:
    value = request.headers.get("x-gateway-allow-partial")
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes")
