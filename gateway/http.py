"""Outbound HTTP clients: one per upstream for the life of the process.

httpx's API over aiohttp's connection pool: measured on this kind of machine it holds
thousands of slow upstream calls with far less queueing than httpx's own pool.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

# Image calls wait minutes each, so thousands may be open at once; aiohttp's default of
# 100 connections would queue them behind each other.
MAX_CONNECTIONS = 4096


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
    base_url: str, *, timeout: float, max_connections: int = MAX_CONNECTIONS
) -> httpx.AsyncClient:
    """An httpx client over the aiohttp transport, for one upstream (or the image fetcher)."""

    def session() -> aiohttp.ClientSession:
        # Built lazily, inside the running loop, as aiohttp requires.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
            # No proxies or netrc from the environment: the gateway talks to what it's told.
            trust_env=False,
        )

    # The transport calls the factory on its first request and keeps the session.
    transport = AiohttpTransport(client=session)
    return _Client(
        base_url=base_url,
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
        trust_env=False,
        follow_redirects=False,
    )
