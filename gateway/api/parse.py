"""The OpenAI request on the wire -> ImageRequest, with a 400 naming the parameter for
anything malformed.

Generations arrive as JSON (SDKs send null for unset fields: null means default). Edits
arrive as multipart (`image`, `image[]` or repeated `image` parts, order kept; raw bytes
often typed application/octet-stream, so the bytes decide the type) or as JSON with
`images: [{"image_url": ...}]`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from ..errors import GatewayError, invalid
from ..media import BadImage, decode_data_uri, inspect_image, to_data_uri
from ..netguard import RefusedUrl, UrlPolicy
from ..types import ImageRequest

MAX_PROMPT = 32000
MAX_IMAGES = 16
_QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")
_BACKGROUNDS = ("auto", "opaque", "transparent")

# Fields OpenAI defines that do not change the picture here; accepted and ignored.
_IGNORED = {
    "user",
    "safety_identifier",
    "moderation",
    "style",
    "input_fidelity",
    "partial_images",
    "prompt_cache_key",
    "markup",
}
_GENERATION_FIELDS = {
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
} | _IGNORED
_EDIT_FIELDS = _GENERATION_FIELDS | {"image", "image[]", "images", "mask"}


# A generation body is a prompt and a few scalars: 32k characters fit well inside this.
MAX_GENERATION_BODY = 1024 * 1024
# Per image when nothing else is said (the upstreams refuse larger ones).
DEFAULT_IMAGE_BYTES = 10 * 1024 * 1024
_DEFAULT_POLICY = UrlPolicy()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused with 413 as soon as it grows past max_bytes."""
    _check_declared_length(request, max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_declared_length(request: Request, max_bytes: int) -> None:
    """Refuse a body whose Content-Length is already too large, before reading any of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)


def _too_large(max_bytes: int) -> GatewayError:
    return GatewayError(
        413,
        f"The request body is larger than this gateway accepts ({max_bytes} bytes).",
        code="request_too_large",
    )


async def read_json(request: Request, max_bytes: int = MAX_GENERATION_BODY) -> Mapping[str, Any]:
    """The body as a JSON object, or a 400/413 that says so."""
    body = await read_body(request, max_bytes)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise invalid(
            None,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        ) from None
    if not isinstance(data, dict):
        raise invalid(None, "The request body must be a JSON object.")
    return data


def parse_generation(data: Mapping[str, Any]) -> ImageRequest:
    """A /v1/images/generations JSON body -> ImageRequest."""
    _reject_unknown(data, _GENERATION_FIELDS)
    return ImageRequest(endpoint="generations", **_common_fields(data))


async def parse_edit(request: Request, *, max_bytes: int) -> ImageRequest:
    """A /v1/images/edits body (multipart or JSON) -> ImageRequest.

    `max_bytes` bounds each image; the whole body may carry MAX_IMAGES of them. Image URLs
    obey the app's network policy (`app.state.url_policy`, set by create_app).
    """
    content_type = request.headers.get("content-type", "")
    app = request.scope.get("app")
    policy = getattr(getattr(app, "state", None), "url_policy", None) or _DEFAULT_POLICY
    if content_type.startswith("application/json"):
        # Room for the most images an edit may carry, base64-inflated, plus the fields.
        data = await read_json(request, MAX_IMAGES * max_bytes * 4 // 3 + MAX_GENERATION_BODY)
        # Decoding and checking up to 16 images is CPU work: keep it off the event loop.
        return await asyncio.to_thread(parse_edit_json, data, max_bytes=max_bytes, policy=policy)
    limit = MAX_IMAGES * max_bytes + MAX_GENERATION_BODY
    _check_declared_length(request, limit)
    if not content_type.startswith("multipart/form-data"):
        raise invalid(
            None,
            "Edits take multipart/form-data (as the OpenAI SDKs send) or a JSON body with "
            f"'images'; got content-type '{content_type or 'none'}'.",
        )
    try:
        # Counted as it streams in: a chunked body has no Content-Length to check first.
        form = await _capped(request, limit).form(
            max_files=MAX_IMAGES + 2, max_fields=100, max_part_size=1024 * 1024
        )
    except GatewayError:
        raise
    except Exception as exc:  # malformed multipart: python-multipart raises several types
        detail = str(getattr(exc, "detail", "") or exc)
        if "too many files" in detail.lower():
            raise invalid("image", f"At most {MAX_IMAGES} images per edit.") from None
        raise invalid(None, f"Could not read the multipart body: {detail}") from None
    try:
        return await _edit_from_form(form.multi_items(), max_bytes, policy)
    finally:
        await form.close()


def _capped(request: Request, limit: int) -> Request:
    """The same request, whose body reading fails with 413 once it passes `limit` bytes."""
    receive = request.receive
    received = 0

    async def capped_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return Request(request.scope, capped_receive)


def parse_edit_json(
    data: Mapping[str, Any],
    *,
    max_bytes: int = DEFAULT_IMAGE_BYTES,
    policy: UrlPolicy = _DEFAULT_POLICY,
) -> ImageRequest:
    """The JSON form of an edit: images as [{"image_url": ...}]."""
    _reject_unknown(data, _EDIT_FIELDS - {"image", "image[]"})
    images_raw = data.get("images")
    if not isinstance(images_raw, list) or not images_raw:
        raise invalid("images", "'images' must be a list of 1 to 16 {\"image_url\": ...} objects.")
    if len(images_raw) > MAX_IMAGES:
        raise invalid("images", f"At most {MAX_IMAGES} images per edit.")
    images: list[str] = []
    first_size: tuple[int, int] | None = None
    for i, item in enumerate(images_raw):
        where = f"images[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, f"'{where}' must be an object with 'image_url'.")
        if "file_id" in item and "image_url" not in item:
            raise invalid(
                f"{where}.file_id",
                "File ids are not supported by this gateway; send 'image_url' (an https URL "
                "or a data: URI) instead.",
            )
        url = item.get("image_url")
        if isinstance(url, dict):  # {"image_url": {"url": ...}} as chat-style clients send
            url = url.get("url")
        if not isinstance(url, str) or not url:
            raise invalid(f"{where}.image_url", f"'{where}.image_url' must be a URL or data: URI.")
        ref, size = _image_reference(url, f"{where}.image_url", max_bytes, policy)
        images.append(ref)
        if i == 0:
            first_size = size
    mask = data.get("mask")
    fields = _common_fields(data)
    return ImageRequest(
        endpoint="edits",
        images=tuple(images),
        first_image_size=first_size,
        mask=mask is not None,
        **fields,
    )


async def _edit_from_form(
    items: list[tuple[str, Any]], max_bytes: int, policy: UrlPolicy
) -> ImageRequest:
    scalars: dict[str, Any] = {}
    images: list[str] = []
    first_size: tuple[int, int] | None = None
    mask = False
    for name, value in items:
        if name in ("image", "image[]"):
            if len(images) >= MAX_IMAGES:
                raise invalid("image", f"At most {MAX_IMAGES} images per edit.")
            where = "image"
            if isinstance(value, UploadFile):
                ref, size = await _upload_to_data_uri(value, where, max_bytes)
            else:
                ref, size = await asyncio.to_thread(
                    _image_reference, str(value), where, max_bytes, policy
                )
            if not images:
                first_size = size
            images.append(ref)
        elif name == "mask":
            mask = isinstance(value, UploadFile) or bool(value)
        elif isinstance(value, UploadFile):
            raise invalid(name, f"'{name}' must be a text field, not a file.")
        elif name in scalars:
            raise invalid(name, f"'{name}' was sent more than once.")
        else:
            scalars[name] = value
    _reject_unknown(scalars, _EDIT_FIELDS)
    converted = {k: _from_form(k, v) for k, v in scalars.items()}
    if not images:
        raise invalid("image", "An edit needs at least one image: send it as 'image' or 'image[]'.")
    return ImageRequest(
        endpoint="edits",
        images=tuple(images),
        first_image_size=first_size,
        mask=mask,
        **_common_fields(converted),
    )


async def _upload_to_data_uri(
    upload: UploadFile, where: str, max_bytes: int
) -> tuple[str, tuple[int, int] | None]:
    data = await upload.read(max_bytes + 1)
    name = upload.filename or "upload"
    if len(data) > max_bytes:
        raise _image_too_large(where, f"Image '{name}'", max_bytes)
    try:
        info = await asyncio.to_thread(inspect_image, data)
    except BadImage as exc:
        raise invalid(
            where, f"Invalid image file '{name}': {exc}.", code="invalid_image_format"
        ) from None
    return to_data_uri(data, info.mime), info.size


def _image_too_large(where: str, what: str, max_bytes: int) -> GatewayError:
    limit = f"{max_bytes // (1024 * 1024)} MB" if max_bytes >= 1024 * 1024 else f"{max_bytes} bytes"
    return invalid(where, f"{what} is larger than {limit}.", code="image_too_large")


def _image_reference(
    url: str, where: str, max_bytes: int, policy: UrlPolicy
) -> tuple[str, tuple[int, int] | None]:
    """Check an image given by reference; data: URIs are decoded to check and measure.

    URLs are handed to the upstream, not fetched here; still, one pointing at an internal
    address is refused, so nobody can use the gateway to aim an upstream (or a later
    download) at a private network.
    """
    if url[:8].lower().startswith(("http://", "https://")):
        try:
            return policy.check_url(url), None
        except RefusedUrl as exc:
            raise invalid(
                where, f"'{where}' is not an allowed image URL: {exc}.", code="invalid_image_url"
            ) from None
    try:
        decoded = decode_data_uri(url)
    except ValueError:
        raise invalid(where, f"'{where}' is a data: URI whose base64 is not valid.") from None
    if decoded is None:
        raise invalid(where, f"'{where}' must be an http(s) URL or a data:image/...;base64, URI.")
    data, _declared = decoded
    if len(data) > max_bytes:
        raise _image_too_large(where, f"'{where}'", max_bytes)
    try:
        info = inspect_image(data)
    except BadImage as exc:
        raise invalid(
            where, f"'{where}' is not a usable image: {exc}.", code="invalid_image_format"
        ) from None
    # Re-label with the sniffed type: upstreams trust the label.
    return to_data_uri(data, info.mime), info.size


def _from_form(name: str, value: str) -> Any:
    """Multipart scalars are text: turn them into what the JSON form would carry."""
    if name in ("n", "output_compression", "partial_images"):
        try:
            return int(value)
        except ValueError:
            raise invalid(name, f"'{name}' must be a whole number, got '{value}'.") from None
    if name == "stream":
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0", ""):
            return False
        raise invalid("stream", f"'stream' must be true or false, got '{value}'.")
    return value


def _reject_unknown(data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise invalid(key, f"Unrecognized request argument supplied: {key}")


def _common_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("prompt", "'prompt' is required and must be a non-empty string.")
    if len(prompt) > MAX_PROMPT:
        raise invalid("prompt", f"'prompt' is too long: at most {MAX_PROMPT} characters.")
    quality = _opt_str(data, "quality")
    if quality is not None and quality not in _QUALITIES:
        raise invalid("quality", f"Invalid quality '{quality}': one of {', '.join(_QUALITIES)}.")
    background = _opt_str(data, "background")
    if background is not None and background not in _BACKGROUNDS:
        raise invalid(
            "background", f"Invalid background '{background}': auto, opaque or transparent."
        )
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", "'stream' must be true or false.")
    partial = _opt_int(data, "partial_images")
    if partial is not None and not 0 <= partial <= 3:
        raise invalid("partial_images", "'partial_images' must be between 0 and 3.")
    for key in ("user", "safety_identifier", "moderation", "style"):
        _opt_str(data, key)
    return {
        "prompt": prompt,
        "model": _opt_str(data, "model"),
        "n": _opt_int(data, "n"),
        "size": _opt_str(data, "size"),
        "quality": quality,
        "response_format": _opt_str(data, "response_format"),
        "output_format": _opt_str(data, "output_format"),
        "output_compression": _opt_int(data, "output_compression"),
        "background": background,
        "stream": bool(stream),
        "partial_images": partial,
        "user": _opt_str(data, "user"),
    }


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(key, f"'{key}' must be a string.")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(key, f"'{key}' must be an integer.")
    return value
