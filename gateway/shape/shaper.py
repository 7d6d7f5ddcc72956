"""One finished image, brought into the form the caller asked for: a link passed on as it
is (its true size read from its first bytes), or bytes (downloaded, checked, re-encoded
when another format was asked for)."""

from __future__ import annotations

import asyncio

from ..types import Output, ProducedImage
from .fetch import Fetcher
from .media import OUTPUT_MIME, reencode
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
        """Download / re-encode one image as the answer needs it."""
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
