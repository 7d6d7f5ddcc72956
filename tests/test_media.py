"""Tests for image bytes: sniffing, data: URIs, sizes, re-encoding and the mock placeholder."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gateway.shape.media import (
    MAX_IMAGE_PIXELS,
    BadImage,
    decode_data_uri,
    image_size,
    inspect_image,
    placeholder_png,
    reencode,
    sniff_mime,
    to_data_uri,
)
from tests.support.hostile import bomb_png, corrupt_idat_png

PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}


def make_image(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    """Real image bytes from Pillow."""
    colour: tuple[int, ...] | int
    colour = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "L": 90, "LA": (90, 200)}.get(
        mode, 1
    )
    im = Image.new(mode, size, colour)
    out = io.BytesIO()
    im.save(out, fmt)
    return out.getvalue()


def decoded(data: bytes) -> Image.Image:
    """Fully decode bytes with Pillow."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# --------------------------------------------------------------------------- sniff_mime


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        pytest.param("PNG", "image/png", id="png"),
        pytest.param("JPEG", "image/jpeg", id="jpeg"),
        pytest.param("WEBP", "image/webp", id="webp"),
        pytest.param("GIF", "image/gif", id="gif"),
        pytest.param("BMP", "image/bmp", id="bmp"),
    ],
)
def test_sniff_mime_real_images(fmt: str, mime: str) -> None:
    assert sniff_mime(make_image(fmt)) == mime


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"hello world, not an image", id="text"),
        pytest.param(b"%PDF-1.7\n", id="pdf"),
        pytest.param(b"PK\x03\x04zipfile", id="zip"),
        pytest.param(b"RIFF\x24\x00\x00\x00WAVEfmt ", id="riff-wave"),
        pytest.param(b"\x89PN", id="truncated-png-magic"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", id="svg"),
        pytest.param(b"\x00" * 64, id="zeros"),
    ],
)
def test_sniff_mime_junk_is_none(data: bytes) -> None:
    assert sniff_mime(data) is None


def test_sniff_mime_ignores_trailing_bytes() -> None:
    assert sniff_mime(make_image("PNG") + b"trailing junk") == "image/png"


# --------------------------------------------------------------------------- data: URIs


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        pytest.param("PNG", "image/png", id="png"),
        pytest.param("JPEG", "image/jpeg", id="jpeg"),
        pytest.param("WEBP", "image/webp", id="webp"),
    ],
)
def test_data_uri_round_trip(fmt: str, mime: str) -> None:
    data = make_image(fmt)
    uri = to_data_uri(data, mime)
    assert uri.startswith(f"data:{mime};base64,")
    assert decode_data_uri(uri) == (data, mime)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param("data:image/png;base64,aGk=", (b"hi", "image/png"), id="plain"),
        pytest.param("DATA:IMAGE/PNG;BASE64,aGk=", (b"hi", "IMAGE/PNG"), id="upper-case"),
        pytest.param(
            "data:image/png;name=cat.png;base64,aGk=", (b"hi", "image/png"), id="with-param"
        ),
        pytest.param("data:;base64,aGk=", (b"hi", None), id="no-mime"),
        pytest.param("data:image/svg+xml;base64,aGk=", (b"hi", "image/svg+xml"), id="plus-mime"),
        pytest.param("data:image/png;base64,", (b"", "image/png"), id="empty-payload"),
    ],
)
def test_decode_data_uri(uri: str, expected: tuple[bytes, str | None]) -> None:
    assert decode_data_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("https://cdn.example.com/a.png", id="https-url"),
        pytest.param("data:image/png,rawbytes", id="not-base64"),
        pytest.param("data:text/plain;charset=utf-8,hello", id="text-data-uri"),
        pytest.param("iVBORw0KGgo=", id="bare-base64"),
        pytest.param("", id="empty"),
    ],
)
def test_decode_data_uri_not_a_base64_data_uri(uri: str) -> None:
    assert decode_data_uri(uri) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("@@@@", id="bad-characters"),
        pytest.param("aGk", id="missing-padding"),
        pytest.param("aG=k", id="padding-in-middle"),
        pytest.param("aGk=!", id="trailing-junk"),
    ],
)
def test_decode_data_uri_broken_base64_raises(payload: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        decode_data_uri(f"data:image/png;base64,{payload}")


# --------------------------------------------------------------------------- image_size


@pytest.mark.parametrize(
    ("fmt", "size"),
    [
        pytest.param("PNG", (1536, 1024), id="png-landscape"),
        pytest.param("JPEG", (864, 1184), id="jpeg-portrait"),
        pytest.param("WEBP", (33, 17), id="webp-odd"),
        pytest.param("GIF", (1, 1), id="gif-one-pixel"),
    ],
)
def test_image_size(fmt: str, size: tuple[int, int]) -> None:
    assert image_size(make_image(fmt, size)) == size


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not an image at all", id="text"),
        pytest.param(b"\x89PNG\r\n\x1a\n", id="png-magic-only"),
    ],
)
def test_image_size_unreadable_is_none(data: bytes) -> None:
    assert image_size(data) is None


