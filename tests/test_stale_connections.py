"""A call that meets a kept-alive connection the provider has already closed is sent again
at once on another one, and is nobody's failure; a connection failing any other way still
counts against the token and the upstream."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from gateway.http import MAX_STALE_RETRIES, make_client
from tests.support.fakes import FakeUpstream, Recorded
from tests.support.gateway import CLIENTS_TOML, RunningGateway, upstream_toml
from tests.support.metrics import of, settled_metrics

# One attempt per caller request: a call the gateway did not re-send itself fails the
# caller's request outright. The cache is off so repeated requests reach the upstream.
ONE_ATTEMPT = """
[pool]
max_attempts = 1

[cache]
enabled = false
"""

_PROMPTS = itertools.count()


def _generate(gw: RunningGateway) -> openai.types.ImagesResponse:
    return gw.client().images.generate(prompt=f"stale {next(_PROMPTS)}", response_format="url")


def _outcomes(gw: RunningGateway, upstream: str) -> dict[str, float]:
    """nano_banana_upstream_requests_total of one upstream, by outcome."""
    found = of(settled_metrics(gw), "nano_banana_upstream_requests_total")
    return {
        dict(key)["outcome"]: value for key, value in found.items() if ("upstream", upstream) in key
    }


def _token_failures(gw: RunningGateway, upstream: str) -> list[int]:
    [view] = [u for u in gw.admin()["upstreams"] if u["name"] == upstream]
    return [t["consecutive_failures"] for t in view["tokens"]]


def _stale_retries(gw: RunningGateway) -> int:
    [upstream] = gw.pool.upstreams
    return int(upstream.stale_retries)


def _reused(calls: list[Recorded]) -> list[bool]:
    return [c.reused for c in calls]


# ------------------------------------------------------------------ through the gateway


def test_acedata_call_on_a_stale_connection_is_resent_silently(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("tok", ["ok", "stale", "ok"])
    gw = gateway_factory(upstream_toml("ace", fake, ["tok"]) + CLIENTS_TOML + ONE_ATTEMPT)

    assert _generate(gw).data
    assert _generate(gw).data, "with max_attempts = 1, only the silent re-send can save it"

    # The second call met the kept-alive connection of the first and was dropped; its
    # re-send went out on a new connection.
    assert _reused(fake.generation_calls("tok")) == [False, True, False]
    assert _outcomes(gw, "ace") == {"ok": 2.0}
    assert _token_failures(gw, "ace") == [0]
    assert _stale_retries(gw) == 1


def test_drop_on_a_fresh_connection_is_still_a_failure(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("tok", ["drop", "ok"])
    gw = gateway_factory(upstream_toml("ace", fake, ["tok"]) + CLIENTS_TOML + ONE_ATTEMPT)

    with pytest.raises(openai.APIStatusError):
        _generate(gw)

    assert _reused(fake.generation_calls("tok")) == [False], "not sent again"
    assert _outcomes(gw, "ace") == {"connection": 1.0}
    assert _token_failures(gw, "ace") == [1]
    assert _stale_retries(gw) == 0


def test_defapi_submit_on_a_stale_connection_is_resent_silently(fake_factory, gateway_factory):
    fake = fake_factory("defapi")
    fake.behave("tok", ["ok", "stale", "ok"])
    gw = gateway_factory(upstream_toml("def", fake, ["tok"]) + CLIENTS_TOML + ONE_ATTEMPT)

    assert _generate(gw).data
    assert _generate(gw).data

    # The second submit came after the first request's polls, on their connection.
    assert _reused(fake.generation_calls("tok")) == [False, True, False]
    assert _outcomes(gw, "def") == {"ok": 2.0}
    assert _token_failures(gw, "def") == [0]
    assert _stale_retries(gw) == 1


def test_defapi_poll_on_a_stale_connection_is_resent_silently(fake_factory, gateway_factory):
    fake = fake_factory("defapi")
    fake.behave("tok", "ok", stale_polls=1)
    gw = gateway_factory(upstream_toml("def", fake, ["tok"]) + CLIENTS_TOML + ONE_ATTEMPT)

    assert _generate(gw).data

    # The first poll took the submit's connection and was dropped; the re-sent poll
    # opened a new one, which the later polls kept using.
    polls = fake.calls("tok", path="/api/task/query")
    assert _reused(polls)[:2] == [True, False]
    assert len({p.query["task_id"] for p in polls}) == 1
    assert _outcomes(gw, "def") == {"ok": 1.0}
    assert _token_failures(gw, "def") == [0]
    assert _stale_retries(gw) == 1


# ------------------------------------------------------------------ make_client itself


@asynccontextmanager
async def _server(
    drop: Callable[[int], bool], *, partial: bytes = b"", linger: float = 0.0
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP/1.1 echo server on 127.0.0.1 that reads each request (head and
    Content-Length body) and then either answers it or closes the connection, as `drop(n)`
    says for the connection's n-th request (counted from 1). A dropped request gets
    `linger` seconds of silence, then `partial` (no byte by default), then the close.
    Yields the server's URL and the bodies it answered."""
    answered: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in itertools.count(1):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                if drop(n):
                    await asyncio.sleep(linger)
                    writer.write(partial)
                    await writer.drain()
                    break
                answered.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (length, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", answered
    finally:
        server.close()
        await server.wait_closed()


async def test_make_client_resends_after_a_stale_connection() -> None:
    stale: list[None] = []
    # Every connection serves one request and drops the next: each call after the first
    # meets a kept-alive connection that is gone.
    async with _server(lambda n: n >= 2) as (url, answered):
        client = make_client(url, timeout=5, on_stale=lambda: stale.append(None))
        try:
            bodies = [f"call {i}".encode() for i in range(4)]
            for body in bodies:
                response = await client.post("/", content=body)
                assert response.status_code == 200
                assert response.content == body
        finally:
            await client.aclose()
    assert answered == bodies, "every body went out whole, the re-sent ones too"
    assert len(stale) == 3


async def test_make_client_does_not_resend_after_a_fresh_connection_fails() -> None:
    stale: list[None] = []
    async with _server(lambda n: True) as (url, answered):
        client = make_client(url, timeout=5, on_stale=lambda: stale.append(None))
        try:
            with pytest.raises(httpx.TransportError):
                await client.post("/", content=b"x")
        finally:
            await client.aclose()
    assert answered == []
    assert stale == []


async def test_make_client_resends_a_bounded_number_of_times() -> None:
    stale: list[None] = []
    pooled = MAX_STALE_RETRIES + 2
    async with _server(lambda n: n >= 2) as (url, answered):
        client = make_client(url, timeout=5, on_stale=lambda: stale.append(None))
        try:
            # Calls at once open as many connections, all kept alive afterwards and all
            # dead to a second request, as after a provider restart.
            await asyncio.gather(*(client.post("/", content=b"open") for _ in range(pooled)))
            with pytest.raises(httpx.TransportError):
                await client.post("/", content=b"x")
        finally:
            await client.aclose()
    assert answered == [b"open"] * pooled
    assert len(stale) == MAX_STALE_RETRIES


async def test_make_client_resends_after_a_pause_past_the_idle_timeout() -> None:
    stale: list[None] = []
    with FakeUpstream("acedata", idle_timeout=0.2) as fake:
        client = make_client(fake.base_url, timeout=5, on_stale=lambda: stale.append(None))
        call = {"action": "generate", "prompt": "a cat"}
        headers = {"authorization": "Bearer tok"}
        try:
            first = await client.post("/nano-banana/images", json=call, headers=headers)
            assert first.status_code == 200
            # Block the loop, as a paused process would: the provider closes the idle
            # connection meanwhile, and nothing here sees it go before the next call.
            time.sleep(0.6)
            second = await client.post("/nano-banana/images", json=call, headers=headers)
            assert second.status_code == 200
        finally:
            await client.aclose()
        calls = fake.generation_calls("tok")
    # The fake never read the call sent on the closed connection.
    assert _reused(calls) == [False, False]
    assert len(stale) == 1


async def test_make_client_does_not_resend_a_streamed_body() -> None:
    stale: list[None] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    async with _server(lambda n: n >= 2) as (url, answered):
        client = make_client(url, timeout=5, on_stale=lambda: stale.append(None))
        try:
            assert (await client.post("/", content=b"first")).status_code == 200
            # Met the stale connection, but a stream cannot be sent a second time.
            with pytest.raises(httpx.TransportError):
                await client.post("/", content=body())
        finally:
            await client.aclose()
    assert answered == [b"first"]
    assert stale == []


@pytest.mark.parametrize(
    ("server", "window"),
    [
        # The status line came: the provider had the request and was answering it.
        pytest.param({"partial": b"HTTP/1.1 200 OK\r\n"}, None, id="part-of-an-answer"),
        # A reused connection that fails only after the provider held the request a while
        # was not stale: the provider may have acted on the call.
        pytest.param({"linger": 0.4}, 0.1, id="late-failure"),
    ],
)
async def test_make_client_does_not_resend_what_the_provider_may_have_acted_on(
    monkeypatch: pytest.MonkeyPatch, server: dict[str, Any], window: float | None
) -> None:
    if window is not None:
        monkeypatch.setattr("gateway.http.STALE_WINDOW_SECONDS", window)
    stale: list[None] = []
    async with _server(lambda n: n >= 2, **server) as (url, answered):
        client = make_client(url, timeout=5, on_stale=lambda: stale.append(None))
        try:
            assert (await client.post("/", content=b"first")).status_code == 200
            with pytest.raises(httpx.TransportError):
                await client.post("/", content=b"second")
        finally:
            await client.aclose()
    assert answered == [b"first"]
    assert stale == []
