"""Builds the Starlette app from a Config: routes, middleware, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import prometheus_client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .api.auth import bearer, key_matches
from .api.middleware import RequestIdMiddleware, ShutdownMiddleware
from .api.responses import error_response
from .api.routes import API
from .cache import ImageCache
from .config import Config
from .errors import GatewayError
from .fetch import Fetcher
from .metrics import Metrics
from .netguard import UrlPolicy
from .openapi import openapi_document
from .pool import Attempt, Pool
from .service import ImageService
from .shutdown import Shutdown
from .store import ImageStore
from .upstreams import build_upstream

log = logging.getLogger("gateway")

# The endpoints that hold a request for minutes: the ones shutdown has to cut off.
_IMAGE_PATHS = ("/v1/images/generations", "/v1/images/edits")


def create_app(config: Config, *, bind_host: str = "127.0.0.1") -> Starlette:
    """The gateway as an ASGI app. `bind_host` is where the API listens: a separate
    metrics port listens there too unless [server] metrics_host says otherwise.

    `app.state.shutdown.begin()` starts the graceful shutdown (the command line calls it
    on SIGTERM)."""
    metrics = Metrics()
    shutdown = Shutdown(config.server.shutdown_grace_seconds)
    policy = UrlPolicy.build(
        allow_private=config.images.allow_private_networks,
        allowed_networks=config.images.allowed_networks,
        # The operator chose these hosts; image links to them are as trusted as the API.
        trusted_urls=[u.base_url for u in config.upstreams if u.type != "mock"],
    )

    def on_attempt(attempt: Attempt) -> None:
        metrics.upstream_requests.labels(attempt.upstream, attempt.outcome).inc()
        metrics.upstream_seconds.labels(attempt.upstream).observe(attempt.seconds)

    pool = Pool(
        [(build_upstream(u), u) for u in config.upstreams],
        config.pool,
        on_attempt=on_attempt,
        on_retry=lambda reason: metrics.retries.labels(reason).inc(),
        secrets=config.secrets(),
    )
    metrics.watch_pool(pool)
    fetcher = Fetcher(
        max_bytes=config.images.download_max_bytes,
        timeout=config.images.download_timeout_seconds,
        policy=policy,
    )
    service = ImageService(
        pool, fetcher, deadline_seconds=config.pool.deadline_seconds, secrets=config.secrets()
    )
    cache = ImageCache(
        config.cache, service, fetcher, metrics, deadline_seconds=config.pool.deadline_seconds
    )
    api = API(config, pool, service, cache, metrics, ImageStore())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _announce(config)
        shutdown.bind(asyncio.get_running_loop())
        metrics_server = None
        if config.server.metrics_port is not None:
            host = config.server.metrics_host or bind_host
            metrics_server, _thread = prometheus_client.start_http_server(
                config.server.metrics_port, addr=host, registry=metrics.registry
            )
            log.info("metrics on http://%s:%d/metrics", host, config.server.metrics_port)
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            await pool.aclose()
            await fetcher.aclose()
            await cache.aclose()
            api.usage_log.close()

    document = openapi_document(config)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    routes = [
        Route("/v1/images/generations", api.generations, methods=["POST"]),
        Route("/v1/images/edits", api.edits, methods=["POST"]),
        Route("/v1/images/store/{name}", api.stored_image, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.model, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/admin/upstreams", api.admin_upstreams, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    if config.server.metrics_port is None:
        # With a metrics port, the API port does not serve metrics at all.
        routes.append(
            Route(
                "/metrics",
                _key_required(config.admin.metrics_key, api.metrics_text),
                methods=["GET"],
            )
        )
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(ShutdownMiddleware, shutdown=shutdown, paths=_IMAGE_PATHS),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.metrics = metrics
    app.state.cache = cache
    app.state.shutdown = shutdown
    # Read by the edit parser: image_url inputs obey the same network policy.
    app.state.url_policy = policy
    return app


def _key_required(
    key: str | None, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """The handler, behind a Bearer key when one is configured."""
    if key is None:
        return handler

    async def guarded(request: Request) -> Response:
        if not key_matches(bearer(request), key):
            raise GatewayError(
                401,
                "Metrics need the metrics key: Authorization: Bearer <[admin] metrics_key>.",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )
        return await handler(request)

    return guarded


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}"
    else:
        message = str(exc.detail)
    err = GatewayError(exc.status_code, message, code=None, headers=exc.headers)
    return error_response(err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback; the caller gets no stack trace, only a request id.
    request_id = getattr(request.state, "request_id", None)
    err = GatewayError(
        500,
        "The gateway hit an unexpected error. Quote the x-request-id when reporting it.",
        type="server_error",
        code="internal_error",
    )
    return error_response(err, request_id)


def _announce(config: Config) -> None:
    if config.mock_only:
        log.warning("=" * 72)
        log.warning("NO UPSTREAM TOKENS CONFIGURED: serving OFFLINE MOCK placeholder images.")
        log.warning("Set ACEDATA_API_TOKENS / XHUOAPI_API_TOKENS / DEFAPI_API_TOKENS or --config.")
        log.warning("=" * 72)
    for u in config.upstreams:
        log.info(
            "upstream %s: type=%s tokens=%d priority=%d weight=%g",
            u.name,
            u.type,
            len(u.tokens),
            u.priority,
            u.weight,
        )
    log.info("clients: %s", ", ".join(c.name for c in config.clients) or "none (open access)")