# --------------------------------------------------------------------------- reencode


@pytest.mark.parametrize(
    ("src_fmt", "mode", "fmt", "quality", "pil_format"),
    [
        pytest.param("PNG", "RGB", "jpeg", None, "JPEG", id="png-to-jpeg"),
        pytest.param("PNG", "RGB", "jpeg", 0, "JPEG", id="png-to-jpeg-q0"),
        pytest.param("PNG", "RGBA", "jpeg", 80, "JPEG", id="rgba-to-jpeg"),
        pytest.param("PNG", "LA", "jpeg", 80, "JPEG", id="gray-alpha-to-jpeg"),
        pytest.param("PNG", "P", "jpeg", 80, "JPEG", id="palette-to-jpeg"),
        pytest.param("PNG", "L", "jpeg", 50, "JPEG", id="gray-to-jpeg"),
        pytest.param("GIF", "P", "jpeg", None, "JPEG", id="gif-to-jpeg"),
        pytest.param("PNG", "RGB", "webp", None, "WEBP", id="png-to-webp"),
        pytest.param("PNG", "RGBA", "webp", 0, "WEBP", id="rgba-to-webp-q0"),
        pytest.param("JPEG", "RGB", "webp", 100, "WEBP", id="jpeg-to-webp"),
        pytest.param("JPEG", "RGB", "png", None, "PNG", id="jpeg-to-png"),
        pytest.param("WEBP", "RGB", "png", 50, "PNG", id="webp-to-png"),
        pytest.param("PNG", "RGBA", "png", None, "PNG", id="png-to-png"),
    ],
)
def test_reencode(src_fmt: str, mode: str, fmt: str, quality: int | None, pil_format: str) -> None:
    size = (48, 32)
    out = reencode(make_image(src_fmt, size, mode), fmt, quality)
    im = decoded(out)
    assert im.format == pil_format
    assert im.size == size
    assert sniff_mime(out) == f"image/{fmt}"


def test_reencode_rgba_to_jpeg_flattens_on_white() -> None:
    im = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 8, 16))
    src = io.BytesIO()
    im.save(src, "PNG")
    out = decoded(reencode(src.getvalue(), "jpeg", 95)).convert("RGB")
    r, g, b = out.getpixel((12, 8))  # transparent half
    assert min(r, g, b) > 240
    r, g, b = out.getpixel((3, 8))  # opaque red half
    assert r > 200 and g < 60 and b < 60


def test_reencode_png_keeps_alpha() -> None:
    out = decoded(reencode(make_image("PNG", (8, 8), "RGBA"), "png", None))
    assert out.mode == "RGBA"
    assert out.getpixel((4, 4))[3] == 128


def test_reencode_quality_changes_jpeg_size() -> None:
    noisy = Image.effect_noise((128, 128), 80).convert("RGB")
    src = io.BytesIO()
    noisy.save(src, "PNG")
    small = reencode(src.getvalue(), "jpeg", 10)
    large = reencode(src.getvalue(), "jpeg", 95)
    assert len(small) < len(large)


def test_reencode_junk_raises() -> None:
    with pytest.raises(OSError):
        reencode(b"not an image", "jpeg", None)


