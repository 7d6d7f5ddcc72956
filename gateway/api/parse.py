"""The OpenAI request on the wire -> ImageRequest, or an InvalidParameter naming the
parameter for anything malformed.

Generations arrive as JSON (SDKs send null for unset fields: null means default). Edits
arrive as multipart (`image`, `image[]` or repeated `image` parts, order kept; raw bytes
often typed application/octet-stream, so the bytes decide the type) or as JSON with
`images: [{"image_url": ...}]`, and a `mask` likewise. Which fields each takes, of what
type, with which allowed values and bounds, is read from `gateway/fields.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from ..errors import BodyTooLarge, ClientGone, InvalidParameter, invalid
from ..fields import BY_NAME, EDITS, FILE, GENERATIONS, JSON, MAX_IMAGES, names
from ..http import TooLarge, declared_too_large, read_capped
from ..shape.mask import checked_mask, named_mask
from ..shape.media import BadImage, decode_data_uri, inspect_image, to_data_uri
from ..shape.netguard import RefusedUrl, UrlPolicy
from ..types import ImageRequest
from .checks import common_fields, reject_unknown

_GENERATION_FIELDS = names(GENERATIONS, JSON)
_EDIT_JSON_FIELDS = names(EDITS, JSON)
# A multipart text part may carry the name of any field an edit takes; `images` (the JSON
# form's list) is read by nothing there, so such a part is ignored.
_EDIT_PART_NAMES = names(EDITS)
# The parts that may be files: `mask`, and the rest are images.
_FILE_PARTS = names(EDITS, FILE)
# A generation body is a prompt and a few scalars: 32k characters fit well inside this.
MAX_GENERATION_BODY = 1024 * 1024


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused with BodyTooLarge as soon as it grows past max_bytes."""
    declared = request.headers.get("content-length")
    try:
        return await read_capped(request.stream(), max_bytes, declared=declared)
    except TooLarge:
        raise BodyTooLarge(max_bytes) from None
    except ClientDisconnect:
        raise ClientGone() from None


async def read_json(request: Request, max_bytes: int = MAX_GENERATION_BODY) -> Mapping[str, Any]:
    """The body as a JSON object, or an InvalidParameter / BodyTooLarge that says so."""
    body = await read_body(request, max_bytes)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:  # strict: no NaN, no lone surrogate (unencodable later)
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
    reject_unknown(data, _GENERATION_FIELDS)
    return ImageRequest(endpoint="generations", **common_fields(data))


async def parse_edit(request: Request, *, max_bytes: int, policy: UrlPolicy) -> ImageRequest:
    """A /v1/images/edits body (multipart or JSON) -> ImageRequest.

    `max_bytes` bounds each image; the whole body may carry MAX_IMAGES of them. Image URLs
    must be allowed by `policy`.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        # Room for the most images an edit may carry, base64-inflated, plus the fields.
        data = await read_json(request, MAX_IMAGES * max_bytes * 4 // 3 + MAX_GENERATION_BODY)
        # Decoding and checking up to 16 images is CPU work: keep it off the event loop.
        return await asyncio.to_thread(parse_edit_json, data, max_bytes=max_bytes, policy=policy)
    limit = MAX_IMAGES * max_bytes + MAX_GENERATION_BODY
    if declared_too_large(request.headers.get("content-length"), limit):
        raise BodyTooLarge(limit)  # before reading any of it
    if not content_type.startswith("multipart/form-data"):
        raise invalid(
            None,
            "Edits take multipart/form-data (as the OpenAI SDKs send) or a JSON body with "
            f"'images'; got content-type '{content_type or 'none'}'.",
        )
    try:
        # Counted as it streams in: a chunked body has no Content-Length to check first.
        form = await capped(request, limit).form(
            max_files=MAX_IMAGES + 2, max_fields=100, max_part_size=1024 * 1024
        )
    except BodyTooLarge:
        raise
    except ClientDisconnect:
        raise ClientGone() from None
    except Exception as exc:  # malformed multipart: python-multipart raises several types
        detail = str(getattr(exc, "detail", "") or exc)
        if "too many files" in detail.lower():
            raise invalid("image", f"At most {MAX_IMAGES} images per edit.") from None
        raise invalid(None, f"Could not read the multipart body: {detail}") from None
    try:
        return await _edit_from_form(form.multi_items(), max_bytes, policy)
    finally:
        await form.close()


def capped(request: Request, limit: int) -> Request:
    """The same request, whose body reading fails with BodyTooLarge once it passes `limit`
    bytes."""
    receive = request.receive
    received = 0

    async def capped_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return Request(request.scope, capped_receive)


def parse_edit_json(data: Mapping[str, Any], *, max_bytes: int, policy: UrlPolicy) -> ImageRequest:
    """The JSON form of an edit: images as [{"image_url": ...}]."""
    reject_unknown(data, _EDIT_JSON_FIELDS)
    images_raw = data.get("images")
    if not isinstance(images_raw, list) or not images_raw:
        raise invalid(
            "images",
            f"'images' must be a list of 1 to {MAX_IMAGES} {{\"image_url\": ...}} objects.",
        )
    if len(images_raw) > MAX_IMAGES:
        raise invalid("images", f"At most {MAX_IMAGES} images per edit.")
    refs = [_json_image(f"images[{i}]", x, max_bytes, policy) for i, x in enumerate(images_raw)]
    fields = common_fields(data)
    mask = data.get("mask")  # {"image_url": ...} like an image; must match the first image
    if mask is not None:
        mask = named_mask(lambda: _json_image("mask", mask, max_bytes, policy)[0], refs[0][1])
    return ImageRequest(
        endpoint="edits",
        images=tuple(ref for ref, _size in refs),
        first_image_size=refs[0][1],
        mask=mask,
        **fields,
    )


def _json_image(
    where: str, item: Any, max_bytes: int, policy: UrlPolicy
) -> tuple[str, tuple[int, int] | None]:
    """One of the JSON form's images: {"image_url": ...}."""
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
    return _image_reference(url, f"{where}.image_url", max_bytes, policy)


