"""Whatever a caller sends, the parsing and translation layer answers with a domain error
(one that becomes an OpenAI-shaped 4xx) or a valid job: never another exception, which would
be a 500. Likewise for what an upstream sends: its answers become a result or an UpstreamError, its
image bytes an image or BadImage, its links an allowed URL or RefusedUrl."""

from __future__ import annotations

import asyncio
import functools
import io

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.requests import Request

from gateway.api.errors import openai_error
from gateway.api.parse import parse_edit, parse_edit_json, parse_generation
from gateway.config import DEFAULT_ALIASES
from gateway.errors import DomainError
from gateway.models import MODELS, base_model
from gateway.shape.media import BadImage, inspect_image
from gateway.shape.netguard import RefusedUrl, UrlPolicy
from gateway.translate import build_job, parse_size, resolve_model
from gateway.types import ImageRequest
from gateway.upstreams import acedata, defapi
from gateway.upstreams._common import clean_id, is_image_link
from gateway.upstreams.base import FailureKind, UpstreamError

FIELDS = [
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "response_format",
    "output_format",
    "output_compression",
    "background",
    "stream",
    "partial_images",
    "user",
    "style",
    "mask",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "1024x1024",
            "1536x1024",
            "auto",
            "b64_json",
            "url",
            "jpeg",
            "nano-banana-pro",
            "gpt-image-1",
            "dall-e-2",
            "transparent",
            "0x0",
            "99999x1",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=8)


def _translate(parse, body) -> None:
    try:
        req = parse(body)
        job, output = build_job(req, default_model="nano-banana", aliases=DEFAULT_ALIASES)
    except DomainError as err:
        answer = openai_error(err)
        assert 400 <= answer.status < 500
        assert answer.body()["error"]["message"]
        return
    assert 1 <= job.count <= 10
    assert job.prompt.strip()
    assert output.response_format in ("url", "b64_json")


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_generation_bodies_never_crash(body):
    _translate(parse_generation, body)


@settings(max_examples=300, deadline=None)
@given(
    bodies,
    st.lists(
        st.dictionaries(st.sampled_from(["image_url", "file_id", "x"]), json_values, max_size=2),
        max_size=3,
    )
    | json_values,
)
def test_edit_json_bodies_never_crash(body, images):
    parse = functools.partial(parse_edit_json, max_bytes=10 * 1024 * 1024, policy=UrlPolicy())
    _translate(parse, {**body, "images": images})


# --------------------------------------------------------------------------- translation


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=24) | st.from_regex(r"[0-9]{0,6}[xX][0-9]{0,6}", fullmatch=True))
def test_any_size_string_is_a_size_or_a_400_on_size(size):
    try:
        parsed = parse_size(size)
    except DomainError as err:
        answer = openai_error(err)
        assert (answer.status, answer.param) == (400, "size")
        return
    if parsed is not None:
        w, h = parsed
        assert 1 <= w <= 8192 and 1 <= h <= 8192
        assert max(w, h) <= 3 * min(w, h)


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=40)
    | st.sampled_from([*MODELS, "gpt-image-1", "dall-e-3", "nano-banana-pro:official", ""])
)
def test_any_model_name_is_a_model_or_a_404_on_model(name):
    try:
        model = resolve_model(name, "nano-banana", DEFAULT_ALIASES)
    except DomainError as err:
        answer = openai_error(err)
        assert (answer.status, answer.param, answer.code) == (404, "model", "model_not_found")
        return
    assert base_model(model) in MODELS


maybe_text = st.none() | st.text(max_size=12) | st.sampled_from(["auto", "1024x1024", "png"])
requests = st.builds(
    ImageRequest,
    endpoint=st.sampled_from(["generations", "edits"]),
    prompt=st.text(min_size=1, max_size=30),
    model=maybe_text | st.sampled_from(["gpt-image-1", "nano-banana-2-lite", "dall-e-2"]),
    n=st.none() | st.integers(-5, 20),
    size=maybe_text | st.sampled_from(["1536x1024", "4096x4096", "1024x3073", "16x16"]),
    quality=maybe_text,
    response_format=maybe_text | st.sampled_from(["url", "b64_json"]),
    output_format=maybe_text | st.sampled_from(["jpeg", "jpg", "webp"]),
    output_compression=st.none() | st.integers(-10, 200),
    background=maybe_text | st.sampled_from(["transparent", "opaque"]),
    stream=st.booleans(),
    images=st.lists(
        st.sampled_from(["https://cdn.example.com/a.png", "data:image/png;base64,"])
    ).map(tuple),
    first_image_size=st.none() | st.tuples(st.integers(1, 9000), st.integers(1, 9000)),
    mask=st.none() | st.sampled_from(["https://cdn.example.com/m.png", "data:image/png;base64,"]),
)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_any_parsed_request_translates_or_is_a_4xx(req):
    try:
        job, output = build_job(req, default_model="nano-banana", aliases=DEFAULT_ALIASES)
    except DomainError as err:
        answer = openai_error(err)
        assert 400 <= answer.status < 500 and answer.message
        return
    assert 1 <= job.count <= 10
    assert output.response_format in ("url", "b64_json")
    assert job.resolution in (None, "1K", "2K", "4K")


# --------------------------------------------------------------------------- multipart


def _encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 10), (200, 10, 10)).save(out, fmt)
    return out.getvalue()


