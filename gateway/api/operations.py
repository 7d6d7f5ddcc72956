"""What operators and load balancers call: health, readiness, metrics, the pool's state,
and the images the gateway hosts for url answers."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..admission.limits import Limiter
from ..batch.objects import batch_object
from ..batch.open import StoreKeeper
from ..batch.store import ACTIVE, BatchRecord
from ..config import Config
from ..errors import NotFound, StoreUnavailable
from ..pool import Pool, UpstreamView
from ..shape.store import ImageStore
from .admin_page import cache_stats, render_page
from .auth import check_admin, check_admin_page, check_metrics

_RECENT = 200  # batches read for the admin views


def view_json(views: tuple[UpstreamView, ...]) -> list[dict[str, Any]]:
    """The pool's view as /admin/upstreams shows it (states by their names)."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return [plain(dataclasses.asdict(v)) for v in views]


class OperationEndpoints:
    """Health, readiness, metrics, admin and hosted images."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        limiter: Limiter,
        store: ImageStore,
        registry: CollectorRegistry,
        *,
        batch_keeper: StoreKeeper | None = None,
    ) -> None:
        self._config = config
        self._pool = pool
        self._limiter = limiter
        self._store = store
        self._registry = registry
        self._batches = batch_keeper

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: the process is up."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """GET /readyz: config loaded and at least one upstream token usable."""
        if self._pool.usable():
            body: dict[str, object] = {"status": "ready", "mock": self._config.mock_only}
            return JSONResponse(body)
        return JSONResponse({"status": "unavailable", "reason": "no usable upstream token"}, 503)

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: Prometheus text format (behind [admin] metrics_key when set)."""
        check_metrics(request, self._config.admin.metrics_key)
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    async def admin_upstreams(self, request: Request) -> Response:
        """GET /admin/upstreams: every upstream and token (redacted) with its state."""
        check_admin(request, self._config.admin.key)
        return JSONResponse(
            {
                "mock": self._config.mock_only,
                "config_source": self._config.source,
                "upstreams": view_json(self._pool.view()),
            }
        )

    async def admin_clients(self, request: Request) -> Response:
        """GET /admin/clients: each client's day so far against its limits: every
        replica's when the limits are shared through Redis (`shared`), else this process's."""
        check_admin(request, self._config.admin.key)
        limits = {c.name: c for c in self._config.clients}
        clients = []
        for day in self._limiter.today():
            cfg = limits.get(day.client)
            clients.append(
                {
                    "client": day.client,
                    "requests": day.requests,
                    "images": day.images,
                    "cost_usd": round(day.cost, 6),
                    "refused": day.refused,
                    "in_flight": day.inflight,
                    "requests_last_minute": day.recent,
                    "shared": day.shared,
                    "limits": {
                        "requests_per_minute": cfg.requests_per_minute if cfg else None,
                        "max_concurrent_requests": cfg.max_concurrent_requests if cfg else None,
                        "images_per_day": cfg.images_per_day if cfg else None,
                        "budget_usd_per_day": cfg.budget_usd_per_day if cfg else None,
                    },
                }
            )
        return JSONResponse({"clients": clients})

    async def admin_page(self, request: Request) -> Response:
        """GET /admin: the operator's page (the admin key as Bearer or Basic password)."""
        check_admin_page(request, self._config.admin.key)
        page = render_page(
            self._pool.view(),
            self._limiter.today(),
            self._config.clients,
            cache_stats(self._registry),
            mock=self._config.mock_only,
            batches=await self._batches_for_page(),
        )
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    async def admin_batches(self, request: Request) -> Response:
        """GET /admin/batches: the batches not yet at their end, every client's."""
        check_admin(request, self._config.admin.key)
        running = await self._running_batches()
        return JSONResponse({"batches": [batch_object(r) for r in running or ()]})

    async def _batches_for_page(self) -> list[BatchRecord] | None:
        """As _running_batches; None (no section) while the store is out of reach: the
        rest of the page is still worth seeing."""
        try:
            return await self._running_batches()
        except StoreUnavailable:
            return None

    async def _running_batches(self) -> list[BatchRecord] | None:
        """Batches still at work, newest first (None: the Batch API is off). Read from the
        newest RECENT batches: older ones still running show on /v1/batches with the
        admin key."""
        keeper = self._batches
        if keeper is None:
            return None
        store = keeper.available()
        with keeper.reached():
            page = await store.list_batches(None, after=None, limit=_RECENT)
        return [r for r in page.items if r.status in ACTIVE]

    async def stored_image(self, request: Request) -> Response:
        """GET /v1/images/store/{name}: images the gateway hosts for url answers."""
        found = self._store.get(request.path_params["name"])
        if found is None:
            raise NotFound("This image link has expired or never existed.")
        data, mime = found
        return Response(data, media_type=mime, headers={"cache-control": "private, max-age=3600"})
