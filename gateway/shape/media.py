"""Image bytes: sniffing, data: URIs, sizes, re-encoding, and the mock's placeholder.

The only module that touches Pillow (with shape/mask.py, which composites masked
edits), so the cost and the failure modes of decoding images live in one place.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageDraw, UnidentifiedImageError

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)

# Magic numbers: an upload's Content-Type is often application/octet-stream (the SDKs send
# raw bytes that way), so the bytes decide.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
)


# The formats accepted from callers and from upstreams: what the upstreams take and make,
# by MIME type, as Pillow names them.
ACCEPTED_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}
# The formats an answer can be re-encoded to (OpenAI's output_format) and their MIME types.
OUTPUT_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MIME_OUTPUT = {mime: fmt for fmt, mime in OUTPUT_MIME.items()}
_EXTENSIONS = {"image/jpeg": "jpg", "image/webp": "webp"}


def extension(mime: str) -> str:
    """The file extension for an image's MIME type (png when unknown)."""
    return _EXTENSIONS.get(mime, "png")


# Most pixels an image may have: 8192x8192, twice a 4K Nano Banana Pro image on each side
# and more than any phone photo. Decoding costs memory by pixels, not by file size, and a
# few kilobytes of PNG can claim gigapixels (a decompression bomb).
MAX_IMAGE_PIXELS = 8192 * 8192


class BadImage(ValueError):
    """Bytes that are not an acceptable image; the message says why in words for a caller."""


@dataclass(frozen=True)
class ImageInfo:
    """What inspecting an image found out."""

    mime: str
    size: tuple[int, int]


def sniff_mime(data: bytes) -> str | None:
    """The image type of some bytes from their magic number, or None if not an image."""
    for magic, offset, mime in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "image/avif" if data[8:12] == b"avif" else "image/heic"
    return None


def inspect_image(
    data: bytes, *, decode: bool = False, max_pixels: int = MAX_IMAGE_PIXELS
) -> ImageInfo:
    """Check that bytes are a whole PNG, JPEG, WebP or GIF of sane size; BadImage if not.

    The type comes from the magic number, then Pillow must read the file to its end:
    truncated or damaged files are refused, as are images with more than `max_pixels`
    (checked from the header, before any pixel is decoded). Without `decode` the check is
    cheap in memory (PNG chunks are verified by checksum, JPEG is decoded at 1/8 scale);
    with it every pixel is decoded once, so whatever decodes the image later cannot fail.
    """
    mime = sniff_mime(data)
    if mime not in ACCEPTED_FORMATS:
        raise BadImage("not a PNG, JPEG, WebP or GIF image")
    fmt = ACCEPTED_FORMATS[mime]
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice that: make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            size = _check_pixels(data, fmt, max_pixels)
            if fmt == "PNG":
                with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                    im.verify()  # every chunk's CRC, up to IEND: catches truncation
            if fmt != "PNG" or decode:
                with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                    if fmt == "JPEG" and not decode:
                        im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                    im.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"the image has more than {max_pixels} pixels") from None
    except Exception:  # Pillow raises a zoo of types (OSError, SyntaxError, ...) for damaged files
        raise BadImage(f"the {fmt} file is damaged or truncated") from None
    return ImageInfo(mime=mime, size=size)


def _check_pixels(data: bytes, fmt: str, max_pixels: int) -> tuple[int, int]:
    with Image.open(io.BytesIO(data), formats=[fmt]) as im:
        width, height = im.size
    if width < 1 or height < 1:
        raise BadImage("the image has no pixels")
    if width * height > max_pixels:
        raise BadImage(
            f"the image is {width}x{height}: more than {max_pixels} pixels "
            f"(at most {int(max_pixels**0.5)}x{int(max_pixels**0.5)})"
        )
    return width, height


def to_data_uri(data: bytes, mime: str) -> str:
    """bytes -> 'data:image/png;base64,...'."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def decode_data_uri(uri: str) -> tuple[bytes, str | None] | None:
    """'data:image/png;base64,...' -> (bytes, declared mime); None when not a base64 data URI.

    Raises ValueError when it claims to be one but the base64 is broken.
    """
    m = _DATA_URI.match(uri)
    if not m:
        return None
    try:
        return base64.b64decode(uri[m.end() :], validate=True), m.group("mime")
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the base64 payload is not valid") from exc


def data_uri_head(uri: str, limit: int) -> bytes | None:
    """The first `limit` bytes (or fewer) of a base64 data URI's image, decoding no more
    of the payload than that; None when it is not one or its start is broken."""
    m = _DATA_URI.match(uri)
    if not m:
        return None
    # Every 4 base64 characters are 3 bytes, so a prefix cut at a multiple of 4 decodes.
    chars = -(-limit // 3) * 4
    try:
        return base64.b64decode(uri[m.end() : m.end() + chars], validate=True)[:limit]
    except (binascii.Error, ValueError):
        return None


def header_size(head: bytes) -> tuple[int, int] | None:
    """Width and height of a JPEG or GIF from its first bytes (the file may be cut short
    anywhere after the marker or block giving the size), or None if they do not say.

    Pillow's open reads the header and stops: no pixel is decoded. (It cannot be trusted
    with a cut PNG or WebP: see shape/probe.py.)"""
    mime = sniff_mime(head)
    if mime not in ("image/jpeg", "image/gif"):
        return None
    try:
        with warnings.catch_warnings():
            # Only the size is read; what a size may be is the caller's judgement.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(head), formats=[ACCEPTED_FORMATS[mime]]) as im:
                return im.size
    except Exception:  # Pillow raises a zoo of types (OSError, SyntaxError, ...) for cut files
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header only (no full decode), or None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def reencode(data: bytes, fmt: str, quality: int | None) -> bytes:
    """Re-encode to png/jpeg/webp; quality is OpenAI's output_compression (0-100)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return encode(im, fmt, quality)


def encode(im: Image.Image, fmt: str, quality: int | None) -> bytes:
    """An image encoded as png/jpeg/webp; quality is OpenAI's output_compression (0-100)."""
    out = io.BytesIO()
    if fmt == "jpeg":
        # JPEG has no alpha; flatten on white rather than let Pillow refuse.
        flat: Image.Image = im
        if im.mode not in ("RGB", "L"):
            flat = Image.new("RGB", im.size, (255, 255, 255))
            rgba = im.convert("RGBA")
            flat.paste(rgba, mask=rgba.split()[3])
        flat.save(out, "JPEG", quality=100 if quality is None else max(1, quality))
    elif fmt == "webp":
        im.save(out, "WEBP", quality=100 if quality is None else quality)
    else:
        im.save(out, "PNG", optimize=False)
    return out.getvalue()


def placeholder_png(width: int, height: int, label: str) -> bytes:
    """A real PNG of the given size for the offline mock: a gradient, a frame and the label."""
    im = Image.new("RGB", (width, height), (245, 208, 66))
    draw = ImageDraw.Draw(im)
    # Coarse bands keep drawing cheap even at 4K while making the size obvious at a glance.
    bands = 16
    for i in range(bands):
        shade = 200 - i * 6
        y0 = i * height // bands
        draw.rectangle([0, y0, width, (i + 1) * height // bands], fill=(250, shade, 60))
    edge = max(2, min(width, height) // 64)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(40, 40, 40), width=edge)
    draw.text(
        (edge * 3, edge * 3),
        f"nano-banana-gateway mock\n{width}x{height}\n{label[:80]}",
        fill=(20, 20, 20),
    )
    out = io.BytesIO()
    im.save(out, "PNG", compress_level=1)
    return out.getvalue()
