"""Small helpers shared by the provider modules: reading answers and headers safely."""

from __future__ import annotations

import email.utils
import json
import re
import time
from typing import Any

import httpx

from .base import FailureKind, UpstreamError


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    # Plain decimal seconds only: float() would also take "inf", "nan" and "1e3".
    if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def json_body(resp: httpx.Response) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return json.loads(resp.content)
    except (ValueError, UnicodeDecodeError):
        return None


def transport_error(exc: Exception, upstream: str) -> UpstreamError:
    """An httpx transport failure as an UpstreamError (timeout vs. connection)."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError(FailureKind.TIMEOUT, f"{upstream}: timed out waiting for the upstream")
    if isinstance(exc, httpx.ConnectTimeout) and "timeout" in str(exc).lower():
        return UpstreamError(FailureKind.TIMEOUT, f"{upstream}: timed out connecting")
    return UpstreamError(
        FailureKind.CONNECTION, f"{upstream}: connection failed ({type(exc).__name__})"
    )
