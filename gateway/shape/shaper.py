"""One finished image, brought into the form the caller asked for: a link passed on as it
is (its true size read from its first bytes), or bytes (downloaded, checked, re-encoded
when another format was asked for, or composited with the first image for a masked
edit)."""

from __future__ import annotations

import asyncio

from ..errors import DomainError, invalid
from ..types import Composite, Output, ProducedImage
from .fetch import Fetcher
from .mask import composite
from .media import OUTPUT_MIME, decode_data_uri, reencode
from .probe import probe_size


def needs_bytes(output: Output, link: str) -> bool:
    """The image must be downloaded: the answer carries it, or the upstream handed back
    bytes (a data: URI) that cannot be passed on as a link."""
    return output.wants_bytes or link.startswith("data:")


class Shaper:
    """Downloads and re-encodes upstream images as answers need them."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher

    async def shape(self, link: str, output: Output) -> ProducedImage:
        """Download / re-encode / composite one image as the answer needs it."""
        if output.composite is not None:
            return await self._composite(link, output, output.composite)
        if not needs_bytes(output, link):
            # A provider may not make the resolution asked for: the size reported (and
            # priced) is the one in the image's header, the expected one only if unread.
            # At 1K (the default, and the cheapest tier) nothing can be billed too high, so
            # the extra request is spared; the answer then says the size is the expected one.
            if not (output.measure_links or link.startswith("data:")):
                return ProducedImage(url=link, size=output.expected_size, size_source="expected")
            measured = await probe_size(self.fetcher, link)
            if measured is None:
                return ProducedImage(url=link, size=output.expected_size, size_source="expected")
            return ProducedImage(url=link, size=measured, size_source="measured")
        target = output.output_format
        # Decode every pixel only where a re-encode may follow (see Fetcher.get).
        data, info = await self.fetcher.get(link, decode=target is not None)
        mime = info.mime
        wanted_mime = OUTPUT_MIME.get(target or "")
        if target is not None and (mime != wanted_mime or output.output_compression is not None):
            data = await asyncio.to_thread(reencode, data, target, output.output_compression)
            mime = wanted_mime or mime
        return ProducedImage(
            url=link if not link.startswith("data:") else None,
            data=data,
            mime=mime,
            size=info.size,  # a re-encode keeps the pixels, so the size read on download
            size_source="measured",
        )

    async def _composite(self, link: str, output: Output, plan: Composite) -> ProducedImage:
        """A masked edit's answer: the model's picture where the mask is transparent, the
        first image elsewhere, in the first image's size (never re-encoded on top)."""
        made, _info = await self.fetcher.get(link)  # decoded, so compositing cannot fail
        base = await self._callers_image(plan.base, "image", "the first image")
        mask = await self._callers_image(plan.mask, "mask", "the mask")
        data, mime, size = await asyncio.to_thread(
            composite, base, mask, made, output.output_format, output.output_compression
        )
        # No link: the composite exists only here (the gateway hosts it for a url answer).
        return ProducedImage(data=data, mime=mime, size=size, size_source="measured")

    async def _callers_image(self, ref: str, param: str, what: str) -> bytes:
        """The bytes of an image the caller sent: a data: URI (checked on arrival), or a
        URL downloaded as upstream links are; a failure is a 400 on `param`."""
        if ref.startswith("data:"):
            decoded = decode_data_uri(ref)
            if decoded is not None:
                return decoded[0]
        try:
            data, _info = await self.fetcher.get(ref, decode=False)
        except DomainError as err:
            message = f"Could not download {what} for the masked edit: {err.message}"
            raise invalid(param, message) from None
        return data
