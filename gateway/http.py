"""HTTP plumbing shared by every layer: the outbound client factory and the capped read.

One httpx client per upstream (and one for image downloads) for the life of the process,
over aiohttp's connection pool: measured on this kind of machine it holds thousands of
slow upstream calls with far less queueing than httpx's own pool.

A call that dies on a reused keep-alive connection within moments and before any byte of
an answer came back met a connection the peer had already closed (its idle timer fired as
we sent, it restarted, or we were paused past its keep-alive timeout), so the provider
never handled it: it is sent again at once, not reported as a failure. aiohttp does that
itself only for idempotent methods, and the provider calls are POSTs.
"""

from __future__ import annotations

import asyncio
import resource
import weakref
from collections.abc import AsyncIterable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from aiohttp import ClientOSError, ClientRequest, ServerDisconnectedError
from aiohttp.abc import AbstractResolver
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from httpx_aiohttp import AiohttpTransport

# Image calls wait minutes each, so thousands may be open at once; aiohttp's default of
# 100 connections would queue them behind each other. The image fetcher keeps this bound;
# an upstream's is sized from the open-file limit (connection_limit).
MAX_CONNECTIONS = 4096
# Files a process needs besides its sockets: logs, the state directory, Python's own.
_RESERVED_FILES = 256
_MIN_CONNECTIONS = 100


