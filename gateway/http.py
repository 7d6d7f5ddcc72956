"""HTTP plumbing shared by every layer: the outbound client factory and the capped read.

One httpx client per upstream (and one for image downloads) for the life of the process,
over aiohttp's connection pool: measured on this kind of machine it holds thousands of
slow upstream calls with far less queueing than httpx's own pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver
from httpx_aiohttp import AiohttpTransport

# Image calls wait minutes each, so thousands may be open at once; aiohttp's default of
# 100 connections would queue them behind each other.
MAX_CONNECTIONS = 4096


class TooLarge(Exception):
    """A body grew past its cap; each caller says so in its own terms."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"more than {max_bytes} bytes")
        self.max_bytes = max_bytes


def declared_too_large(declared: str | None, max_bytes: int) -> bool:
    """True when a Content-Length already says the body is over the cap."""
    return declared is not None and declared.isdigit() and int(declared) > max_bytes


async def read_capped(
    chunks: AsyncIterable[bytes], max_bytes: int, *, declared: str | None = None
) -> bytes:
    """A whole body, refused with TooLarge as soon as it passes max_bytes (or at once
    when its declared Content-Length does): a peer trickling an endless body can cost at
    most max_bytes of memory."""
    if declared_too_large(declared, max_bytes):
        raise TooLarge(max_bytes)
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(max_bytes)
        parts.append(chunk)
    return b"".join(parts)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing. Upstream APIs authenticate by token, not cookies,
    and a cookie set on one token's answer must never ride along on another token's call;
    it also spares parsing every answer's headers into a cookie jar."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.AsyncClient):
    """httpx's client with the cookie jar above."""

    _no_cookies = _NoCookies()

    @property  # type: ignore[override,misc]
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies


def make_client(
    base_url: str = "",
    *,
    timeout: float,
    max_connections: int = MAX_CONNECTIONS,
    resolver: Callable[[], AbstractResolver] | None = None,
) -> httpx.AsyncClient:
    """An httpx client over the aiohttp transport, for one upstream or the image fetcher.

    No proxies or netrc from the environment: the gateway talks to what it is told (and a
    proxy would resolve names itself, past a guarding `resolver`, which is built with the
    session, inside the running loop). Redirects are not followed: the fetcher checks
    every hop itself."""

    def session() -> aiohttp.ClientSession:
        # Built lazily, inside the running loop, as aiohttp requires.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max_connections,
                limit_per_host=0,
                resolver=resolver() if resolver is not None else None,
            ),
            trust_env=False,
        )

    # The transport calls the factory on its first request and keeps the session.
    return _Client(
        base_url=base_url,
        transport=AiohttpTransport(client=session),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
        trust_env=False,
        follow_redirects=False,
    )
