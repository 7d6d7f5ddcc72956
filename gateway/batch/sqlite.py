"""The Batch API's store for one process: SQLite in the state directory.

The database is `<dir>/batches.sqlite3` (a file of its own: the day's counts live in
gateway.sqlite3) and each file's bytes are `<dir>/files/<file id>`. All SQLite work runs in
one dedicated thread with its own connection, so the event loop never waits on the disk and
the connection is never shared between threads. Several stores on one directory (a test, or
a process reading what a dead one wrote) are safe: WAL, a busy timeout and write
transactions taken with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..state.daybook import StateDirError
from .sql import BATCH_COLUMNS, FILE_COLUMNS, json_or_none, publish, sync, update_sets
from .store import (
    ACTIVE,
    TIME_COLUMNS,
    BatchRecord,
    FileRecord,
    Line,
    LineCounter,
    Outcome,
    Page,
    Update,
    batch_from_row,
    errors_json,
    file_from_row,
)

DB_FILE = "batches.sqlite3"
FILES_DIR = "files"
_HINT = (
    'set [state] dir (or GATEWAY_STATE_DIR) to a writable directory, or to "" to keep state'
    " in memory only (the Batch API is then off)"
)
_OUTCOME_PAGE = 500
_OUTCOME_SQL = (
    "SELECT idx, record FROM lines WHERE batch_id = ? AND state = ? AND idx > ? ORDER BY idx"
    " LIMIT ?"
)
_T = TypeVar("_T")

# Each step brings the schema from version i to i + 1; a step once released never changes.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE files (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,"
        " bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, lines INTEGER NOT NULL)",
        "CREATE INDEX files_newest ON files (created_at DESC, seq DESC)",
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " owner TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,"
        " completion_window TEXT NOT NULL, status TEXT NOT NULL,"
        " created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, metadata TEXT,"
        " errors TEXT NOT NULL, output_file_id TEXT, error_file_id TEXT,"
        " total INTEGER NOT NULL, completed INTEGER NOT NULL, failed INTEGER NOT NULL,"
        + "".join(f" {name} INTEGER," for name in TIME_COLUMNS)
        + " claim_runner TEXT, claim_until REAL)",
        "CREATE INDEX batches_newest ON batches (created_at DESC, seq DESC)",
        "CREATE TABLE lines (batch_id TEXT NOT NULL, idx INTEGER NOT NULL,"
        " custom_id TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL, record TEXT,"
        " PRIMARY KEY (batch_id, idx))",
        "CREATE INDEX lines_state ON lines (batch_id, state, idx)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _connect(path: Path) -> sqlite3.Connection:
    """Open and migrate; StateDirError when the file cannot be used or is from a newer
    gateway."""
    conn: sqlite3.Connection | None = None
    try:
        # Autocommit: every write transaction is an explicit BEGIN IMMEDIATE, which takes
        # the write lock up front (a deferred one could fail to upgrade under contention).
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")  # two processes starting together migrate in turn
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            conn.close()
            raise StateDirError(
                f"[state] dir: '{path}' was written by a newer gateway (schema version"
                f" {version}, this one knows {SCHEMA_VERSION}); upgrade the gateway or set"
                " [state] dir (or GATEWAY_STATE_DIR) to another directory"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
        return conn
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        raise StateDirError(f"[state] dir: cannot use '{path}' ({exc}); {_HINT}") from None


class SQLiteBatchStore:
    """BatchStore in `<directory>/batches.sqlite3` and `<directory>/files/`."""

    # A local file: a failure is a fault to see (a 500 with its traceback), not an outage.
    down_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, directory: Path) -> None:
        self._dir = Path(directory)
        self._files = self._dir / FILES_DIR
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # The worker thread -------------------------------------------------------------------
    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._executor is None or self._conn is None:
            raise RuntimeError("the batch store is not started")
        conn = self._conn
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, conn)

    @staticmethod
    def _write(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def start(self) -> None:
        try:
            self._files.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(
                f"[state] dir: cannot create '{self._files}' ({exc.strerror}); {_HINT}"
            ) from None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-sqlite")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(
                self._executor, _connect, self._dir / DB_FILE
            )
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def aclose(self) -> None:
        executor, conn = self._executor, self._conn
        self._executor = self._conn = None
        if executor is None:
            return
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    # Files -------------------------------------------------------------------------------
    async def put_file(self, record: FileRecord, chunks: AsyncIterator[bytes]) -> FileRecord:
        final = self._files / record.id
        temp = self._files / f".upload-{record.id}-{secrets.token_hex(4)}"
        out = await asyncio.to_thread(open, temp, "xb")
        size, counter = 0, LineCounter()
        try:
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(out.write, chunk)
                    size += len(chunk)
                    counter.feed(chunk)
                await asyncio.to_thread(sync, out)
            finally:
                await asyncio.to_thread(out.close)
            lines = counter.finish() if record.purpose == "batch" else record.lines
            stored = dataclasses.replace(record, bytes=size, lines=lines)
            await asyncio.to_thread(publish, temp, final)
        except BaseException:
            await asyncio.to_thread(temp.unlink, missing_ok=True)
            raise
        try:
            await self._run(lambda c: self._write(c, lambda c: _insert_file(c, stored)))
        except BaseException:
            await asyncio.to_thread(final.unlink, missing_ok=True)
            raise
        return stored

    async def get_file(self, file_id: str) -> FileRecord | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)
            ).fetchone()
        )
        return file_from_row(row) if row is not None else None

    async def list_files(
        self, owner: str | None, *, purpose: str | None, after: str | None, limit: int
    ) -> Page:
        where, args = _owner_after("files", owner, after)
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        rows = await self._run(lambda c: _page(c, "files", FILE_COLUMNS, where, args, limit))
        return Page([file_from_row(r) for r in rows[:limit]], len(rows) > limit)

    async def read_file(self, file_id: str, *, chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        if await self.get_file(file_id) is None:
            raise FileNotFoundError(file_id)
        # Opened once: a delete while it is being read does not cut the read short (POSIX).
        handle = await asyncio.to_thread(open, self._files / file_id, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def delete_file(self, file_id: str) -> bool:
        deleted = await self._run(
            lambda c: self._write(
                c, lambda c: c.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount
            )
        )
        await asyncio.to_thread((self._files / file_id).unlink, missing_ok=True)
        return bool(deleted)

    # Batches -----------------------------------------------------------------------------
    async def create_batch(self, record: BatchRecord) -> None:
        values = (
            record.id, record.owner, record.endpoint, record.input_file_id,
            record.completion_window, record.status, record.created_at, record.expires_at,
            json_or_none(record.metadata), errors_json(record.errors), record.output_file_id,
            record.error_file_id, record.total, record.completed, record.failed,
            *(getattr(record, name) for name in TIME_COLUMNS),
        )  # fmt: skip
        marks = ", ".join("?" * len(values))
        sql = f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES ({marks})"
        await self._run(lambda c: self._write(c, lambda c: c.execute(sql, values)))

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
        )
        return batch_from_row(row) if row is not None else None

    async def list_batches(self, owner: str | None, *, after: str | None, limit: int) -> Page:
        where, args = _owner_after("batches", owner, after)
        rows = await self._run(lambda c: _page(c, "batches", BATCH_COLUMNS, where, args, limit))
        return Page([batch_from_row(r) for r in rows[:limit]], len(rows) > limit)

    async def update_batch(self, batch_id: str, update: Update) -> BatchRecord | None:
        sets, args = update_sets(update, "?")
        sql = f"UPDATE batches SET {', '.join(sets)} WHERE id = ?"
        args.append(batch_id)
        if update.from_status is not None:
            sql += f" AND status IN ({', '.join('?' * len(update.from_status))})"
            args.extend(update.from_status)
        sql += f" RETURNING {BATCH_COLUMNS}"
        row = await self._run(lambda c: self._write(c, lambda c: c.execute(sql, args).fetchone()))
        return batch_from_row(row) if row is not None else None

    # Lines -------------------------------------------------------------------------------
    async def add_lines(self, batch_id: str, lines: Sequence[Line]) -> None:
        rows = [(batch_id, ln.index, ln.custom_id, ln.body) for ln in lines]
        sql = (
            "INSERT INTO lines (batch_id, idx, custom_id, body, state) VALUES (?, ?, ?, ?,"
            " 'pending') ON CONFLICT (batch_id, idx) DO NOTHING"
        )
        await self._run(lambda c: self._write(c, lambda c: c.executemany(sql, rows)))

    async def pending_lines(self, batch_id: str, *, limit: int, after: int = 0) -> list[Line]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT idx, custom_id, body FROM lines WHERE batch_id = ? AND state ="
                " 'pending' AND idx > ? ORDER BY idx LIMIT ?",
                (batch_id, after, limit),
            ).fetchall()
        )
        return [Line(r["idx"], r["custom_id"], r["body"]) for r in rows]

    async def finish_line(self, batch_id: str, outcome: Outcome) -> bool:
        state, counter = ("done", "completed") if outcome.ok else ("failed", "failed")

        def finish(c: sqlite3.Connection) -> bool:
            moved = c.execute(
                "UPDATE lines SET state = ?, record = ? WHERE batch_id = ? AND idx = ? AND"
                " state = 'pending'",
                (state, outcome.record, batch_id, outcome.index),
            ).rowcount
            if moved:
                c.execute(f"UPDATE batches SET {counter} = {counter} + 1 WHERE id = ?", (batch_id,))
            return bool(moved)

        return await self._run(lambda c: self._write(c, finish))

    async def drop_lines(self, batch_id: str) -> None:
        sql = "DELETE FROM lines WHERE batch_id = ?"
        await self._run(lambda c: self._write(c, lambda c: c.execute(sql, (batch_id,))))

    async def outcomes(self, batch_id: str, *, ok: bool) -> AsyncIterator[str]:
        state, last = ("done" if ok else "failed"), 0
        while True:
            # Page by page, by index: never every outcome in memory at once.
            args = (batch_id, state, last, _OUTCOME_PAGE)
            rows = await self._run(functools.partial(_fetch, _OUTCOME_SQL, args))
            for row in rows:
                yield row["record"]
            if len(rows) < _OUTCOME_PAGE:
                return
            last = rows[-1]["idx"]

    async def status_counts(self) -> dict[str, int]:
        rows = await self._run(
            lambda c: c.execute("SELECT status, count(*) FROM batches GROUP BY status").fetchall()
        )
        return {row[0]: row[1] for row in rows}

    # Claims ------------------------------------------------------------------------------
    async def claim_batch(self, runner: str, *, lease_seconds: float) -> BatchRecord | None:
        active = sorted(ACTIVE)

        def claim(c: sqlite3.Connection) -> Any:
            now = _now()
            return c.execute(
                "UPDATE batches SET claim_runner = ?, claim_until = ? WHERE id = (SELECT id"
                f" FROM batches WHERE status IN ({', '.join('?' * len(active))}) AND"
                " (claim_runner IS NULL OR claim_until <= ?) ORDER BY created_at, seq LIMIT 1)"
                f" RETURNING {BATCH_COLUMNS}",
                (runner, now + lease_seconds, *active, now),
            ).fetchone()

        row = await self._run(lambda c: self._write(c, claim))
        return batch_from_row(row) if row is not None else None

    async def renew_claim(self, batch_id: str, runner: str, *, lease_seconds: float) -> bool:
        def renew(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE batches SET claim_until = ? WHERE id = ? AND claim_runner = ?",
                (_now() + lease_seconds, batch_id, runner),
            ).rowcount

        return bool(await self._run(lambda c: self._write(c, renew)))

    async def release_claim(self, batch_id: str, runner: str) -> None:
        sql = (
            "UPDATE batches SET claim_runner = NULL, claim_until = NULL WHERE id = ? AND"
            " claim_runner = ?"
        )
        await self._run(lambda c: self._write(c, lambda c: c.execute(sql, (batch_id, runner))))


def _fetch(sql: str, args: Sequence[Any], c: sqlite3.Connection) -> list[sqlite3.Row]:
    return c.execute(sql, args).fetchall()


def _now() -> float:
    return time.time()


def _owner_after(table: str, owner: str | None, after: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if owner is not None:
        where.append("owner = ?")
        args.append(owner)
    if after is not None:
        # Older than the cursor's row in the list's order; no such row: NULL, empty page.
        where.append(f"(created_at, seq) < (SELECT created_at, seq FROM {table} WHERE id = ?)")
        args.append(after)
    return where, args


def _page(
    c: sqlite3.Connection, table: str, columns: str, where: list[str], args: list[Any], limit: int
) -> list[sqlite3.Row]:
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    sql = f"SELECT {columns} FROM {table}{clause} ORDER BY created_at DESC, seq DESC LIMIT ?"
    return c.execute(sql, (*args, limit + 1)).fetchall()


def _insert_file(c: sqlite3.Connection, r: FileRecord) -> None:
    c.execute(
        f"INSERT INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (r.id, r.owner, r.filename, r.purpose, r.bytes, r.created_at, r.lines),
    )
