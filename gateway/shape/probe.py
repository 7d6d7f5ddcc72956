"""The true dimensions of an image from its first bytes.

An image passed on as a link is never downloaded, yet its answer reports a size and its
request is priced by it. What was asked for is no proof: AceData's reference says its
`resolution` only works for nano-banana-pro, and only for generate, so a provider may make
1K when 2K was asked. Every format the providers make says its size in its first bytes
(PNG's IHDR, JPEG's SOF marker after any metadata, WebP's first chunk), so a ranged GET
of 64 KiB through the guarded fetcher tells the truth at a small cost. Pillow reads the
JPEG header (no pixel is decoded); PNG and WebP are read by hand, since Pillow gives up on
those when the file is cut short (see png_size, webp_size).

The read is bounded by PROBE_SECONDS: past that, or when the bytes do not say, the answer
falls back to the size expected from Google's tables and says so.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable

from ..errors import DomainError
from .fetch import Fetcher
from .media import MAX_IMAGE_PIXELS, header_size, sniff_mime

log = logging.getLogger("gateway.shape")

# Enough for the header of every format the providers make, metadata before a JPEG's
# SOF marker included (Exif, ICC, C2PA manifests run to a few tens of kilobytes).
PROBE_BYTES = 64 * 1024
# An image host that has not sent 64 KiB by then is having trouble; the caller's answer
# is ready and should not wait on a number for it. A constant, not a setting: it only
# decides between a measured and an expected size, never whether the request succeeds.
PROBE_SECONDS = 5.0


def png_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR, the chunk the format puts first, or None.

    Read here rather than by Pillow, which reads every chunk up to the pixels: ancillary
    ones (a C2PA manifest, an ICC profile, text) may run past the bytes fetched."""
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[8:16] != b"\0\0\0\x0dIHDR":
        return None
    width, height = struct.unpack_from(">II", head, 16)
    return width, height


def webp_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a WebP's first chunk (VP8X, VP8L or VP8), or None.

    Pillow cannot read these from a cut file (its decoder wants the whole file), and the
    layout is a few fixed fields (RFC 9649)."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        # 24-bit canvas width and height, each minus one, after 4 bytes of flags.
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":
        if head[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", head, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        # A key frame's 3-byte tag, its start code, then 14-bit width and height.
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", head, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


# The formats whose size is read by hand; the others (JPEG, GIF) by Pillow.
_READERS: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
    "image/png": png_size,
    "image/webp": webp_size,
}


def size_from_head(head: bytes) -> tuple[int, int] | None:
    """An image's width and height from its first bytes (or all of them), or None when
    they do not say, or say something no image made here can be."""
    read = _READERS.get(sniff_mime(head) or "", header_size)
    size = read(head)
    if size is None:
        return None
    width, height = size
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        return None
    return width, height


async def probe_size(fetcher: Fetcher, link: str) -> tuple[int, int] | None:
    """The true size of the image at link from its first PROBE_BYTES, or None when it
    cannot be read within PROBE_SECONDS (the link fails, is refused, is not an image)."""
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            head = await fetcher.first_bytes(link, PROBE_BYTES)
    except TimeoutError:
        why = f"no header within {PROBE_SECONDS:g} s"
    except DomainError as exc:
        why = exc.message
    else:
        size = size_from_head(head)
        if size is not None:
            return size
        why = f"its first {len(head)} bytes hold no readable image header"
    # The caller still gets its link; only its size (and price) is the expected one.
    log.info("image size not measured, reporting the expected one: %s", why)
    return None