async def _edit_from_form(
    items: list[tuple[str, Any]], max_bytes: int, policy: UrlPolicy
) -> ImageRequest:
    scalars: dict[str, Any] = {}
    images: list[str] = []
    first_size: tuple[int, int] | None = None
    mask: str | None = None
    for name, value in items:
        if name in _FILE_PARTS and name != "mask":
            if len(images) >= MAX_IMAGES:
                raise invalid("image", f"At most {MAX_IMAGES} images per edit.")
            ref, size = await _image_part(value, max_bytes, policy)
            first_size = first_size if images else size
            images.append(ref)
        elif name == "mask":
            if mask is not None:
                raise invalid("mask", "'mask' was sent more than once.")
            mask = (await _image_part(value, max_bytes, policy, "mask"))[0]
        else:
            _add_text_part(scalars, name, value)
    reject_unknown(scalars, _EDIT_PART_NAMES)
    converted = {k: _from_form(k, v) for k, v in scalars.items()}
    if not images:
        raise invalid("image", "An edit needs at least one image: send it as 'image' or 'image[]'.")
    return ImageRequest(
        endpoint="edits",
        images=tuple(images),
        first_image_size=first_size,
        mask=mask and await asyncio.to_thread(checked_mask, mask, first_size),
        **common_fields(converted),
    )


async def _image_part(
    value: Any, max_bytes: int, policy: UrlPolicy, where: str = "image"
) -> tuple[str, tuple[int, int] | None]:
    """An image (or mask) part: a file, or text holding a URL or data: URI."""
    if isinstance(value, UploadFile):
        return await _upload_to_data_uri(value, where, max_bytes)
    return await asyncio.to_thread(_image_reference, str(value), where, max_bytes, policy)


def _add_text_part(scalars: dict[str, Any], name: str, value: Any) -> None:
    if isinstance(value, UploadFile):
        raise invalid(name, f"'{name}' must be a text field, not a file.")
    if name in scalars:
        raise invalid(name, f"'{name}' was sent more than once.")
    scalars[name] = value


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


def _image_too_large(where: str, what: str, max_bytes: int) -> InvalidParameter:
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
    types = BY_NAME[name].types
    if "integer" in types:
        try:
            return int(value)
        except ValueError:
            raise invalid(name, f"'{name}' must be a whole number, got '{value}'.") from None
    if "boolean" in types:
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0", ""):
            return False
        raise invalid(name, f"'{name}' must be true or false, got '{value}'.")
    return value