def open_file_limit() -> int:
    """This process's soft limit on open files (raised to the hard one at start)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_limit(configured: int | None, files: int) -> int:
    """An upstream client's connection bound: the configured one, else half of what the
    open files allow (every call waiting on a provider also holds its caller's socket)."""
    if configured is not None:
        return configured
    return max(_MIN_CONNECTIONS, (files - _RESERVED_FILES) // 2)


def connection_warning(
    name: str, limit: int, files: int, tokens: int, per_token: int | None
) -> str | None:
    """Why the upstream's connection bound is too low for what is configured, or None."""
    if per_token is not None and tokens * per_token > limit:
        return (
            f"upstream {name}: max_connections {limit} is below what its tokens may have in "
            f"flight ({tokens} x max_concurrency {per_token}): calls will wait for a connection"
        )
    if 2 * limit + _RESERVED_FILES > files:
        return (
            f"upstream {name}: max_connections {limit} needs about {2 * limit + _RESERVED_FILES}"
            f" open files and the limit is {files}: raise it (ulimit -n) or lower max_connections"
        )
    return None


# Re-sends of one call after stale connections. After a provider restart several pooled
# connections may all be dead, so one is not enough; past this the failure is real.
MAX_STALE_RETRIES = 3

# A stale connection fails within a round trip of being used. A reused connection that
# fails later than this had the request in the provider's hands long enough for it to act
# on it (and bill it): sending it again could make the images twice.
STALE_WINDOW_SECONDS = 5.0


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


class Client(httpx.AsyncClient):
    """httpx's client with the cookie jar above, and a lighter `send` for what the gateway
    sends through it."""

    _no_cookies = _NoCookies()

    def __init__(self, *, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self.transport = transport
        # What build_request merges into every request, taken once (the client's headers
        # and timeout are set at construction and never changed).
        self._defaults = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers.raw]
        self._extensions = {"timeout": self.timeout.as_dict()}

    def prepare(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str],
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        """What `build_request` makes for an absolute URL (see `resolved`) and lower-case
        `headers`, for a client without cookies or query parameters of its own: the
        client's headers, less those `headers` replace, then `headers`. At half the cost:
        build_request copies and merges the client's headers, cookies, parameters and
        timeout anew for every request."""
        merged = [(k, v) for k, v in self._defaults if k.lower() not in headers]
        merged += headers.items()
        return httpx.Request(
            method, url, params=params, headers=merged, content=content, extensions=self._extensions
        )

    @property  # type: ignore[override,misc]
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    async def open(self, request: httpx.Request) -> httpx.Response:
        """`send(request, stream=True)` for a client with no auth, no event hooks, no
        proxies or mounts, no cookies and no redirects followed, as make_client builds
        them: the request goes straight to the transport. httpx's send would pass it
        through an auth generator, a redirect loop, an exception context and a stream
        wrapper that times the answer (with the URL parsed once, about a tenth of a cache
        miss's instructions went to these layers; bench/RESULTS.md), none of which has
        anything to do here. Read the answer's stream, then `aclose()` it."""
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        response = await self.transport.handle_async_request(request)
        response.request = request
        return response


@dataclass(slots=True)
class _Attempt:
    """One send of a request: when (loop time) it took a pooled connection, if it did, and
    how many connections it took (more than one: aiohttp sent an idempotent request again
    itself after a stale connection)."""

    reused_at: float | None = None
    connects: int = 0


# The attempt the current task is making. The connector marks reuse while the requesting
# task waits for its connection, so a per-task value ties the mark to its request;
# concurrent requests are other tasks, each with its own value.
_attempt: ContextVar[_Attempt | None] = ContextVar("gateway_http_attempt", default=None)


class _ReuseMarkingConnector(aiohttp.TCPConnector):
    """aiohttp's connector, telling the current attempt when it hands out a pooled
    connection. (aiohttp's TraceConfig hook for the same cost about 40 us of CPU per call,
    a tenth of a call's client side: a Trace object and a signal send per phase of every
    request, for one hook.)"""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Connections that have carried a request: handed out again, they are reused.
        self._carried: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        attempt = _attempt.get()
        if attempt is not None:
            attempt.connects += 1
        proto = conn.protocol
        if proto is not None:
            if proto in self._carried:
                if attempt is not None:
                    attempt.reused_at = asyncio.get_running_loop().time()
            else:
                self._carried.add(proto)
        return conn


def _was_stale(exc: BaseException | None, attempt: _Attempt, request: httpx.Request) -> bool:
    """Whether a failed send can only have met a connection the peer had already given up."""
    if not isinstance(exc, ServerDisconnectedError | ClientOSError):
        return False
    if attempt.reused_at is None:
        return False  # a fresh connection failing is the provider's failure
    if asyncio.get_running_loop().time() - attempt.reused_at > STALE_WINDOW_SECONDS:
        return False
    if isinstance(exc, ServerDisconnectedError) and not isinstance(exc.message, str):
        # Part of an answer's head arrived: the provider was answering. (aiohttp's C parser
        # reports even a partial status line; its pure-Python one only whole lines.)
        return False
    # Bytes in hand can be sent again; a stream cannot.
    return isinstance(request.stream, httpx.ByteStream)


class _Transport(AiohttpTransport):
    """httpx over aiohttp, sending a request again when it met a stale pooled connection.

    Done here rather than as an aiohttp client middleware, which aiohttp wraps in closures
    built anew for every request: a coroutine frame less per waiting call, and less CPU.
    Everything the send raises came before the answer's head was read (it returns once
    the head is in), so no answer is ever thrown away; each re-send is a new aiohttp
    request, nothing of the failed one is used again."""

    def __init__(
        self,
        *,
        client: Callable[[], aiohttp.ClientSession],
        on_stale: Callable[[], None] | None,
    ) -> None:
        super().__init__(client=client)
        self._on_stale = on_stale

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        retries = 0
        while True:
            attempt = _Attempt()
            token = _attempt.set(attempt)
            try:
                return await super().handle_async_request(request)
            except (httpx.TransportError, aiohttp.ClientError) as exc:
                # httpx_aiohttp raises httpx's error from aiohttp's (some it lets through).
                cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
                if retries >= MAX_STALE_RETRIES or not _was_stale(cause, attempt, request):
                    raise
            finally:
                _attempt.reset(token)
                self._count_stale(attempt.connects - 1)  # aiohttp's own re-sends (GETs)
            retries += 1
            self._count_stale(1)

    def _count_stale(self, resends: int) -> None:
        if self._on_stale is not None:
            for _ in range(resends):
                self._on_stale()


def resolved(client: httpx.AsyncClient, path: str) -> httpx.URL:
    """`path` under the client's base URL, merged and parsed once. Given a str, httpx
    parses it and merges it with the base URL again on every request (a third of what
    building a request costs); given this URL, it takes it as it is."""
    return client.build_request("GET", path).url


def make_client(
    base_url: str = "",
    *,
    timeout: float,
    max_connections: int = MAX_CONNECTIONS,
    resolver: Callable[[], AbstractResolver] | None = None,
    on_stale: Callable[[], None] | None = None,
) -> Client:
    """An httpx client over the aiohttp transport, for one upstream or the image fetcher.

    No proxies or netrc from the environment: the gateway talks to what it is told (and a
    proxy would resolve names itself, past a guarding `resolver`, which is built with the
    session, inside the running loop). Redirects are not followed: the fetcher checks
    every hop itself. Callers bound each call whole (asyncio.timeout); `timeout` bounds
    only getting a connection. A call that met a stale keep-alive connection is sent again
    at once (see the module's docstring); `on_stale` is told of each such re-send."""

    def session() -> aiohttp.ClientSession:
        # Built lazily, inside the running loop, as aiohttp requires.
        return aiohttp.ClientSession(
            connector=_ReuseMarkingConnector(
                limit=max_connections,
                limit_per_host=0,
                resolver=resolver() if resolver is not None else None,
            ),
            trust_env=False,
        )

    # The transport calls the factory on its first request and keeps the session.
    return Client(
        base_url=base_url,
        transport=_Transport(client=session, on_stale=on_stale),
        # No read timeout of its own: every call is bounded whole by its caller
        # (asyncio.timeout in upstreams/_common.call and shape/fetch), which a peer
        # trickling bytes cannot outlast; a second timer per call, re-armed on every chunk
        # read, would only cost CPU and memory for each waiting call.
        timeout=httpx.Timeout(None, connect=min(timeout, 30.0), pool=timeout),
        trust_env=False,
        follow_redirects=False,
    )
