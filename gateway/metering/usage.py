"""The usage log: one JSON line per image request, for billing and for finding a request.

Lines go to stdout (the default: a container's log shipper picks them up), to a file
(appended; reopened when logrotate moves it away), or nowhere. A line never holds a prompt,
an image, a key or a token: only ids, names from configuration, numbers, the caller's
validated size and the size of what was made.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from logging.handlers import WatchedFileHandler
from typing import Any

import orjson

from ..config import ConfigError

log = logging.getLogger("gateway.usage")


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def timestamp(wall: float) -> str:
    """RFC 3339 UTC time with milliseconds, as log stores parse it without configuration.
    (The whole seconds are formatted once per second, not once per request.)"""
    whole = int(wall)
    if _second[0] != whole:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int(wall * 1000) % 1000:03d}Z"


def _encode(record: Mapping[str, Any]) -> str:
    """The line's JSON: compact, UTF-8 as it is. orjson: 0.9 us for a typical line where
    the standard library's encoder takes 12.7 (measured on the 2-core bench machine)."""
    return orjson.dumps(record if isinstance(record, dict) else dict(record)).decode()


class UsageLog:
    """Writes usage records to the configured destination: 'stdout', 'off' or a path."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self._file: WatchedFileHandler | None = None
        if destination not in ("stdout", "off"):
            # Opened now, so a path that cannot be written stops the start, not a request.
            try:
                self._file = WatchedFileHandler(destination, encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"usage.log: cannot open {destination}: {exc.strerror}") from None
            self._file.setFormatter(logging.Formatter("%(message)s"))

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line. Never raises: a full disk must not fail requests."""
        if self.destination == "off":
            return
        line = _encode(record)
        try:
            if self._file is not None:
                # The handler locks, checks whether the file was rotated, writes and flushes.
                self._file.handle(logging.makeLogRecord({"msg": line, "args": None}))
            else:
                # Looked up at each write, so a replaced sys.stdout (tests, daemons) is used.
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        except (OSError, ValueError):
            log.exception("usage log: could not write to %s", self.destination)

    def close(self) -> None:
        """Close the file, if any."""
        if self._file is not None:
            self._file.close()
