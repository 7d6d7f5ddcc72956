"""Masked edits: OpenAI's `mask`, honoured by compositing, since the Nano Banana models
take no mask.

The mask is a PNG with an alpha channel, of the first image's width and height; its fully
transparent pixels (alpha 0) mark where the picture may change, the rest is kept. The
upstream edits the whole picture (told to keep what it was not asked to change), and each
answer image is the first image where the mask is opaque and the model's picture, scaled
to the first image's size, where it is transparent, with a soft seam of a few pixels.

Pure functions over bytes, and CPU work: callers run them off the event loop.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageFilter

from ..errors import DownloadFailed, InvalidParameter, invalid
from .media import OUTPUT_MIME, BadImage, decode_data_uri, encode, inspect_image

# The blur of the blend mask, in pixels: a soft seam between what is kept and what was made.
EDGE_RADIUS = 2
_EDIT, _KEEP = 255, 0


def check_mask(mask: bytes, first_size: tuple[int, int] | None) -> None:
    """InvalidParameter on `mask` unless it is a whole PNG with an alpha channel (RGBA,
    LA, or a palette or colour key with transparency) of `first_size` (when known)."""
    _open_mask(mask, first_size).close()


def checked_mask(mask: str, first_size: tuple[int, int] | None) -> str:
    """The mask reference, after check_mask where it is a data: URI; one given as a URL is
    checked once it is downloaded, when the answer is composited."""
    decoded = decode_data_uri(mask) if mask.startswith("data:") else None
    if decoded is not None:
        check_mask(decoded[0], first_size)
    return mask


def named_mask(read: Callable[[], str], first_size: tuple[int, int] | None) -> str:
    """checked_mask of the reference `read` reads (and checks as an image); every fault,
    reading it included, names `mask`."""
    try:
        return checked_mask(read(), first_size)
    except InvalidParameter as err:
        err.param = "mask"
        raise


def composite(
    base: bytes,
    mask: bytes,
    made: bytes,
    output_format: str | None,
    compression: int | None,
) -> tuple[bytes, str, tuple[int, int]]:
    """One answer image of a masked edit: (bytes, MIME type, (width, height)).

    `base` is the first input image and `made` the model's picture, both checked whole
    already; the mask is checked here against the first image's size (InvalidParameter
    on `mask`). Encoded as `output_format` (PNG when None); the size is the first image's.
    """
    try:
        first = _load(base)
    except BadImage:
        raise invalid("image", "The first image could not be decoded.") from None
    size = first.size
    keep_alpha = first.has_transparency_data
    with _open_mask(mask, size) as m:
        region = edit_region(m)
    try:
        picture = _load(made).convert("RGBA")
    except BadImage:
        raise DownloadFailed("The upstream's image could not be decoded.") from None
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    out = Image.composite(picture, first.convert("RGBA"), region)
    if not keep_alpha:
        out = out.convert("RGB")
    fmt = output_format or "png"
    return encode(out, fmt, compression), OUTPUT_MIME[fmt], size


def edit_region(mask: Image.Image) -> Image.Image:
    """The blend mask (mode L): 255 where the mask is fully transparent (take the model's
    picture), 0 elsewhere (keep the first image), blurred at the seam."""
    alpha = mask.convert("RGBA").getchannel("A")
    region = alpha.point(lambda a: _EDIT if a == 0 else _KEEP)
    return region.filter(ImageFilter.GaussianBlur(EDGE_RADIUS)) if EDGE_RADIUS else region


def _open_mask(mask: bytes, first_size: tuple[int, int] | None) -> Image.Image:
    """The mask decoded, or InvalidParameter on `mask` saying what is wrong with it."""
    try:
        info = inspect_image(mask)
    except BadImage as exc:
        raise invalid(
            "mask", f"The mask is not a usable image: {exc}.", code="invalid_image_format"
        ) from None
    if info.mime != "image/png":
        raise invalid(
            "mask",
            f"The mask must be a PNG with an alpha channel, not {info.mime}: its fully "
            "transparent pixels mark where the first image is to change.",
        )
    try:
        im = _load(mask)
    except BadImage as exc:
        raise invalid("mask", f"The mask is not a usable image: {exc}.") from None
    if not im.has_transparency_data:
        im.close()
        raise invalid(
            "mask",
            f"The mask has no alpha channel (it is a {im.mode} PNG): send a PNG with "
            "transparency (RGBA), fully transparent where the first image is to change.",
        )
    if first_size is not None and im.size != first_size:
        im.close()
        raise invalid(
            "mask",
            f"The mask is {im.size[0]}x{im.size[1]} but the first image is "
            f"{first_size[0]}x{first_size[1]}: they must be the same size.",
        )
    return im


def _load(data: bytes) -> Image.Image:
    """Every pixel of an image decoded; BadImage if that fails (the images are checked
    whole before they get here, so only a crafted file fails)."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception:  # Pillow raises a zoo of types (OSError, SyntaxError, ...)
        raise BadImage("the image could not be decoded") from None
    return im
