"""Keys on the wire: the caller's Bearer key, and the operator keys of the admin and
metrics endpoints."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from ..errors import NotFound, Unauthenticated


def bearer(request: Request) -> str | None:
    """The key from 'Authorization: Bearer KEY' (or the api-key header some clients use)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("api-key") or None


def key_matches(given: str | None, expected: str) -> bool:
    """Whether a presented operator key (admin, metrics) is the configured one, compared in
    constant time."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def check_admin(request: Request, admin_key: str | None) -> None:
    """NotFound when no admin key is configured (the endpoint does not exist),
    Unauthenticated on a bad key."""
    if not admin_key:
        raise NotFound("Admin endpoints are disabled: set [admin] key.")
    if not key_matches(bearer(request) or request.headers.get("x-admin-key"), admin_key):
        raise Unauthenticated("Admin key missing or wrong.")


def check_metrics(request: Request, metrics_key: str | None) -> None:
    """Unauthenticated (with the scheme to use) when a metrics key is set and not sent."""
    if metrics_key is not None and not key_matches(bearer(request), metrics_key):
        raise Unauthenticated(
            "Metrics need the metrics key: Authorization: Bearer <[admin] metrics_key>.",
            challenge=True,
        )
