"""The endpoints. Each handler reads top to bottom in the order a request travels:
auth -> parse -> translate -> make (pool, upstreams) -> shape -> record usage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..cache import ImageCache, policy_for
from ..config import Config
from ..errors import GatewayError
from ..metrics import Metrics
from ..models import MODELS, base_model
from ..pool import Pool
from ..service import ImageService
from ..store import ImageStore
from ..translate import build_job, resolve_model
from ..types import ImagesResult, Job, Output
from . import parse
from .auth import ClientAuth, check_admin
from .responses import (
    DONE,
    KEEPALIVE,
    completed_event,
    error_event,
    error_response,
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


@dataclass
class _Usage:
    """What one request will be metered as, filled in as the request goes."""

    endpoint: str
    client: str = "unknown"
    model: str = "unknown"
    cache: str = "off"  # hit, miss, coalesced, bypass, or off


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

    # ------------------------------------------------------------------ images

    async def generations(self, request: Request) -> Response:
        """POST /v1/images/generations"""
        return await self._images(request, "generations")

    async def edits(self, request: Request) -> Response:
        """POST /v1/images/edits"""
        return await self._images(request, "edits")

    async def _images(self, request: Request, endpoint: Endpoint) -> Response:
        started = time.monotonic()
        usage = _Usage(endpoint=endpoint)
        self.metrics.inflight.inc()
        status = 500
        streaming = False
        try:
            usage.client = self.auth.client_for(request)
            if endpoint == "generations":
                req = parse.parse_generation(await parse.read_json(request))
            else:
                req = await parse.parse_edit(request, max_bytes=self.config.images.upload_max_bytes)
            job, output = build_job(
                req,
                default_model=self.config.images.default_model,
                aliases=self.config.images.aliases,
            )
            usage.model = base_model(job.model)
            allow_partial = _allow_partial(request, self.config.images.allow_partial)
            policy = policy_for(
                request.headers, client_allows=self._cache_allowed.get(usage.client, True)
            )
            make = asyncio.ensure_future(
                self.cache.make(job, output, allow_partial=allow_partial, policy=policy)
            )
            if output.stream:
                response = await self._stream(request, make, job, output, usage, started)
                streaming = isinstance(response, StreamingResponse)
            else:
                result = await make
                response = JSONResponse(
                    images_body(result, output, self.store, str(request.base_url)),
                    headers=result_headers(result),
                )
                self._count_images(usage, result)
            status = response.status_code
            return response
        except GatewayError as err:
            status = err.status
            return error_response(err)
        finally:
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
            status = 200
            try:
                while not make.done():
                    done, _ = await asyncio.wait({make}, timeout=keepalive)
                    if not done:
                        yield KEEPALIVE
                try:
                    result = make.result()
                except GatewayError as err:
                    status = err.status
                    yield error_event(err)
                    return
                created = int(time.time())
                for image in result.images:
                    yield completed_event(kind, image, output, created)
                self._count_images(usage, result)
                yield DONE
            finally:
                if not make.done():
                    make.cancel()  # the caller hung up: stop waiting on the upstream
                self._finish(usage, status, started)

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def _count_images(self, usage: _Usage, result: ImagesResult) -> None:
        usage.cache = result.cache
        for upstream in result.upstreams:
            self.metrics.images.labels(usage.client, usage.model, upstream).inc()

    def _finish(self, usage: _Usage, status: int, started: float) -> None:
        self.metrics.inflight.dec()
        self.metrics.requests.labels(usage.endpoint, usage.client, usage.model, str(status)).inc()
        self.metrics.request_seconds.labels(usage.endpoint).observe(time.monotonic() - started)

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

    async def models(self, request: Request) -> Response:
        """GET /v1/models"""
        self.auth.client_for(request)
        body: dict[str, object] = {"object": "list", "data": self._model_entries()}
        if self.config.mock_only:
            body["warning"] = _MOCK_WARNING
        return JSONResponse(body)

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{model}"""
        self.auth.client_for(request)
        wanted = request.path_params["model"]
        for entry in self._model_entries():
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


def _allow_partial(request: Request, default: bool) -> bool:
    value = request.headers.get("x-gateway-allow-partial")
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes")