IMAGES = [_encoded(f) for f in ("PNG", "JPEG", "WEBP", "GIF")]
file_bytes = (
    st.sampled_from(IMAGES)
    | st.sampled_from(IMAGES).flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i]))
    | st.binary(max_size=64)
)
header_text = st.text(
    st.characters(codec="ascii", exclude_characters='"\r\n\\'), min_size=0, max_size=12
)
part_names = (
    st.sampled_from(
        ["image", "image[]", "mask", "prompt", "n", "size", "model", "stream", "response_format"]
    )
    | header_text
)
parts = st.lists(
    st.one_of(
        st.tuples(
            st.just("file"),
            part_names,
            header_text,
            st.sampled_from(["image/png", "application/octet-stream", "text/plain", ""]),
            file_bytes,
        ),
        st.tuples(
            st.just("field"),
            part_names,
            st.just(""),
            st.just(""),
            st.text(max_size=20).map(str.encode),
        ),
    ),
    max_size=6,
)


def _multipart(boundary: str, items) -> bytes:
    out = b""
    for kind, name, filename, ctype, value in items:
        disposition = f'form-data; name="{name}"'
        if kind == "file":
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def _parse_edit(body: bytes, content_type: str, chunk: int) -> ImageRequest:
    """A real Starlette request over the given bytes, delivered in chunks of `chunk`."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> dict:
        data = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": data, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/images/edits",
        "headers": [(b"content-type", content_type.encode())],
    }
    return await parse_edit(Request(scope, receive), max_bytes=4096, policy=UrlPolicy())


def _check_edit(body: bytes, content_type: str, chunk: int) -> None:
    try:
        req = asyncio.run(_parse_edit(body, content_type, chunk))
    except DomainError as err:
        answer = openai_error(err)
        assert 400 <= answer.status < 500
        assert set(answer.body()["error"]) == {"message", "type", "param", "code"}
        return
    assert req.prompt.strip()
    assert 1 <= len(req.images) <= 16
    for ref in req.images:
        assert ref.startswith(
            (
                "data:image/png;",
                "data:image/jpeg;",
                "data:image/webp;",
                "data:image/gif;",
                "https://",
                "http://",
            )
        )


@settings(max_examples=250, deadline=None)
@given(parts, st.sampled_from(["b0und", "----x"]), st.integers(1, 300), st.booleans())
def test_any_multipart_shape_is_an_edit_or_a_4xx(items, boundary, chunk, with_prompt):
    if with_prompt:
        items = [*items, ("field", "prompt", "", "", b"edit this")]
    _check_edit(_multipart(boundary, items), f"multipart/form-data; boundary={boundary}", chunk)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=300),
    st.sampled_from(
        [
            "multipart/form-data; boundary=b",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "application/json",
            "text/plain",
            "",
        ]
    ),
    st.integers(1, 64),
)
def test_any_bytes_as_an_edit_body_are_an_edit_or_a_4xx(body, content_type, chunk):
    _check_edit(body, content_type, chunk)


# --------------------------------------------------------------------------- untrusted bytes


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=200)
    | st.sampled_from(IMAGES).flatmap(
        lambda b: st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)).map(
            lambda p: b[: p[0]] + bytes([p[1]]) + b[p[0] + 1 :]
        )
    )
    | st.sampled_from(IMAGES).flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i])),
    st.booleans(),
)
def test_any_bytes_are_an_image_or_bad_image(data, decode):
    try:
        info = inspect_image(data, decode=decode)
    except BadImage as exc:
        assert str(exc)
        return
    assert info.mime in ("image/png", "image/jpeg", "image/webp", "image/gif")
    assert info.size[0] >= 1 and info.size[1] >= 1


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=40)
    | st.builds(
        lambda scheme, host, rest: f"{scheme}://{host}{rest}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "file", ""]),
        st.text(max_size=20)
        | st.ip_addresses().map(str)
        | st.sampled_from(["[::1]", "127.1", "0x7f.1", "a.b"]),
        st.text(max_size=10),
    )
)
def test_any_url_is_allowed_or_refused_cleanly(url):
    policy = UrlPolicy()
    try:
        checked = policy.check_url(url)
    except RefusedUrl as exc:
        assert str(exc)
        return
    assert checked.startswith(("http://", "https://"))
    assert policy.check_url(checked) == checked  # what was allowed stays allowed


@settings(max_examples=300, deadline=None)
@given(
    st.integers(100, 599),
    json_values
    | st.dictionaries(
        st.sampled_from(["success", "data", "error", "task_id", "trace_id"]), json_values
    ),
    st.none() | st.text(max_size=10),
)
def test_any_acedata_answer_is_a_result_or_an_upstream_error(status, payload, retry_after):
    try:
        result = acedata.parse_answer(status, payload, retry_after, "ace")
    except UpstreamError as exc:
        assert isinstance(exc.kind, FailureKind)
        return
    assert result.images and all(is_image_link(i) for i in result.images)


@settings(max_examples=300, deadline=None)
@given(
    json_values
    | st.dictionaries(
        st.sampled_from(["status", "result", "status_reason"]),
        json_values | st.sampled_from(["success", "failed", "pending"]),
    )
)
def test_any_defapi_task_is_pending_a_result_or_an_upstream_error(data):
    try:
        result = defapi.read_task(data, "def", "ta1")
    except UpstreamError as exc:
        assert isinstance(exc.kind, FailureKind)
        return
    assert result is None or all(is_image_link(i) for i in result.images)


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(["", "tok-secret-1"]))
def test_any_provider_id_is_plain_or_dropped(value, token):
    cleaned = clean_id(value, token or None)
    assert cleaned is None or (
        cleaned == value and cleaned.isprintable() and " " not in cleaned and len(cleaned) <= 128
    )
