"""A cached result: the images (links and/or bytes) one upstream run made, and when.

Links from upstreams expire on the provider's side, so an entry remembers when it was made
(wall-clock time, shared across replicas) and a link is only handed out while it is younger
than `url_ttl`. Bytes do not expire, so an entry holding every image's bytes lives `ttl`.

The wire form (for Redis) is a small JSON header followed by the raw image bytes: no pickle,
so a shared Redis can never make a replica run code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ..types import ImagesResult, SizeSource

_MAGIC = b"NBG1"
_HEADER_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class CachedImage:
    """One image: the upstream's link (None for bytes-only images) and/or its bytes."""

    url: str | None
    data: bytes | None
    mime: str | None
    size: tuple[int, int] | None
    size_source: SizeSource | None = None  # how `size` was found (measured / expected)


@dataclass(frozen=True)
class Entry:
    """The images of one successful run, with what it cost to make them."""

    images: tuple[CachedImage, ...]
    created: float  # time.time() when the upstream answered
    upstreams: tuple[str, ...] = ()
    task_ids: tuple[str, ...] = ()
    trace_ids: tuple[str, ...] = ()
    calls: int = 1  # upstream calls it took: what a later hit saves

    def expires_at(self, ttl: float, url_ttl: float) -> float:
        """When the entry stops being servable: links age out sooner than bytes."""
        has_all_bytes = all(img.data is not None for img in self.images)
        return self.created + (ttl if has_all_bytes else min(ttl, url_ttl))

    def link_fresh(self, now: float, url_ttl: float) -> bool:
        """True while the upstream's links can still be handed out."""
        return now - self.created < url_ttl

    @property
    def nbytes(self) -> int:
        """What the entry weighs in memory, roughly: bytes plus links plus bookkeeping."""
        weight = 256
        for img in self.images:
            weight += len(img.data or b"") + len(img.url or "") + 64
        return weight


def entry_from_result(result: ImagesResult, *, created: float, calls: int) -> Entry:
    """The cacheable part of a result."""
    return Entry(
        images=tuple(
            CachedImage(
                url=img.url,
                data=img.data,
                mime=img.mime,
                size=img.size,
                size_source=img.size_source,
            )
            for img in result.images
        ),
        created=created,
        upstreams=tuple(result.upstreams),
        task_ids=tuple(result.task_ids),
        trace_ids=tuple(result.trace_ids),
        calls=calls,
    )


def encode(entry: Entry) -> bytes:
    """Entry -> bytes: magic, header length, JSON header, then each image's bytes."""
    header = {
        "created": entry.created,
        "calls": entry.calls,
        "upstreams": list(entry.upstreams),
        "task_ids": list(entry.task_ids),
        "trace_ids": list(entry.trace_ids),
        "images": [
            {
                "url": img.url,
                "mime": img.mime,
                "size": list(img.size) if img.size else None,
                "size_source": img.size_source,
                "len": None if img.data is None else len(img.data),
            }
            for img in entry.images
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blobs = [img.data for img in entry.images if img.data is not None]
    return b"".join([_MAGIC, _HEADER_LEN.pack(len(head)), head, *blobs])


def decode(blob: bytes) -> Entry | None:
    """bytes -> Entry; None for anything malformed (an old format, a truncated value):
    a bad entry is a miss, never an error for the caller."""
    try:
        if not blob.startswith(_MAGIC):
            return None
        offset = len(_MAGIC)
        (head_len,) = _HEADER_LEN.unpack_from(blob, offset)
        offset += _HEADER_LEN.size
        header = json.loads(blob[offset : offset + head_len])
        offset += head_len
        images: list[CachedImage] = []
        for item in header["images"]:
            data = None
            if item["len"] is not None:
                length = int(item["len"])
                data = blob[offset : offset + length]
                if len(data) != length:
                    return None
                offset += length
            size = item["size"]
            images.append(
                CachedImage(
                    url=item["url"],
                    data=data,
                    mime=item["mime"],
                    size=(int(size[0]), int(size[1])) if size else None,
                    size_source=_size_source(item.get("size_source")),
                )
            )
        if offset != len(blob):
            return None
        return Entry(
            images=tuple(images),
            created=float(header["created"]),
            upstreams=_strings(header["upstreams"]),
            task_ids=_strings(header["task_ids"]),
            trace_ids=_strings(header["trace_ids"]),
            calls=int(header["calls"]),
        )
    except (ValueError, KeyError, TypeError, IndexError, struct.error):
        return None


def _strings(items: Sequence[object]) -> tuple[str, ...]:
    return tuple(str(x) for x in items)


def _size_source(value: object) -> SizeSource | None:
    """What an entry says of how its size was found; anything else (an older entry) is
    not known."""
    if value == "measured":
        return "measured"
    if value == "expected":
        return "expected"
    return None
