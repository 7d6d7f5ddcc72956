"""The cheaper hot-path pieces give what the ones they replaced gave: the same cache keys
(shared with replicas of earlier versions), the same JSON, the same request ids, and a
store that keeps its bounds and its least recently used order under heavy churn. (How much
cheaper they are is measured in bench/, never asserted here.)"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.middleware import Front, FrontedStarlette, new_request_id, stamp
from gateway.api.responses import ImagesJSONResponse
from gateway.cache.entry import CachedImage, Entry
from gateway.cache.key import KEY_VERSION, cache_key
from gateway.cache.local import LocalStore
from gateway.http import Client, make_client, resolved
from gateway.metering.usage import UsageLog
from gateway.protocol import LightEvent, ReadLimits, _ReadingFlow, protocol_with
from gateway.shutdown import Shutdown
from gateway.types import Job, Output
from gateway.upstreams._common import call
from gateway.upstreams.base import UpstreamError

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


def test_request_ids_look_as_before_and_do_not_repeat() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)


async def _echo_id(request: Request) -> Response:
    return PlainTextResponse(request.state.request_id)


async def _image_app(scope: Scope, receive: Receive, send: Send) -> None:
    response = await _echo_id(Request(scope, receive))
    await response(scope, receive, send)


async def _broken_image_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a bug")


def _fronted(image: ASGIApp, shutdown: Shutdown | None = None) -> FrontedStarlette:
    path = "/v1/images/generations"
    direct = {path: image}
    return FrontedStarlette(
        front=lambda stack: Front(stack, shutdown or Shutdown(1.0), direct),
        routes=[Route(path, image, methods=["POST"]), Route("/other", _echo_id)],
    )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/images/generations", 200),  # straight to the endpoint
        ("GET", "/other", 200),  # through Starlette
        ("GET", "/v1/images/generations", 405),  # Starlette's route, other method
        ("GET", "/nowhere", 404),
    ],
)
def test_every_answer_carries_its_request_id(method: str, path: str, status: int) -> None:
    with TestClient(_fronted(_image_app)) as client:
        answer = client.request(method, path)
    assert answer.status_code == status
    ids = answer.headers.get_list("x-request-id")
    assert len(ids) == 1 and ids[0].startswith("req_")
    if status == 200:
        assert answer.text == ids[0]  # the one request.state.request_id holds


def test_a_bug_in_an_image_endpoint_is_a_500_with_the_request_id_and_is_raised() -> None:
    # Raised on to the server, which logs it.
    with TestClient(_fronted(_broken_image_app)) as client, pytest.raises(RuntimeError):
        client.post("/v1/images/generations")
    with TestClient(_fronted(_broken_image_app), raise_server_exceptions=False) as client:
        answer = client.post("/v1/images/generations")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["x-request-id"].startswith("req_")


def test_image_calls_are_refused_once_shutdown_has_begun() -> None:
    shutdown = Shutdown(1.0)
    with TestClient(_fronted(_image_app, shutdown)) as client:
        shutdown.begin()
        refused = client.post("/v1/images/generations")
        other = client.get("/other")
    assert refused.status_code == 503
    assert refused.headers["x-request-id"].startswith("req_")
    assert other.status_code == 200


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


@contextlib.contextmanager
def _serving(app: Starlette, **options: Any) -> Iterator[str]:
    """`app` under uvicorn (with `options`) in a thread, on a free port: its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="error", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_each_request_waits_on_a_light_event() -> None:
    app = Starlette(routes=[Route("/x", _echo_body, methods=["POST"])])
    with (
        _serving(app, http=protocol_with(ReadLimits())) as url,
        httpx.Client(base_url=url) as client,
    ):
        for body in (b"", b"x" * 10, b"y" * 200_000):  # the last one in several reads
            answer = client.post("/x", content=body)
            assert answer.content == body
            assert answer.headers["x-event"] == "LightEvent"


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

    async with Client(transport=httpx.MockTransport(answer)) as client:
        await call(client, "POST", "http://x/a", upstream="x", timeout=5, json=body,
                   headers={"authorization": "Bearer t"})  # fmt: skip
        await client.post("http://x/b", json=body, headers={"authorization": "Bearer t"})
    ours, theirs = seen
    assert ours.content == theirs.content
    for name in ("content-type", "content-length", "authorization"):
        assert ours.headers.get_list(name) == theirs.headers.get_list(name)


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("POST", {"content": b'{"a": 1}', "headers": {"authorization": "Bearer t"}}),
        ("POST", {"content": b"{}", "headers": {"accept": "application/json", "x-b": "2"}}),
        ("GET", {"params": {"task_id": "t 1/é"}, "headers": {"user-agent": "other"}}),
        ("GET", {"headers": {}}),
    ],
)
def test_prepare_makes_what_build_request_makes(method: str, kwargs: dict[str, Any]) -> None:
    client = make_client("http://127.0.0.1:9/base/", timeout=7)
    url = resolved(client, "/api/task/query")
    ours = client.prepare(method, url, **kwargs)
    theirs = client.build_request(method, "/api/task/query", **kwargs)
    assert (ours.method, ours.url, ours.content) == (theirs.method, theirs.url, theirs.content)
    assert ours.headers.raw == theirs.headers.raw  # the same names, case, values and order
    assert ours.extensions == theirs.extensions


