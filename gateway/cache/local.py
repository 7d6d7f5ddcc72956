"""The in-process cache: bounded by the bytes it holds and by entry count, each entry
living until its own expiry (links age out before bytes do)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cachetools import TLRUCache

from .entry import Entry


class _Held:
    """An entry and the wall-clock time it stops being servable."""

    __slots__ = ("entry", "expires")

    def __init__(self, entry: Entry, expires: float) -> None:
        self.entry = entry
        self.expires = expires


class _Entries(TLRUCache[str, _Held]):
    """A TLRU cache that reports why entries leave it."""

    def __init__(self, max_bytes: int, on_evict: Callable[[str], None]) -> None:
        super().__init__(
            maxsize=max_bytes,
            ttu=lambda _key, held, _now: held.expires,
            timer=time.time,  # entries carry wall-clock creation times
            getsizeof=lambda held: held.entry.nbytes,
        )
        self._on_evict = on_evict

    def popitem(self) -> Any:
        item = super().popitem()
        self._on_evict("size")
        return item

    def expire(self, time: float | None = None) -> Any:
        expired = super().expire(time)
        for _ in expired:
            self._on_evict("expired")
        return expired


class LocalStore:
    """key -> Entry, in this process."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_entries: int,
        ttl: float,
        url_ttl: float,
        on_evict: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._ttl = ttl
        self._url_ttl = url_ttl
        self._max_entries = max_entries
        self._items = _Entries(max(max_bytes, 1), on_evict)

    def get(self, key: str) -> Entry | None:
        """The entry, or None when absent or expired."""
        held = self._items.get(key)
        return held.entry if held is not None else None

    def put(self, key: str, entry: Entry) -> bool:
        """Keep the entry; False when it cannot be kept (larger than the whole cache, or
        expired already, e.g. with a TTL of 0)."""
        if self._max_entries <= 0:
            return False
        expires = entry.expires_at(self._ttl, self._url_ttl)
        if expires <= time.time():
            return False
        try:
            self._items[key] = _Held(entry, expires)
        except ValueError:  # one entry larger than max_bytes
            return False
        while len(self._items) > self._max_entries:
            self._items.popitem()
        return True

    @property
    def nbytes(self) -> int:
        """Bytes held now (expired entries dropped first)."""
        self._items.expire()
        return int(self._items.currsize)

    def __len__(self) -> int:
        self._items.expire()
        return len(self._items)
