"""Self-checks of the fake upstreams, talking to them with plain httpx.

If these fail, every gateway test built on the fakes is suspect, so they pin
down the documented wire format (status codes, bodies, headers) and the
server's robustness (concurrency, dropped connections, clean shutdown).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.fakes import (
    FakeUpstream,
    data_uri,
    expected_size,
    jpeg_bytes,
    nearest_ratio,
    png_bytes,
    webp_bytes,
)

UUID_LEN = 36


@pytest.fixture(params=["acedata", "xhuoapi"])
def ace(request: pytest.FixtureRequest) -> Iterator[FakeUpstream]:
    """Both synchronous providers: they share one schema, so every check runs twice."""
    with FakeUpstream(request.param) as up:
        yield up


@pytest.fixture
def defapi() -> Iterator[FakeUpstream]:
    with FakeUpstream("defapi") as up:
        yield up


def _gen(up: FakeUpstream, token: str | None = "tok", **body: Any) -> httpx.Response:
    headers = {"accept": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    payload = {"action": "generate", "prompt": "a white siamese cat", **body}
    return httpx.post(f"{up.base_url}/nano-banana/images", json=payload, headers=headers)


def _size_of(url: str) -> tuple[int, int]:
    resp = httpx.get(url)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(resp.content)) as img:
        assert img.format == "PNG"
        return img.size


def _assert_ace_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert len(body["trace_id"]) == UUID_LEN
    return body


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def test_image_helpers_and_tables() -> None:
    for data, fmt in (
        (png_bytes(30, 20), "PNG"),
        (jpeg_bytes(30, 20), "JPEG"),
        (webp_bytes(30, 20), "WEBP"),
    ):
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.size) == (fmt, (30, 20))
    assert expected_size("nano-banana-pro", "16:9", "2K") == (2752, 1536)
    assert expected_size("google/nano-banana-2", "21:9", "4k") == (6336, 2688)
    assert expected_size("nano-banana", "16:9", "4K") == (1344, 768)  # Flash: 1K only
    assert expected_size("nano-banana-pro:official") == (1024, 1024)
    assert nearest_ratio(1920, 1080) == "16:9"
    assert nearest_ratio(1000, 1250) == "3:4"  # 4:5 isn't an AceData ratio


# ---------------------------------------------------------------------------
# acedata / xhuoapi
# ---------------------------------------------------------------------------


def test_generate_ok_real_png_of_documented_size(ace: FakeUpstream) -> None:
    resp = _gen(ace, model="nano-banana-pro", aspect_ratio="16:9", resolution="2K", count=2)
    assert resp.status_code == 200
    body = resp.json()
    assert body["success"] is True
    assert len(body["task_id"]) == UUID_LEN and len(body["trace_id"]) == UUID_LEN
    assert len(body["data"]) == 2
    for item in body["data"]:
        assert item["prompt"] == "a white siamese cat"
        assert item["image_url"].startswith(f"{ace.base_url}/cdn/nanobanana/")
        assert item["image_url"].endswith(".png")
        assert _size_of(item["image_url"]) == (2752, 1536)
    # Defaults: nano-banana, 1:1, 1K, one image.
    only = _gen(ace).json()["data"]
    assert len(only) == 1 and _size_of(only[0]["image_url"]) == (1024, 1024)
    # Flash ignores resolution.
    flash = _gen(ace, model="nano-banana", aspect_ratio="9:16", resolution="4K").json()
    assert _size_of(flash["data"][0]["image_url"]) == (768, 1344)


def test_edit_takes_ratio_from_first_image(ace: FakeUpstream) -> None:
    portrait = data_uri(png_bytes(600, 900))  # 2:3
    resp = _gen(
        ace, action="edit", model="nano-banana-2", image_urls=[portrait], aspect_ratio="16:9"
    )
    assert resp.status_code == 200, resp.text
    assert _size_of(resp.json()["data"][0]["image_url"]) == (848, 1264)
    # An http link can't be inspected offline: 1:1.
    resp = _gen(ace, action="edit", image_urls=["https://example.invalid/a.png"])
    assert _size_of(resp.json()["data"][0]["image_url"]) == (1024, 1024)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"action": None}, "action"),
        ({"action": "paint"}, "action"),
        ({"prompt": ""}, "prompt"),
        ({"model": "dall-e-3"}, "model is invalid."),
        ({"action": "edit"}, "image_urls"),
        ({"action": "edit", "image_urls": []}, "image_urls"),
        ({"aspect_ratio": "21:9"}, "aspect_ratio"),
        ({"resolution": "8K"}, "resolution"),
        ({"count": 0}, "count"),
        ({"count": 5}, "count"),
        ({"action": "edit", "image_urls": ["data:image/png;base64,!!"]}, "image_urls"),
    ],
)
def test_validation_errors(ace: FakeUpstream, body: dict[str, Any], fragment: str) -> None:
    payload = {"action": "generate", "prompt": "x", **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    resp = httpx.post(
        f"{ace.base_url}/nano-banana/images", json=payload, headers={"authorization": "Bearer tok"}
    )
    err = _assert_ace_error(resp, 400, "bad_request")
    assert fragment in err["error"]["message"]


def test_missing_or_malformed_token(ace: FakeUpstream) -> None:
    _assert_ace_error(_gen(ace, token=None), 401, "invalid_token")
    resp = httpx.post(
        f"{ace.base_url}/nano-banana/images",
        json={"action": "generate"},
        headers={"authorization": "Basic abc"},
    )
    _assert_ace_error(resp, 401, "invalid_token")
    # The scheme is case-insensitive, as in HTTP.
    resp = httpx.post(
        f"{ace.base_url}/nano-banana/images",
        json={"action": "generate", "prompt": "x"},
        headers={"Authorization": "bearer tok"},
    )
    assert resp.status_code == 200


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        ("invalid_token", 401, "invalid_token"),
        ("token_expired", 401, "token_expired"),
        ("used_up", 403, "used_up"),
        ("forbidden", 403, "forbidden"),
        ("rate_limit", 429, "too_many_requests"),
        ("server_error", 500, "api_error"),
        ("bad_request", 400, "bad_request"),
    ],
)
def test_error_behaviours(ace: FakeUpstream, behaviour: str, status: int, code: str) -> None:
    ace.behave("tok", behaviour)
    body = _assert_ace_error(_gen(ace), status, code)
    if behaviour == "bad_request":
        assert body["error"]["message"] == "model is invalid."
    if behaviour == "forbidden":
        assert "refused" in body["error"]["message"]


def test_rate_limit_retry_after(ace: FakeUpstream) -> None:
    ace.behave("a", "rate_limit")
    ace.behave("b", "rate_limit", retry_after=7)
    ace.behave("c", "rate_limit", retry_after=None)
    assert _gen(ace, token="a").headers["retry-after"] == "1"
    assert _gen(ace, token="b").headers["retry-after"] == "7"
    assert "retry-after" not in _gen(ace, token="c").headers


def test_behaviour_sequence_and_default(ace: FakeUpstream) -> None:
    ace.behave("tok", ["server_error", "rate_limit", "ok"])
    assert [_gen(ace).status_code for _ in range(4)] == [500, 429, 200, 200]
    assert _gen(ace, token="other").status_code == 200  # default "ok"
    with FakeUpstream(ace.kind, default=["used_up", "ok"]) as up:
        assert [_gen(up, token="x").status_code for _ in range(2)] == [403, 200]
        assert _gen(up, token="y").status_code == 403  # each token walks the default anew


def test_drop_invalid_json_partial_empty(ace: FakeUpstream) -> None:
    ace.behave("drop", "drop")
    with pytest.raises(httpx.HTTPError):
        _gen(ace, token="drop")
    ace.behave("junk", "invalid_json")
    resp = _gen(ace, token="junk")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        resp.json()
    ace.behave("part", "partial")
    assert len(_gen(ace, token="part", count=4).json()["data"]) == 1
    ace.behave("none", "empty")
    assert _gen(ace, token="none", count=2).json()["data"] == []


def test_slow_timeout_and_latency(ace: FakeUpstream) -> None:
    ace.behave("slow", "slow", sleep=0.3)
    t0 = time.monotonic()
    assert _gen(ace, token="slow").status_code == 200
    assert time.monotonic() - t0 >= 0.3
    ace.behave("hang", "timeout")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{ace.base_url}/nano-banana/images",
            json={"action": "generate", "prompt": "x"},
            headers={"authorization": "Bearer hang"},
            timeout=0.3,
        )
    # The fake notices the hang-up and stops counting the request as in flight.
    deadline = time.monotonic() + 2
    while ace.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ace.in_flight == 0
    with FakeUpstream(ace.kind, latency=0.2) as up:
        t0 = time.monotonic()
        assert _gen(up).status_code == 200
        assert time.monotonic() - t0 >= 0.2


def test_recording(ace: FakeUpstream) -> None:
    _gen(ace, token="rec", model="nano-banana-2")
    _gen(ace, token="other")
    (rec,) = ace.calls(token="rec")
    assert rec.method == "POST"
    assert rec.path == ace.submit_path
    assert rec.token == "rec"
    assert rec.headers["authorization"] == "Bearer rec"
    assert rec.json == {
        "action": "generate",
        "prompt": "a white siamese cat",
        "model": "nano-banana-2",
    }
    assert len(ace.calls(path="/nano-banana/images")) == 2
    assert len(ace.generation_calls()) == 2
    assert ace.requests[0].time <= ace.requests[1].time
    ace.reset()
    assert ace.requests == [] and ace.max_concurrent == 0


def test_unknown_path_and_unknown_image(ace: FakeUpstream) -> None:
    resp = httpx.post(
        f"{ace.base_url}/nano-banana/videos", json={}, headers={"authorization": "Bearer t"}
    )
    _assert_ace_error(resp, 404, "no_api")
    assert httpx.get(f"{ace.base_url}/cdn/nanobanana/{'0' * 36}.png").status_code == 404


def test_cdn_behaviours(ace: FakeUpstream) -> None:
    url = _gen(ace).json()["data"][0]["image_url"]
    ace.cdn_behaviour = "browser_ua_only"
    assert httpx.get(url).status_code == 403
    assert httpx.get(url, headers={"user-agent": "Mozilla/5.0"}).status_code == 200
    ace.cdn_behaviour = "not_found"
    assert httpx.get(url).status_code == 404
    ace.cdn_behaviour = "drop"
    with pytest.raises(httpx.HTTPError):
        httpx.get(url)


def test_unknown_behaviour_is_rejected() -> None:
    up = FakeUpstream("acedata")
    with pytest.raises(ValueError):
        up.behave("t", "never")  # a defapi-only behaviour
    with pytest.raises(ValueError):
        FakeUpstream("midjourney")


def test_stop_refuses_and_restart_keeps_url() -> None:
    up = FakeUpstream("acedata").start()
    url = up.base_url
    with httpx.Client() as client:  # keep-alive connection across the stop
        assert client.post(
            f"{url}/nano-banana/images",
            json={"action": "generate", "prompt": "x"},
            headers={"authorization": "Bearer t"},
        ).is_success
        up.stop()
        with pytest.raises(httpx.HTTPError):
            client.post(f"{url}/nano-banana/images", json={}, headers={})
    up.start()
    try:
        assert up.base_url == url
        assert _gen(up).status_code == 200
    finally:
        up.stop()


def test_many_concurrent_requests() -> None:
    with FakeUpstream("xhuoapi", latency=0.3) as up:

        async def run() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:

                async def one(i: int) -> httpx.Response:
                    return await client.post(
                        f"{up.base_url}/nano-banana/images",
                        json={"action": "generate", "prompt": f"p{i}"},
                        headers={"authorization": f"Bearer k{i % 2}"},
                    )

                return await asyncio.gather(*(one(i) for i in range(200)))

        responses = asyncio.run(run())
        assert all(r.status_code == 200 for r in responses)
        assert len({r.json()["task_id"] for r in responses}) == 200
        assert len(up.generation_calls()) == 200
        assert up.max_concurrent > 50  # they really overlapped
        assert 0 < up.max_concurrent_for("k0") <= up.max_concurrent
        assert up.in_flight == 0


# ---------------------------------------------------------------------------
# defapi
# ---------------------------------------------------------------------------


def _submit(up: FakeUpstream, token: str | None = "dk-1", **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    payload = {"model": "google/nano-banana-pro", "prompt": "a cat", **body}
    return httpx.post(f"{up.base_url}/api/image/gen", json=payload, headers=headers)


def _query(up: FakeUpstream, task_id: str, token: str | None = "dk-1") -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{up.base_url}/api/task/query", params={"task_id": task_id}, headers=headers)


def test_defapi_poll_sequence(defapi: FakeUpstream) -> None:
    resp = _submit(defapi, aspect_ratio="16:9", image_size="2k")
    assert resp.status_code == 200
    body = resp.json()
    assert body["code"] == 0 and body["message"] == "ok"
    task_id = body["data"]["task_id"]
    assert task_id.startswith("ta")

    first = _query(defapi, task_id)
    assert first.status_code == 404
    assert first.json() == {"code": 1, "message": "task not found"}

    pending = _query(defapi, task_id)
    assert pending.status_code == 200
    assert pending.json() == {
        "code": 0,
        "message": "ok",
        "data": {
            "task_id": task_id,
            "status": "in_progress",
            "result": None,
            "consumed": "0",
            "status_reason": {"message": None},
        },
    }

    done = _query(defapi, task_id).json()["data"]
    assert done["status"] == "success" and done["consumed"] == "0.500000"
    (item,) = done["result"]
    assert item["image"].startswith(f"{defapi.base_url}/cdn/")
    assert _size_of(item["image"]) == (2752, 1536)
    assert _query(defapi, task_id).json()["data"]["result"] == done["result"]  # stable


def test_defapi_poll_options_and_final_states(defapi: FakeUpstream) -> None:
    defapi.behave("fast", "ok", not_found_polls=0, pending_polls=0)
    tid = _submit(defapi, token="fast", model="google/gempix2").json()["data"]["task_id"]
    url = _query(defapi, tid, token="fast").json()["data"]["result"][0]["image"]
    assert _size_of(url) == (1024, 1024)

    defapi.behave("bad", "failed", not_found_polls=0, pending_polls=2)
    tid = _submit(defapi, token="bad").json()["data"]["task_id"]
    states = [_query(defapi, tid, token="bad").json()["data"] for _ in range(3)]
    assert [s["status"] for s in states] == ["in_progress", "in_progress", "failed"]
    assert states[-1]["result"] is None
    assert states[-1]["status_reason"] == {"message": "content rejected"}

    defapi.behave("txt", "text_result", not_found_polls=0, pending_polls=0)
    tid = _submit(defapi, token="txt").json()["data"]["task_id"]
    data = _query(defapi, tid, token="txt").json()["data"]
    assert data["status"] == "success" and data["result"] == [{"text": "I can't make that"}]

    defapi.behave("slowpoke", "never", not_found_polls=0)
    tid = _submit(defapi, token="slowpoke").json()["data"]["task_id"]
    for _ in range(5):
        assert _query(defapi, tid, token="slowpoke").json()["data"]["status"] == "in_progress"


def test_defapi_errors(defapi: FakeUpstream) -> None:
    assert _submit(defapi, token=None).status_code == 401
    assert _submit(defapi, token=None).json() == {"code": 1, "message": "Invalid API key"}
    no_prompt = httpx.post(
        f"{defapi.base_url}/api/image/gen",
        json={"model": "google/gempix2"},
        headers={"authorization": "Bearer dk-1"},
    )
    assert no_prompt.status_code == 400
    assert no_prompt.json() == {"code": 1, "message": "failed", "detail": "prompt is required"}
    assert _submit(defapi, model=None).status_code == 400
    assert _submit(defapi, model="openai/dall-e-3").status_code == 400
    five = _submit(defapi, images=["https://example.invalid/x.png"] * 5)
    assert five.status_code == 400 and five.json()["detail"] == "images: at most 4"
    assert _submit(defapi, aspect_ratio="7:3").status_code == 400
    assert _submit(defapi, image_size="2K").status_code == 400  # observed values are lower-case

    assert _query(defapi, "ta-nope").status_code == 404
    assert _query(defapi, "ta-nope", token=None).json() == {
        "code": 401,
        "message": "Invalid API key",
    }
    tid = _submit(defapi).json()["data"]["task_id"]
    assert _query(defapi, tid, token="someone-else").status_code == 404

    defapi.behave(
        "e", ["invalid_token", "server_error", "bad_request", "rate_limit"], retry_after=3
    )
    r = [_submit(defapi, token="e") for _ in range(4)]
    assert [x.status_code for x in r] == [401, 500, 400, 429]
    assert r[0].json() == {"code": 1, "message": "Invalid API key"}
    assert r[2].json()["code"] == 1 and r[2].json()["message"] == "failed" and r[2].json()["detail"]
    assert r[3].json() == {"code": 1, "message": "rate limited"}
    assert r[3].headers["retry-after"] == "3"

    defapi.behave("d", ["drop", "invalid_json"])
    with pytest.raises(httpx.HTTPError):
        _submit(defapi, token="d")
    with pytest.raises(ValueError):
        _submit(defapi, token="d").json()


def test_defapi_auto_ratio_from_first_image(defapi: FakeUpstream) -> None:
    defapi.behave("a", "ok", not_found_polls=0, pending_polls=0)
    wide = data_uri(jpeg_bytes(2100, 900), "image/jpeg")  # 21:9
    tid = _submit(defapi, token="a", images=[wide], aspect_ratio="auto").json()["data"]["task_id"]
    url = _query(defapi, tid, token="a").json()["data"]["result"][0]["image"]
    assert _size_of(url) == (1584, 672)
    assert expected_size("google/nano-banana-pro", "21:9") == (1584, 672)
