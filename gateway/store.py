"""Short-lived hosting for images that arrive as bytes but must be answered as links.

The mock upstream (and defapi, which may return data: URIs) hand back bytes; a caller that
asked for response_format=url still gets a link, served by the gateway itself for
`ttl` seconds at an unguessable path.
"""

from __future__ import annotations

import secrets

from cachetools import TTLCache


class ImageStore:
    """id -> (bytes, mime), bounded in count and time."""

    def __init__(self, *, ttl: float = 3600.0, max_entries: int = 512) -> None:
        self._items: TTLCache[str, tuple[bytes, str]] = TTLCache(maxsize=max_entries, ttl=ttl)

    def put(self, data: bytes, mime: str) -> str:
        """Keep the image; returns its file name (id plus extension)."""
        ext = {"image/jpeg": "jpg", "image/webp": "webp"}.get(mime, "png")
        name = f"{secrets.token_urlsafe(18)}.{ext}"
        self._items[name] = (data, mime)
        return name

    def get(self, name: str) -> tuple[bytes, str] | None:
        """The image, or None once expired or unknown."""
        return self._items.get(name)
