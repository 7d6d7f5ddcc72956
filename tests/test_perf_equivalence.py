"""The cheaper hot-path pieces give what the ones they replaced gave: the same cache keys
(shared with replicas of earlier versions), the same JSON, the same request ids, and a
store that keeps its bounds and its least recently used order under heavy churn. (How much
cheaper they are is measured in bench/, never asserted here.)"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.api.middleware import RequestIdMiddleware, ShutdownMiddleware, stamp
from gateway.api.responses import ImagesJSONResponse
from gateway.cache.entry import CachedImage, Entry
from gateway.cache.key import KEY_VERSION, cache_key
from gateway.cache.local import LocalStore
from gateway.metering.usage import UsageLog
from gateway.protocol import LightEvent, ReadLimits, _ReadingFlow, protocol_with
from gateway.shutdown import Shutdown
from gateway.types import Job, Output
from gateway.upstreams._common import call

_PROMPTS = [
    "a red fox",
    'quotes " and \\ backslashes',
    "new\nlines\tand\x00control\x1f\x7f",
    "ünïcødé 漢字 🍌 \u2028\u2029",
    "",
]


def _json_key(job: Job, output: Output, digests: list[str], mask: str | None) -> str:
    """The key as earlier versions computed it, with the standard library."""
    material = {
        "v": KEY_VERSION,
        "action": job.action,
        "model": job.model,
        "prompt": job.prompt,
        "aspect_ratio": job.aspect_ratio,
        "resolution": job.resolution,
        "n": job.count,
        "output_format": output.output_format,
        "output_compression": output.output_compression,
        "images": digests,
        "mask": mask,
    }
    encoded = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("prompt", _PROMPTS)
@pytest.mark.parametrize(
    ("output", "digests", "mask"),
    [
        (Output("url"), [], None),
        (Output("url", output_format="jpeg", output_compression=50), ["ab", "cd"], "ef"),
    ],
)
def test_cache_keys_are_those_of_earlier_versions(prompt, output, digests, mask) -> None:
    job = Job("generate", prompt, "nano-banana-2", 2, (), "16:9", "2K")
    assert cache_key(job, output, digests, mask) == _json_key(job, output, digests, mask)


@pytest.mark.parametrize("prompt", _PROMPTS)
def test_images_json_is_what_jsonresponse_renders(prompt: str) -> None:
    body = {"created": 1, "data": [{"url": "https://x/" + prompt}], "size": "1024x1024"}
    assert ImagesJSONResponse(body).body == JSONResponse(body).body


def test_usage_lines_are_compact_json(capsys: pytest.CaptureFixture[str]) -> None:
    record: dict[str, Any] = {"request_id": "req_1", "prompt_free": _PROMPTS[3], "cost": 0.039}
    UsageLog("stdout").write(record)
    line = capsys.readouterr().out
    assert line == json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


# ------------------------------------------------------------------ the store


def _links(n: int, created: float) -> Entry:
    return Entry(images=(CachedImage(f"https://cdn/{n}.png", None, None, None),), created=created)


def test_store_under_churn_keeps_its_bounds_and_the_recently_used() -> None:
    evicted: list[str] = []
    store = LocalStore(
        max_bytes=10**9, max_entries=50, ttl=3600, url_ttl=600, on_evict=evicted.append
    )
    now = time.time()
    for i in range(5000):
        assert store.put(f"k{i}", _links(i, now))
        if i % 7 == 0:
            assert store.get("k0") is not None  # used often: never the least recent
    assert len(store) == 50
    assert store.get("k0") is not None and store.get("k4999") is not None
    assert store.get("k4950") is None  # 49 newer entries plus k0
    assert evicted == ["size"] * 4950
    assert len(store._expiries) <= 2 * 50 + 64 + 1, "rows of evicted entries are dropped"


def test_store_replacing_a_key_counts_its_bytes_once() -> None:
    store = LocalStore(max_bytes=10**6, max_entries=10, ttl=60, url_ttl=60)
    entry = _links(1, time.time())
    store.put("k", entry)
    store.put("k", entry)
    assert len(store) == 1 and store.nbytes == entry.nbytes


def test_store_expires_in_order_of_expiry_not_of_arrival() -> None:
    evicted: list[str] = []
    store = LocalStore(max_bytes=10**6, max_entries=10, ttl=60, url_ttl=60, on_evict=evicted.append)
    now = time.time()
    store.put("young", _links(1, now))
    store.put("old", _links(2, now - 59.9))  # a shared entry made long ago elsewhere
    time.sleep(0.2)
    assert len(store) == 1 and store.get("young") is not None
    assert evicted == ["expired"]


# ------------------------------------------------------------------ request ids


def test_stamp_sets_or_replaces_the_request_id() -> None:
    message: dict[str, Any] = {"type": "http.response.start", "headers": ((b"a", b"1"),)}
    stamp(message, b"req_1")
    assert message["headers"] == [(b"a", b"1"), (b"x-request-id", b"req_1")]
    stamp(message, b"req_2")
    assert message["headers"] == [(b"a", b"1"), (b"x-request-id", b"req_2")]
    bare: dict[str, Any] = {"type": "http.response.start"}
    stamp(bare, b"req_3")
    assert bare["headers"] == [(b"x-request-id", b"req_3")]


async def _image(request: Request) -> Response:
    return PlainTextResponse(request.state.request_id)


@pytest.mark.parametrize("path", ["/v1/images/generations", "/other"])
def test_request_ids_when_the_shutdown_middleware_stamps_them(path: str) -> None:
    app = Starlette(
        routes=[Route(path, _image)],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(ShutdownMiddleware, shutdown=Shutdown(1.0), paths=["/v1/images/"]),
        ],
    )
    with TestClient(app) as client:
        answer = client.get(path)
    assert answer.headers.get_list("x-request-id") == [answer.text]
    assert answer.text.startswith("req_")


def test_request_ids_on_their_own() -> None:
    app = Starlette(routes=[Route("/x", _image)], middleware=[Middleware(RequestIdMiddleware)])
    with TestClient(app) as client:
        answer = client.get("/x")
    assert answer.headers.get_list("x-request-id") == [answer.text]


# ------------------------------------------------------------------ flow control


class _Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class _Clock:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def hold_clock(self) -> None:
        self.calls.append("hold")

    def run_clock(self) -> None:
        self.calls.append("run")


async def test_flow_control_drains_at_once_unless_writing_is_paused() -> None:
    clock = _Clock()
    flow = _ReadingFlow(_Transport(), clock)  # type: ignore[arg-type]
    await asyncio.wait_for(flow.drain(), 1)  # writable: no wait
    flow.pause_writing()
    flow.pause_writing()  # idempotent, as uvicorn's
    waiting = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0.01)
    assert not waiting.done() and flow.write_paused
    flow.resume_writing()
    await asyncio.wait_for(waiting, 1)
    assert not flow.write_paused
    await asyncio.wait_for(flow.drain(), 1)

    flow.pause_reading()
    flow.pause_reading()
    flow.resume_reading()
    assert clock.calls == ["hold", "run"] and not flow.read_paused


@pytest.mark.parametrize("make", [asyncio.Event, LightEvent])
async def test_light_event_behaves_as_asyncio_event(make: Any) -> None:
    event = make()
    assert not event.is_set()
    waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    gone = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    event.clear()  # cleared before the waiters run: they were woken all the same
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert not event.is_set()
    late = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0.01)
    assert not late.done()
    event.set()
    event.set()
    assert await late is True and event.is_set()
    assert await asyncio.wait_for(event.wait(), 1) is True


def test_each_request_waits_on_a_light_event() -> None:
    app = Starlette(routes=[Route("/x", _echo_body, methods=["POST"])])
    config = uvicorn.Config(app, port=0, http=protocol_with(ReadLimits()), log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for body in (b"", b"x" * 10, b"y" * 200_000):  # the last one in several reads
                answer = client.post("/x", content=body)
                assert answer.content == body
                assert answer.headers["x-event"] == "LightEvent"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def _echo_body(request: Request) -> Response:
    body = await request.body()
    cycle = request.receive.__self__  # type: ignore[attr-defined]  # uvicorn's cycle
    event = type(cycle.message_event).__name__
    return Response(body, headers={"x-event": event})


async def test_upstream_json_bodies_are_the_bytes_httpx_would_send() -> None:
    body = {"action": "generate", "prompt": _PROMPTS[2] + _PROMPTS[3], "count": 2, "n": None}
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await call(client, "POST", "http://x/a", upstream="x", timeout=5, json=body,
                   headers={"authorization": "Bearer t"})  # fmt: skip
        await client.post("http://x/b", json=body, headers={"authorization": "Bearer t"})
    ours, theirs = seen
    assert ours.content == theirs.content
    for name in ("content-type", "content-length", "authorization"):
        assert ours.headers.get_list(name) == theirs.headers.get_list(name)
