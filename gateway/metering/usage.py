"""The usage log: one JSON line per image request, for billing and for finding a request.

Lines go to stdout (the default: a container's log shipper picks them up), to a file
(appended; reopened when logrotate moves it away), or nowhere. A line never holds a prompt,
an image, a key or a token: only ids, names from configuration, numbers, the caller's
validated size and the size of what was made.
"""

from __future__ import annotations

import asyncio
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
    """Writes usage records to the configured destination: 'stdout', 'off' or a path.

    The first line of an event-loop iteration is written at once; lines of other requests
    that end in the same iteration are written together at its end (one write for all).
    Under load a dozen requests end per iteration, and a write to a file or pipe is a
    system call that cost more than the rest of the line (bench/RESULTS.md); a request
    alone, as in most tests and quiet hours, still has its line out before its answer.
    """

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self._file: WatchedFileHandler | None = None
        # Lines waiting for the end of the loop iteration (None: none is due; the next
        # line goes out at once), and the loop whose iteration that is.
        self._pending: list[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        if self._pending is not None:
            assert self._loop is not None
            if not self._loop.is_closed():
                self._pending.append(line)  # out at the end of this iteration
                return
            self._flush()  # a loop that stopped before its iteration ended (tests)
        self._emit(line)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop: every line goes out at once
        self._pending = []
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        lines, self._pending = self._pending, None
        if lines:
            self._emit("\n".join(lines))

    def _emit(self, text: str) -> None:
        """Write one or more lines (joined by newlines, without the last one)."""
        try:
            if self._file is not None:
                # The handler locks, checks whether the file was rotated, writes and flushes.
                self._file.handle(logging.makeLogRecord({"msg": text, "args": None}))
            else:
                # Looked up at each write, so a replaced sys.stdout (tests, daemons) is used.
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
        except (OSError, ValueError):
            log.exception("usage log: could not write to %s", self.destination)

    def close(self) -> None:
        """Write what is waiting; close the file, if any."""
        self._flush()
        if self._file is not None:
            self._file.close()
