"""Small helpers shared by the provider modules: reading answers and headers safely.

Upstream answers are untrusted input: `call` bounds an answer in bytes and the whole call
in time (httpx's own timeouts are per phase, so an upstream trickling a byte a minute
would never trip them), and `json_loads` / `is_image_link` read what arrived defensively.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ..http import Client, TooLarge, read_capped, resolved
from ..types import Job
from .base import FailureKind, UpstreamError
from .forms import refused_field

# Most bytes one upstream answer may have. Answers are small JSON, except defapi's, which
# may carry the image itself as a data: URI (a 4K PNG, base64-inflated).
MAX_ANSWER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """An upstream's complete answer."""

    status: int
    headers: httpx.Headers
    body: bytes


async def call(
    client: Client,
    method: str,
    url: str | httpx.URL,
    *,
    upstream: str,
    timeout: float,
    max_bytes: int = MAX_ANSWER_BYTES,
    json: Any = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One HTTP call, read whole within `timeout` seconds and `max_bytes` bytes. `url`
    is best `resolved` once; `headers` are lower-case; `json`, if not None, is the body.

    Raises UpstreamError: TIMEOUT, CONNECTION, or MALFORMED for an answer too large.
    """
    content = None
    sent = dict(headers or {})
    if json is not None:
        # The bytes httpx would send for json= (compact, UTF-8 as it is), from orjson:
        # httpx's json.dumps with options builds an encoder on every call. Copied out, as
        # orjson's bytes sit in a 4 KiB allocation and the body is held for the whole call.
        content = memoryview(orjson.dumps(json)).tobytes()
        sent["content-type"] = "application/json"
    if not isinstance(url, httpx.URL):
        url = resolved(client, url)
    request = client.prepare(method, url, headers=sent, content=content, params=params)
    try:
        async with asyncio.timeout(timeout):
            # What `client.stream()` does, without its generator-based context manager (an
            # object and a generator frame less for every waiting call to hold) or the
            # layers of httpx's send that these clients do not use (Client.open).
            resp = await client.open(request)
            try:
                answered = resp.headers
                # An answer in no content coding is read straight from the transport's
                # stream: httpx's decoding iterators would add two async generators.
                stream = resp.stream
                chunks: AsyncIterable[bytes] = (
                    stream
                    if isinstance(stream, httpx.AsyncByteStream)
                    and "content-encoding" not in answered
                    else resp.aiter_bytes()
                )
                body = await read_capped(chunks, max_bytes, declared=answered.get("content-length"))
            except TooLarge:
                raise UpstreamError(
                    FailureKind.MALFORMED,
                    f"{upstream}: answered with more than {max_bytes} bytes",
                    status=resp.status_code,
                ) from None
            finally:
                await resp.aclose()
            return Answer(resp.status_code, resp.headers, body)
    except TimeoutError:
        raise UpstreamError(
            FailureKind.TIMEOUT, f"{upstream}: no complete answer within {timeout:g}s"
        ) from None
    except httpx.TransportError as exc:
        raise transport_error(exc, upstream) from None


def json_loads(body: bytes) -> Any:
    """The answer's JSON, or None when it is not JSON (or absurdly nested). orjson first
    (a fifth of the standard library's cost for an answer); what only the standard
    library reads (NaN, lone surrogates, UTF-16, nesting past 1,024) is read by it, as
    before."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def is_image_link(value: object) -> bool:
    """True for what an upstream may hand back as an image: an http(s) URL or a data:
    image URI. Anything else (javascript:, file:, an empty string) is not an image."""
    if not isinstance(value, str) or len(value) < 8:
        return False
    head = value[:11].lower()
    return head.startswith(("http://", "https://", "data:image/"))


# Provider ids travel on to the caller in headers and to the logs: plain and short only.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def clean_id(value: object, token: str | None = None) -> str | None:
    """A provider's task or trace id, if it is fit to repeat: short, plain characters (no
    header injection), and not containing the credential it answered to (a hostile or
    buggy upstream may echo it back); else None."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        return None
    if token and token in value:
        return None
    return value


def without_token_ids(exc: UpstreamError, token: str) -> UpstreamError:
    """The same error, its ids dropped if they carry the token."""
    exc.task_id = clean_id(exc.task_id, token)
    exc.trace_id = clean_id(exc.trace_id, token)
    return exc


def keep_asked(images: list[str], asked: int) -> list[str]:
    """The images to report for a call that asked for `asked`: what was made is what is
    reported. More than asked comes from one paid-for call, so the first `asked` are kept
    rather than the answer thrown away and made (and paid for) again elsewhere; fewer is
    legal and handled by the caller. Pure."""
    return images[:asked]


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


def transport_error(exc: Exception, upstream: str) -> UpstreamError:
    """An httpx transport failure as an UpstreamError (timeout vs. connection)."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError(FailureKind.TIMEOUT, f"{upstream}: timed out waiting for the upstream")
    if isinstance(exc, httpx.ConnectTimeout) and "timeout" in str(exc).lower():
        return UpstreamError(FailureKind.TIMEOUT, f"{upstream}: timed out connecting")
    return UpstreamError(
        FailureKind.CONNECTION, f"{upstream}: connection failed ({type(exc).__name__})"
    )


def translation_refused(
    kind: FailureKind, message: str, job: Job
) -> tuple[FailureKind, str | None]:
    """A bad request about a field the gateway chose (the model id, aspect ratio,
    resolution, count, inline images) is the gateway's translation refused, not the
    caller's fault: UNSUPPORTED and the field's value. About the caller's own input it
    stays BAD_REQUEST. Pure."""
    if kind is not FailureKind.BAD_REQUEST:
        return kind, None
    field = refused_field(message, job)
    if field is None:
        return kind, None
    return FailureKind.UNSUPPORTED, field.value
