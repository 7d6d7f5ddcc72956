"""Shaping answers: the images JSON, the SSE events, and OpenAI error responses."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..shape.media import MIME_OUTPUT
from ..shape.store import ImageStore
from ..types import ImagesResult, Output, ProducedImage
from .errors import OpenAIError


def error_response(err: OpenAIError, request_id: str | None = None) -> JSONResponse:
    """An OpenAI error body with the error's status and headers."""
    headers = dict(err.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class ImagesJSONResponse(JSONResponse):
    """An images answer's JSON, byte for byte as JSONResponse renders it (compact, UTF-8
    as it is), in orjson: 0.4 us where json.dumps took 13 for a one-link answer (measured
    on the 2-core bench machine under load)."""

    def render(self, content: Any) -> bytes:
        # Copied out of the 4 KiB allocation orjson writes into: a slow client holds it.
        return memoryview(orjson.dumps(content)).tobytes()


def result_headers(result: ImagesResult, output: Output | None = None) -> dict[str, str]:
    """Provider ids a user can hand to the provider's support, who served the request, and
    whether the picture is smaller than the size asked (the model's largest)."""
    headers: dict[str, str] = {}
    if output is not None and output.size_adjusted is not None:
        # The size asked; the answer's `size` says what was made.
        headers["x-gateway-size-adjusted"] = output.size_adjusted
    if result.task_ids:
        headers["x-upstream-task-id"] = ",".join(result.task_ids)
    if result.trace_ids:
        headers["x-upstream-trace-id"] = ",".join(result.trace_ids)
    if result.upstreams:
        headers["x-upstream-name"] = ",".join(sorted(set(result.upstreams)))
    if result.cache != "off":
        headers["x-cache"] = result.cache
    if result.age is not None and result.cache == "hit":
        headers["age"] = str(result.age)
    source = size_source(result)
    if source is not None:
        headers["x-gateway-size"] = source
    return headers


def size_source(result: ImagesResult) -> str | None:
    """Whether the answer's sizes were read from the images ('measured') or, for some
    image that could not be read, are Google's sizes for what was asked ('expected');
    None when not known (links from the cache, which keeps no record of it; no image)."""
    # Bytes held were read whole, so their size was measured, wherever they come from.
    sources = {
        image.size_source or ("measured" if image.data is not None else None)
        for image in result.images
    }
    if "expected" in sources:
        return "expected"
    return "measured" if sources == {"measured"} else None


def _size_text(image: ProducedImage) -> str | None:
    return f"{image.size[0]}x{image.size[1]}" if image.size else None


def _format_of(image: ProducedImage, output: Output) -> str:
    if image.mime in MIME_OUTPUT:
        return MIME_OUTPUT[image.mime]
    return output.output_format or "png"


def images_body(
    result: ImagesResult, output: Output, store: ImageStore, base_url: Callable[[], str]
) -> dict[str, Any]:
    """The /v1/images/* JSON answer."""
    data: list[dict[str, Any]] = []
    for image in result.images:
        if output.response_format == "b64_json":
            assert image.data is not None
            data.append({"b64_json": base64.b64encode(image.data).decode("ascii")})
        elif image.url is not None and image.data is None:
            data.append({"url": image.url})
        else:
            # Bytes without a link (mock, data: URIs, re-encodes): the gateway hosts them.
            assert image.data is not None
            name = store.put(image.data, image.mime or "image/png")
            data.append({"url": f"{base_url().rstrip('/')}/v1/images/store/{name}"})
    return {"created": int(time.time()), "data": data, **_tail(result, output)}


def completed_event(kind: str, image: ProducedImage, output: Output, created: int) -> str:
    """One `image_generation.completed` / `image_edit.completed` SSE event."""
    assert image.data is not None
    payload = {
        "type": f"{kind}.completed",
        "b64_json": base64.b64encode(image.data).decode("ascii"),
        "created_at": created,
        "size": _size_text(image) or "auto",
        "quality": output.quality,
        "background": "opaque",
        "output_format": _format_of(image, output),
        # Nano Banana upstreams bill per image, not per token; the SDK expects the object.
        "usage": {
            "input_tokens": 0,
            "output_tokens": 0,
            "total_tokens": 0,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        },
    }
    return sse(f"{kind}.completed", payload)


def error_event(err: OpenAIError) -> str:
    """An SSE error the SDK raises on (it raises for any data with a non-empty 'error')."""
    return sse("error", {"type": "error", **err.body()})


def sse(event: str, payload: Mapping[str, Any]) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


KEEPALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"


def _tail(result: ImagesResult, output: Output) -> dict[str, Any]:
    """The fields after `data` in an images answer."""
    rest: dict[str, Any] = {"background": "opaque", "quality": output.quality}
    if result.images:
        size = _size_text(result.images[0])
        if size:
            rest["size"] = size
        rest["output_format"] = _format_of(result.images[0], output)
    return rest


def images_b64_parts(result: ImagesResult, output: Output) -> list[bytes]:
    """The b64_json answer as pieces: JSON around each image's base64 bytes, which are
    sent as base64 made them (ASCII, safe inside a JSON string), never copied into a str."""
    parts: list[bytes] = [b'{"created":%d,"data":[' % int(time.time())]
    for i, image in enumerate(result.images):
        assert image.data is not None
        parts.append(b'{"b64_json":"' if i == 0 else b',{"b64_json":"')
        parts.append(base64.b64encode(image.data))
        parts.append(b'"}')
    parts.append(b"]," + json.dumps(_tail(result, output), separators=(",", ":")).encode()[1:])
    return parts


class PartsResponse(Response):
    """A JSON body sent as several pieces, never joined: an 8 MB image's base64 goes out
    without the str, JSON-escaped and UTF-8 copies JSONResponse would make of it."""

    media_type = "application/json"

    def __init__(self, parts: list[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.parts = parts
        self.status_code = 200
        self.background = None
        self.body = b""
        self.init_headers(headers)
        self.headers["content-length"] = str(sum(len(p) for p in parts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self.parts) - 1
        for i, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < last})