async def _echo_request(request: Request) -> Response:
    seen = {
        "path": request.url.path,
        "query": request.url.query,
        "body": (await request.body()).decode(),
    }
    headers = [[k.decode(), v.decode()] for k, v in request.headers.raw]
    return JSONResponse({**seen, "headers": headers}, status_code=201, headers={"x-a": "1"})


async def test_open_sends_and_answers_as_httpx_send_does() -> None:
    app = Starlette(routes=[Route("/base/{rest:path}", _echo_request, methods=["GET", "POST"])])
    with _serving(app) as root:
        base = root + "/base"
        client = make_client(base, timeout=5)
        try:
            url = resolved(client, "/api/task/query")
            assert url == client.build_request("GET", "/api/task/query").url
            assert str(url) == base + "/api/task/query"
            answers = []
            for method, kwargs in (
                ("POST", {"content": b'{"a": 1}', "headers": {"authorization": "Bearer t"}}),
                ("GET", {"params": {"task_id": "t-1"}, "headers": {"accept": "application/json"}}),
            ):
                for target in (url, "/api/task/query"):
                    pair = []
                    for send in ("open", "send"):
                        request = client.build_request(method, target, **kwargs)
                        if send == "open":
                            resp = await client.open(request)
                        else:
                            resp = await client.send(request, stream=True)
                        body = b"".join([part async for part in resp.aiter_bytes()])
                        await resp.aclose()
                        assert resp.request is request
                        pair.append((resp.status_code, resp.headers.get("x-a"), json.loads(body)))
                    assert pair[0] == pair[1]
                    answers.append(pair[0])
            assert answers[0] == answers[1] and answers[2] == answers[3]
            assert answers[0][0] == 201 and answers[0][2]["body"] == '{"a": 1}'
            assert answers[2][2]["query"] == "task_id=t-1"
        finally:
            await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.open(client.build_request("GET", url))


async def _coded(request: Request) -> Response:
    body = json.dumps({"data": [{"url": "https://x/1.png"}], "pad": "a" * 3000}).encode()
    coding = request.path_params["coding"]
    if coding == "gzip":
        return Response(gzip.compress(body), headers={"content-encoding": "gzip"})
    return Response(body)


@pytest.mark.parametrize("coding", ["identity", "gzip"])
async def test_call_reads_answers_in_any_content_coding(coding: str) -> None:
    app = Starlette(routes=[Route("/base/{coding}", _coded)])
    with _serving(app) as root:
        base = root + "/base"
        client = make_client(base, timeout=5)
        try:
            answer = await call(client, "GET", f"/{coding}", upstream="x", timeout=5)
            with pytest.raises(UpstreamError, match="more than 100 bytes"):
                await call(client, "GET", f"/{coding}", upstream="x", timeout=5, max_bytes=100)
        finally:
            await client.aclose()
    assert json.loads(answer.body)["data"] == [{"url": "https://x/1.png"}]
    assert answer.headers.get("content-encoding") == (coding if coding == "gzip" else None)