# --------------------------------------------------------------------------- placeholder_png


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(1024, 1024, id="1K-square"),
        pytest.param(1376, 768, id="gemini-16-9"),
        pytest.param(832, 1248, id="flash-2-3"),
        pytest.param(2752, 1536, id="pro-16-9-2K"),
        pytest.param(64, 48, id="small"),
        pytest.param(4, 4, id="tiny"),
    ],
)
def test_placeholder_png_size(width: int, height: int) -> None:
    data = placeholder_png(width, height, "a banana")
    assert sniff_mime(data) == "image/png"
    assert image_size(data) == (width, height)
    im = decoded(data)
    assert (im.format, im.size) == ("PNG", (width, height))


def test_placeholder_png_is_not_blank() -> None:
    im = decoded(placeholder_png(256, 256, "label")).convert("RGB")
    colours = im.getcolors(maxcolors=256 * 256)
    assert colours is not None
    assert len(colours) > 2


def test_placeholder_png_long_label() -> None:
    data = placeholder_png(128, 96, "x" * 5000)
    assert decoded(data).size == (128, 96)


# --------------------------------------------------------------------------- inspect_image


@pytest.mark.parametrize("decode", [False, True], ids=["cheap", "decode"])
@pytest.mark.parametrize(
    ("fmt", "mime", "size"),
    [
        pytest.param("PNG", "image/png", (1536, 1024), id="png"),
        pytest.param("JPEG", "image/jpeg", (864, 1184), id="jpeg"),
        pytest.param("WEBP", "image/webp", (33, 17), id="webp"),
        pytest.param("GIF", "image/gif", (1, 1), id="gif"),
    ],
)
def test_inspect_image_accepts_whole_images(fmt, mime, size, decode):
    info = inspect_image(make_image(fmt, size), decode=decode)
    assert (info.mime, info.size) == (mime, size)


def _cut(fmt: str, keep: float) -> bytes:
    noisy = Image.effect_noise((96, 64), 80).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, fmt)
    data = out.getvalue()
    return data[: int(len(data) * keep)]


@pytest.mark.parametrize("decode", [False, True], ids=["cheap", "decode"])
@pytest.mark.parametrize(
    ("data", "words"),
    [
        pytest.param(b"", "not a PNG", id="empty"),
        pytest.param(b"hello", "not a PNG", id="text"),
        pytest.param(make_image("BMP"), "not a PNG", id="bmp-not-accepted"),
        pytest.param(b"\x89PNG\r\n\x1a\n", "damaged or truncated", id="png-magic-only"),
        pytest.param(_cut("PNG", 0.5), "damaged or truncated", id="png-half"),
        pytest.param(_cut("PNG", 0.98), "damaged or truncated", id="png-no-iend"),
        pytest.param(_cut("JPEG", 0.5), "damaged or truncated", id="jpeg-half"),
        pytest.param(_cut("JPEG", 0.99), "damaged or truncated", id="jpeg-no-eoi"),
        pytest.param(_cut("WEBP", 0.9), "damaged or truncated", id="webp-cut"),
        pytest.param(_cut("GIF", 0.5), "damaged or truncated", id="gif-half"),
        pytest.param(b"\xff\xd8\xff" + b"\0" * 50, "damaged or truncated", id="jpeg-magic-junk"),
        pytest.param(bomb_png(), "pixels", id="decompression-bomb"),
    ],
)
def test_inspect_image_refuses(data, words, decode):
    with pytest.raises(BadImage, match=words):
        inspect_image(data, decode=decode)


def test_inspect_image_pixel_limit_is_read_from_the_header():
    # 9000x9000 is over the limit but under Pillow's own bomb threshold: our check says so.
    wide = io.BytesIO()
    Image.new("1", (9000, 9000)).save(wide, "PNG")
    assert MAX_IMAGE_PIXELS < 9000 * 9000
    with pytest.raises(BadImage, match="9000x9000"):
        inspect_image(wide.getvalue())
    assert inspect_image(wide.getvalue(), max_pixels=9000 * 9000).size == (9000, 9000)


def test_only_a_full_decode_finds_damaged_pixel_data():
    """Checksums right, deflate stream broken: the cheap check (used on uploads) passes it
    on, the full decode (used on downloads, before any re-encode) refuses it."""
    data = corrupt_idat_png()
    assert inspect_image(data).size == (256, 256)
    with pytest.raises(BadImage, match="damaged"):
        inspect_image(data, decode=True)
    with pytest.raises(OSError):
        reencode(data, "jpeg", None)  # what the full decode protects against
