"""What both stores' SQL shares: the column lists (the same names in SQLite and PostgreSQL,
so a row maps to a record one way), an Update's SET clauses, and the durable rename of a
file's bytes into place (SQLite keeps bytes on disk)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .store import TIME_COLUMNS, Update, errors_json

BATCH_COLUMNS = (
    "id, owner, endpoint, input_file_id, completion_window, status, created_at, expires_at,"
    " metadata, errors, output_file_id, error_file_id, total, completed, failed, "
    + ", ".join(TIME_COLUMNS)
)
FILE_COLUMNS = "id, owner, filename, purpose, bytes, created_at, lines"


def json_or_none(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def update_sets(update: Update, mark: str | Callable[[], str]) -> tuple[list[str], list[Any]]:
    """The SET clauses of an Update (`mark`: the placeholder, or a function making the next
    one) and their values; `id = id` when nothing changes, so the statement still returns
    the row (and checks from_status)."""
    pairs: list[tuple[str, Any]] = []
    if update.status is not None:
        pairs.append(("status", update.status))
    if update.errors is not None:
        pairs.append(("errors", errors_json(update.errors)))
    for name in ("output_file_id", "error_file_id", "total"):
        if getattr(update, name) is not None:
            pairs.append((name, getattr(update, name)))
    for name, value in update.times.items():
        if name not in TIME_COLUMNS:
            raise ValueError(f"Update.times: {name!r} is not a batch timestamp")
        pairs.append((name, value))
    if not pairs:
        return ["id = id"], []
    place = mark if callable(mark) else (lambda: mark)  # type: ignore[return-value]
    return [f"{name} = {place()}" for name, _ in pairs], [value for _, value in pairs]


def sync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def publish(temp: Path, final: Path) -> None:
    """Rename into place and make the rename itself durable (fsync of the directory)."""
    os.replace(temp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
