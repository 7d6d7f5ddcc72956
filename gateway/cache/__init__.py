"""Identical requests pay once: an in-process (optionally Redis-shared) cache of results,
and coalescing of identical requests in flight."""

from .key import CachePolicy
from .layer import ImageCache

__all__ = ["CachePolicy", "ImageCache"]
