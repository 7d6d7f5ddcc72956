"""Keys on the wire: the caller's Bearer key, and the operator keys of the admin and
metrics endpoints."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.requests import Request

from ..admission.clients import ClientAuth
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
            challenge="Bearer",
        )


# What a browser needs to ask for the admin key: the key is the password, any user name.
BASIC_CHALLENGE = 'Basic realm="nano-banana-gateway admin", charset="UTF-8"'


def basic_password(request: Request) -> str | None:
    """The password of 'Authorization: Basic ...' (user:password, base64), or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


def check_admin_page(request: Request, admin_key: str | None) -> None:
    """As check_admin, also taking the key as a Basic password, and answering a missing or
    wrong one with a Basic challenge so that a browser prompts for it."""
    if not admin_key:
        raise NotFound("Admin endpoints are disabled: set [admin] key.")
    given = basic_password(request) or bearer(request) or request.headers.get("x-admin-key")
    if not key_matches(given, admin_key):
        raise Unauthenticated("Admin key missing or wrong.", challenge=BASIC_CHALLENGE)


def owner_of(request: Request, auth: ClientAuth, admin_key: str | None) -> str | None:
    """Whom a Files or Batches call acts for: the calling client's name, or None for the
    admin key, which sees every client's (Unauthenticated for any other key)."""
    key = bearer(request)
    if admin_key and key_matches(key, admin_key):
        return None
    return auth.identify(key).name
