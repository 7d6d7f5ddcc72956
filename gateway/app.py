"""Wiring only: every part of the gateway built from the Config and handed over, the
routes, the middleware, the lifespan. Requests travel as gateway/pipeline.py says."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import prometheus_client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .admission.clients import ClientAuth
from .admission.limits import Limiter
from .admission.prices import PriceList
from .admission.shared import SharedLimits
from .api.batch_lines import LineRunner
from .api.batches import BatchEndpoints
from .api.catalog import ModelEndpoints
from .api.errors import INTERNAL, OpenAIError, openai_error
from .api.files import FileEndpoints, guarded
from .api.images import ImageEndpoints
from .api.middleware import Front, FrontedStarlette
from .api.openapi import openapi_document
from .api.operations import OperationEndpoints
from .api.responses import error_response
from .batch.metrics import BatchMetrics
from .batch.open import StoreKeeper, open_store
from .batch.runner import BatchRunner
from .batch.store import BatchStore
from .cache import ImageCache
from .config import Config
from .errors import DomainError
from .fanout import FanOut
from .http import connection_limit, connection_warning, open_file_limit
from .metering.meter import Meter
from .metering.metrics import (
    CacheCollector,
    LimitsCollector,
    Metrics,
    PoolCollector,
    RedisCollector,
)
from .metering.usage import UsageLog
from .pipeline import ImagePipeline
from .pool import Pool
from .shape.fetch import Fetcher
from .shape.media import decode_data_uri
from .shape.netguard import UrlPolicy
from .shape.shaper import Shaper
from .shape.store import ImageStore
from .shutdown import Shutdown
from .state.daybook import DayBook, open_state_dir
from .state.redis import RedisLink, safe_location
from .upstreams import build_upstream

log = logging.getLogger("gateway")


@dataclass
class Gateway:
    """Every part, built from one Config; what the HTTP app (and anything else that runs
    image requests, such as a batch runner) is made of."""

    config: Config
    metrics: Metrics
    url_policy: UrlPolicy
    auth: ClientAuth
    pool: Pool
    cache: ImageCache
    pipeline: ImagePipeline
    fetcher: Fetcher
    usage_log: UsageLog
    store: ImageStore  # images the gateway hosts: answers as links, uploads for providers

    limiter: Limiter
    redis: RedisLink | None  # the state shared with other replicas, when configured

    async def start(self) -> None:
        """Read what other replicas share (limits, token health) and keep reading it."""
        await self.limiter.start()
        await self.pool.start()

    async def aclose(self) -> None:
        """Settle and send what is still unshared; close every client and the usage log."""
        await self.limiter.aclose()
        await self.pool.aclose()
        await self.fetcher.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        self.usage_log.close()


def build(config: Config) -> Gateway:
    """The parts of a gateway, wired: admission, pool, shaping, cache, meter, pipeline."""
    secrets = config.secrets()
    metrics = Metrics()
    policy = UrlPolicy.build(
        allow_private=config.images.allow_private_networks,
        allowed_networks=config.images.allowed_networks,
        # The operator chose these hosts; image links to them are as trusted as the API.
        trusted_urls=[u.base_url for u in config.upstreams if u.type != "mock"],
    )
    auth = ClientAuth(config.clients)
    redis = None
    if config.redis.url:
        redis = RedisLink(config.redis, on_error=lambda op: metrics.redis_errors.labels(op).inc())
    limiter = _limiter(config, redis)
    usage_log = UsageLog(config.usage.log)
    meter = Meter(metrics, limiter, PriceList(config.prices), usage_log, describe=_status_and_code)
    store = ImageStore()
    upstreams = [(build_upstream(u), u) for u in config.upstreams]
    if config.server.public_base_url is not None:
        host = _upload_host(store, config.server.public_base_url)
        for upstream, _ in upstreams:
            upstream.host_upload = host
    pool = Pool(
        upstreams,
        config.pool,
        on_attempt=meter.attempt,
        on_retry=meter.retry,
        secrets=secrets,
        redis=redis,
        sync_seconds=config.redis.sync_seconds,
    )
    fetcher = Fetcher(
        max_bytes=config.images.download_max_bytes,
        timeout=config.images.download_timeout_seconds,
        policy=policy,
    )
    fanout = FanOut(
        pool, Shaper(fetcher), deadline_seconds=config.pool.deadline_seconds, secrets=secrets
    )
    cache = ImageCache(
        config.cache,
        fanout,
        fetcher,
        deadline_seconds=config.pool.deadline_seconds,
        on_evict=meter.cache_evicted,
        redis=redis,
    )
    pipeline = ImagePipeline(
        auth=auth, limiter=limiter, cache=cache, meter=meter, images=config.images
    )
    for collector in (PoolCollector(pool), LimitsCollector(limiter), CacheCollector(cache)):
        metrics.registry.register(collector)
    if redis is not None:
        metrics.registry.register(RedisCollector(redis))
    return Gateway(
        config, metrics, policy, auth, pool, cache, pipeline, fetcher, usage_log, store,
        limiter, redis,
    )  # fmt: skip


def _limiter(config: Config, redis: RedisLink | None) -> Limiter:
    """The limits: in Redis when there is one, else in this process with the day's counts
    in the state directory (StateDirError when it cannot be written)."""
    cfg = config.redis
    shared = SharedLimits(redis, lease_seconds=cfg.lease_seconds) if redis else None
    daybook = None if redis else DayBook(open_state_dir(config.state.dir))
    return Limiter(
        config.clients,
        shared=shared,
        daybook=daybook,
        refuse_when_down=cfg.daily_limits_when_down == "refuse",
        sync_seconds=cfg.sync_seconds,
        lease_seconds=cfg.lease_seconds,
    )


def _upload_host(store: ImageStore, public_base_url: str) -> Callable[[str], str]:
    """data: URI -> a link to a copy in the image store, served at /v1/images/store/."""

    def host(uri: str) -> str:
        decoded = decode_data_uri(uri)
        if decoded is None:  # uploads are validated data URIs; anything else goes as it is
            return uri
        data, mime = decoded
        return f"{public_base_url}/v1/images/store/{store.put(data, mime or 'image/png')}"

    return host


def create_app(config: Config, *, bind_host: str = "127.0.0.1") -> Starlette:
    """The gateway as an ASGI app. `bind_host` is where the API listens: a separate
    metrics port listens there too unless [server] metrics_host says otherwise.

    `app.state.shutdown.begin()` starts the graceful shutdown (the command line calls it
    on SIGTERM)."""
    gateway = build(config)
    secrets = config.secrets()
    metrics, pool = gateway.metrics, gateway.pool
    shutdown = Shutdown(config.server.shutdown_grace_seconds)
    store = gateway.store
    images = ImageEndpoints(
        gateway.pipeline,
        store,
        url_policy=gateway.url_policy,
        upload_max_bytes=config.images.upload_max_bytes,
        keepalive_seconds=config.images.stream_keepalive_seconds,
        secrets=secrets,
    )
    catalog = ModelEndpoints(config, pool, gateway.auth)
    batch_store = open_store(config)
    keeper = (
        StoreKeeper(batch_store, remote=bool(config.state.database_url)) if batch_store else None
    )
    # Links to images the gateway hosts in a batch's answers need its address: the public
    # one, else the one the batch's creator used on this replica.
    public = config.server.public_base_url
    runner = _batch_runner(gateway, batch_store, shutdown, lambda: public or batches.base_url)
    files = FileEndpoints(keeper, gateway.auth, config.admin.key, config.batch)
    batches = BatchEndpoints(
        keeper, gateway.auth, config.admin.key, runner.wake if runner else lambda: None
    )
    ops = OperationEndpoints(
        config, pool, gateway.limiter, store, metrics.registry, batch_keeper=keeper
    )
    document = openapi_document(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _announce(config)
        shutdown.bind(asyncio.get_running_loop())
        await gateway.start()
        if keeper is not None and runner is not None:
            await keeper.start(on_ready=runner.start)  # a server not up yet: retried
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
            if keeper is not None and runner is not None:
                await runner.aclose()  # the running lines finish (or meet the cutoff)
                await keeper.aclose()
            await gateway.aclose()

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    # POST to an image endpoint skips Starlette's layers (api/middleware.py says why); the
    # routes still answer other methods with 405.
    direct = {f"/v1/images/{name}": images.route(name) for name in ("generations", "edits")}
    routes = [
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in direct.items()),
        Route("/v1/images/store/{name}", ops.stored_image, methods=["GET"]),
        Route("/v1/files", guarded(files.create, keeper), methods=["POST"]),
        Route("/v1/files", guarded(files.list, keeper), methods=["GET"]),
        Route("/v1/files/{file_id}", guarded(files.retrieve, keeper), methods=["GET"]),
        Route("/v1/files/{file_id}", guarded(files.delete, keeper), methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", guarded(files.content, keeper), methods=["GET"]),
        Route("/v1/batches", guarded(batches.create, keeper), methods=["POST"]),
        Route("/v1/batches", guarded(batches.list, keeper), methods=["GET"]),
        Route("/v1/batches/{batch_id}", guarded(batches.retrieve, keeper), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", guarded(batches.cancel, keeper), methods=["POST"]),
        Route("/v1/models", catalog.models, methods=["GET"]),
        Route("/v1/models/{model:path}", catalog.model, methods=["GET"]),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/admin/upstreams", ops.admin_upstreams, methods=["GET"]),
        Route("/admin/clients", ops.admin_clients, methods=["GET"]),
        Route("/admin/batches", ops.admin_batches, methods=["GET"]),
        Route("/admin", ops.admin_page, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    if config.server.metrics_port is None:
        # With a metrics port, the API port does not serve metrics at all.
        routes.append(Route("/metrics", ops.metrics, methods=["GET"]))

    async def domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        return error_response(openai_error(exc, secrets))

    app = FrontedStarlette(
        front=lambda stack: Front(stack, shutdown, direct),
        routes=routes,
        exception_handlers={
            DomainError: domain_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.metrics = metrics
    app.state.cache = gateway.cache
    app.state.shutdown = shutdown
    app.state.pipeline = gateway.pipeline
    return app


def _batch_runner(
    gateway: Gateway, store: BatchStore | None, shutdown: Shutdown, base_url: Callable[[], str]
) -> BatchRunner | None:
    """The runner of this replica's share of the batches (None: the Batch API is off)."""
    if store is None:
        return None
    config = gateway.config
    lines = LineRunner(
        gateway.pipeline,
        config.clients,
        gateway.store,
        url_policy=gateway.url_policy,
        upload_max_bytes=config.images.upload_max_bytes,
        base_url=base_url,
        secrets=config.secrets(),
    )
    metrics = BatchMetrics(gateway.metrics.registry)
    return BatchRunner(
        store, lines, config.batch, metrics, shutdown=shutdown, capacity=gateway.pool.capacity
    )


