"""Short-lived hosting for images that arrive as bytes but must be answered as links.

The mock upstream (and defapi, which may return data: URIs) hand back bytes; a caller that
asked for response_format=url still gets a link, served by the gateway itself for
`ttl` seconds at an unguessable path.
"""

from __future__ import annotations

import secrets

from cachetools import TTLCache

from ..errors import ImageTooLargeToHost
from .media import extension


class ImageStore:
    """id -> (bytes, mime), bounded in bytes and time (a 4K PNG can be 20 MB)."""

    def __init__(self, *, ttl: float = 3600.0, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._items: TTLCache[str, tuple[bytes, str]] = TTLCache(
            maxsize=max_bytes, ttl=ttl, getsizeof=lambda item: len(item[0]) or 1
        )

    def put(self, data: bytes, mime: str) -> str:
        """Keep the image; returns its file name (id plus extension)."""
        name = f"{secrets.token_urlsafe(18)}.{extension(mime)}"
        try:
            self._items[name] = (data, mime)
        except ValueError:  # larger than the whole store: say so rather than hand out a 404
            raise ImageTooLargeToHost() from None
        return name

    def get(self, name: str) -> tuple[bytes, str] | None:
        """The image, or None once expired or unknown."""
        return self._items.get(name)
