"""The request headers that change how a request is served, read in one place: the
caller's Cache-Control (and HTTP/1.0 Pragma), and x-gateway-allow-partial."""

from __future__ import annotations

from collections.abc import Mapping

from ..cache import CachePolicy

_USE = CachePolicy("use")


def policy_for(headers: Mapping[str, str], *, client_allows: bool) -> CachePolicy:
    """The caller's Cache-Control (and HTTP/1.0 Pragma) as a cache policy.

    `no-store` wins over `no-cache`; `max-age=0` asks for a fresh answer like `no-cache`.
    """
    if not client_allows:
        return CachePolicy("bypass")
    if "cache-control" not in headers and "pragma" not in headers:
        return _USE  # what nearly every request sends: nothing
    directives = [
        d.strip().lower().replace(" ", "") for d in headers.get("cache-control", "").split(",")
    ]
    if any(d.startswith("no-store") for d in directives):
        return CachePolicy("bypass")
    fresh = any(d.startswith("no-cache") or d == "max-age=0" for d in directives)
    if fresh or headers.get("pragma", "").strip().lower() == "no-cache":
        return CachePolicy("refresh")
    return CachePolicy("use")


def allow_partial(headers: Mapping[str, str]) -> bool | None:
    """x-gateway-allow-partial: whether fewer images than asked are acceptable; None when
    the caller does not say (the configured default applies)."""
    value = headers.get("x-gateway-allow-partial")
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes")