def _status_and_code(err: DomainError) -> tuple[int, str | None]:
    answer = openai_error(err)
    return answer.status, answer.code


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(OpenAIError(exc.status_code, message, headers=exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback; the caller gets no stack trace, only a request id.
    return error_response(INTERNAL, getattr(request.state, "request_id", None))


def _announce(config: Config) -> None:
    if config.mock_only:
        log.warning("=" * 72)
        log.warning("NO UPSTREAM TOKENS CONFIGURED: serving OFFLINE MOCK placeholder images.")
        log.warning("Set ACEDATA_API_TOKENS / XHUOAPI_API_TOKENS / DEFAPI_API_TOKENS or --config.")
        log.warning("=" * 72)
    files = open_file_limit()
    for u in config.upstreams:
        log.info(
            "upstream %s: type=%s tokens=%d priority=%d weight=%g",
            u.name,
            u.type,
            len(u.tokens),
            u.priority,
            u.weight,
        )
        if u.type == "mock":
            continue
        limit = connection_limit(u.max_connections, files)
        warning = connection_warning(u.name, limit, files, len(u.tokens), u.max_concurrency)
        if warning:
            log.warning(warning)
    log.info("clients: %s", ", ".join(c.name for c in config.clients) or "none (open access)")
    if config.redis.url:
        log.info(
            "shared state: Redis at %s (cache, limits, token health)",
            safe_location(config.redis.url),
        )
    elif config.state.dir:
        log.info("state directory: %s (each client's day survives a restart)", config.state.dir)
    else:
        log.info("state: in memory only ([state] dir is empty)")
