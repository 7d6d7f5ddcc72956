"""The Batch API's store shared by replicas: PostgreSQL ([state] database_url), via asyncpg.

The same tables and columns as the SQLite store; a file's bytes are rows of file_chunks, so
a file is written and read a chunk at a time. Everything that two replicas could race on is
one statement or one transaction in the database: a claim is one UPDATE over a row locked
with SKIP LOCKED, a line moves only from pending with its batch's counter in the same
transaction, a status moves only from the statuses named. Claim times are the database's
clock, so the replicas' own clocks may disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ..config import ConfigError
from .sql import BATCH_COLUMNS, FILE_COLUMNS, update_sets
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

_CHUNK = 256 * 1024  # bytes per file_chunks row
_READ_AHEAD = 4  # rows fetched per query while reading a file
_OUTCOME_PAGE = 500
_LOCK_KEY = 0x6E6267_0001  # pg_advisory_xact_lock key of this schema's migrations
_NOW = "extract(epoch from clock_timestamp())"

# Each step brings the schema from version i to i + 1; a step once released never changes.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE files (seq bigint GENERATED ALWAYS AS IDENTITY, id text PRIMARY KEY,"
        " owner text NOT NULL, filename text NOT NULL, purpose text NOT NULL,"
        " bytes bigint NOT NULL, created_at bigint NOT NULL, lines integer NOT NULL)",
        "CREATE INDEX files_newest ON files (created_at DESC, seq DESC)",
        "CREATE TABLE file_chunks (file_id text NOT NULL REFERENCES files (id)"
        " ON DELETE CASCADE, seq integer NOT NULL, data bytea NOT NULL,"
        " PRIMARY KEY (file_id, seq))",
        "CREATE TABLE batches (seq bigint GENERATED ALWAYS AS IDENTITY, id text PRIMARY KEY,"
        " owner text NOT NULL, endpoint text NOT NULL, input_file_id text NOT NULL,"
        " completion_window text NOT NULL, status text NOT NULL,"
        " created_at bigint NOT NULL, expires_at bigint NOT NULL, metadata text,"
        " errors text NOT NULL, output_file_id text, error_file_id text,"
        " total integer NOT NULL, completed integer NOT NULL, failed integer NOT NULL,"
        + "".join(f" {name} bigint," for name in TIME_COLUMNS)
        + " claim_runner text, claim_until double precision)",
        "CREATE INDEX batches_newest ON batches (created_at DESC, seq DESC)",
        "CREATE TABLE lines (batch_id text NOT NULL, idx integer NOT NULL,"
        " custom_id text NOT NULL, body text NOT NULL, state text NOT NULL, record text,"
        " PRIMARY KEY (batch_id, idx))",
        "CREATE INDEX lines_state ON lines (batch_id, state, idx)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _shown(url: str) -> str:
    """The URL without its password, fit for an error message."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        user = urllib.parse.quote(parts.username or "")
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:[redacted]@{host}"))
    except ValueError:
        return "(the URL given)"


class PostgresBatchStore:
    """BatchStore in the PostgreSQL database at `url`."""

    # What a call raises while the server is away (the API answers 503 for these).
    down_errors: tuple[type[BaseException], ...] = (
        OSError,
        TimeoutError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.TooManyConnectionsError,
        asyncpg.exceptions.InternalClientError,  # a connection lost in the middle of a call
    )

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: asyncpg.Pool | None = None

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the batch store is not started")
        return self._pool

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self._url, min_size=1, max_size=10, timeout=10)
        except Exception as exc:
            raise self._error("cannot connect", exc) from None
        try:
            await self._migrate()
        except ConfigError:
            await self.aclose()
            raise
        except Exception as exc:
            await self.aclose()
            raise self._error("cannot prepare the database", exc) from None

    def _error(self, what: str, exc: BaseException) -> ConfigError:
        reason = str(exc) or type(exc).__name__
        password = ""
        with contextlib.suppress(ValueError):
            password = urllib.parse.urlsplit(self._url).password or ""
        if password:
            reason = reason.replace(password, "[redacted]")
        return ConfigError(
            f"[state] database_url: {what} to {_shown(self._url)} ({reason}); check the URL,"
            " that the server is up and the credentials (or GATEWAY_DATABASE_URL)"
        )

    async def _migrate(self) -> None:
        async with self._db.acquire() as conn, conn.transaction():
            # Two replicas starting together: the second waits here, then sees the schema.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer)")
            version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"[state] database_url: {_shown(self._url)} was written by a newer gateway"
                    f" (schema version {version}, this one knows {SCHEMA_VERSION}); upgrade"
                    " the gateway or point [state] database_url at another database"
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    await conn.execute(statement)
            if version < SCHEMA_VERSION:
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # Files -------------------------------------------------------------------------------
    async def put_file(self, record: FileRecord, chunks: AsyncIterator[bytes]) -> FileRecord:
        size, counter, seq = 0, LineCounter(), 0
        # One transaction: nothing is visible before the commit, and a failure (or a crash)
        # leaves nothing behind.
        async with self._db.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO files ({FILE_COLUMNS}) VALUES ($1, $2, $3, $4, 0, $5, 0)",
                record.id, record.owner, record.filename, record.purpose, record.created_at,
            )  # fmt: skip
            pending = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                counter.feed(chunk)
                pending += chunk
                while len(pending) >= _CHUNK:
                    await self._put_chunk(conn, record.id, seq, bytes(pending[:_CHUNK]))
                    del pending[:_CHUNK]
                    seq += 1
            if pending:
                await self._put_chunk(conn, record.id, seq, bytes(pending))
            lines = counter.finish() if record.purpose == "batch" else record.lines
            await conn.execute(
                "UPDATE files SET bytes = $2, lines = $3 WHERE id = $1", record.id, size, lines
            )
        return dataclasses.replace(record, bytes=size, lines=lines)

    @staticmethod
    async def _put_chunk(conn: Any, file_id: str, seq: int, data: bytes) -> None:
        await conn.execute(
            "INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)", file_id, seq, data
        )

    async def get_file(self, file_id: str) -> FileRecord | None:
        row = await self._db.fetchrow(f"SELECT {FILE_COLUMNS} FROM files WHERE id = $1", file_id)
        return file_from_row(row) if row is not None else None

    async def list_files(
        self, owner: str | None, *, purpose: str | None, after: str | None, limit: int
    ) -> Page:
        where, args = _owner_after("files", owner, after)
        if purpose is not None:
            args.append(purpose)
            where.append(f"purpose = ${len(args)}")
        rows = await self._page("files", FILE_COLUMNS, where, args, limit)
        return Page([file_from_row(r) for r in rows[:limit]], len(rows) > limit)

    async def read_file(self, file_id: str, *, chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        record = await self.get_file(file_id)
        if record is None:
            raise FileNotFoundError(file_id)
        seq, seen = -1, 0
        while True:
            # A few rows per query, each from a pooled connection: a slow reader holds no
            # connection (nor transaction) between chunks.
            rows = await self._db.fetch(
                "SELECT seq, data FROM file_chunks WHERE file_id = $1 AND seq > $2"
                " ORDER BY seq LIMIT $3",
                file_id, seq, _READ_AHEAD,
            )  # fmt: skip
            for row in rows:
                data: bytes = row["data"]
                seen += len(data)
                for start in range(0, len(data), chunk_size):
                    yield data[start : start + chunk_size]
                seq = row["seq"]
            if len(rows) < _READ_AHEAD:
                break
        if seen != record.bytes:  # deleted while it was read
            raise FileNotFoundError(file_id)

    async def delete_file(self, file_id: str) -> bool:
        status = await self._db.execute("DELETE FROM files WHERE id = $1", file_id)
        return bool(status != "DELETE 0")

    # Batches -----------------------------------------------------------------------------
    async def create_batch(self, record: BatchRecord) -> None:
        values = (
            record.id, record.owner, record.endpoint, record.input_file_id,
            record.completion_window, record.status, record.created_at, record.expires_at,
            json.dumps(record.metadata) if record.metadata is not None else None,
            errors_json(record.errors), record.output_file_id, record.error_file_id,
            record.total, record.completed, record.failed,
            *(getattr(record, name) for name in TIME_COLUMNS),
        )  # fmt: skip
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        await self._db.execute(f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES ({marks})", *values)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1", batch_id
        )
        return batch_from_row(row) if row is not None else None

    async def list_batches(self, owner: str | None, *, after: str | None, limit: int) -> Page:
        where, args = _owner_after("batches", owner, after)
        rows = await self._page("batches", BATCH_COLUMNS, where, args, limit)
        return Page([batch_from_row(r) for r in rows[:limit]], len(rows) > limit)

    async def _page(
        self, table: str, columns: str, where: list[str], args: list[Any], limit: int
    ) -> list[Any]:
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = (
            f"SELECT {columns} FROM {table}{clause} ORDER BY created_at DESC, seq DESC"
            f" LIMIT ${len(args) + 1}"
        )
        return list(await self._db.fetch(sql, *args, limit + 1))

    async def update_batch(self, batch_id: str, update: Update) -> BatchRecord | None:
        numbers = iter(range(2, 1000))
        sets, args = update_sets(update, lambda: f"${next(numbers)}")
        sql = f"UPDATE batches SET {', '.join(sets)} WHERE id = $1"
        if update.from_status is not None:
            args.append(list(update.from_status))
            sql += f" AND status = ANY(${len(args) + 1}::text[])"
        row = await self._db.fetchrow(f"{sql} RETURNING {BATCH_COLUMNS}", batch_id, *args)
        return batch_from_row(row) if row is not None else None

    # Lines -------------------------------------------------------------------------------
    async def add_lines(self, batch_id: str, lines: Sequence[Line]) -> None:
        await self._db.executemany(
            "INSERT INTO lines (batch_id, idx, custom_id, body, state) VALUES ($1, $2, $3, $4,"
            " 'pending') ON CONFLICT (batch_id, idx) DO NOTHING",
            [(batch_id, ln.index, ln.custom_id, ln.body) for ln in lines],
        )

    async def pending_lines(self, batch_id: str, *, limit: int, after: int = 0) -> list[Line]:
        rows = await self._db.fetch(
            "SELECT idx, custom_id, body FROM lines WHERE batch_id = $1 AND state = 'pending'"
            " AND idx > $3 ORDER BY idx LIMIT $2",
            batch_id, limit, after,
        )  # fmt: skip
        return [Line(r["idx"], r["custom_id"], r["body"]) for r in rows]

    async def finish_line(self, batch_id: str, outcome: Outcome) -> bool:
        state, counter = ("done", "completed") if outcome.ok else ("failed", "failed")
        async with self._db.acquire() as conn, conn.transaction():
            # A concurrent finish of the same line waits on the row lock, then finds it no
            # longer pending (READ COMMITTED re-checks the WHERE): exactly one moves it.
            moved = await conn.execute(
                "UPDATE lines SET state = $3, record = $4 WHERE batch_id = $1 AND idx = $2"
                " AND state = 'pending'",
                batch_id, outcome.index, state, outcome.record,
            )  # fmt: skip
            if moved == "UPDATE 0":
                return False
            await conn.execute(
                f"UPDATE batches SET {counter} = {counter} + 1 WHERE id = $1", batch_id
            )
        return True

    async def drop_lines(self, batch_id: str) -> None:
        await self._db.execute("DELETE FROM lines WHERE batch_id = $1", batch_id)

    async def outcomes(self, batch_id: str, *, ok: bool) -> AsyncIterator[str]:
        state, last = ("done" if ok else "failed"), 0
        while True:
            rows = await self._db.fetch(
                "SELECT idx, record FROM lines WHERE batch_id = $1 AND state = $2 AND idx > $3"
                " ORDER BY idx LIMIT $4",
                batch_id, state, last, _OUTCOME_PAGE,
            )  # fmt: skip
            for row in rows:
                yield row["record"]
            if len(rows) < _OUTCOME_PAGE:
                return
            last = rows[-1]["idx"]

    async def status_counts(self) -> dict[str, int]:
        rows = await self._db.fetch("SELECT status, count(*) AS n FROM batches GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    # Claims ------------------------------------------------------------------------------
    async def claim_batch(self, runner: str, *, lease_seconds: float) -> BatchRecord | None:
        row = await self._db.fetchrow(
            f"UPDATE batches SET claim_runner = $1, claim_until = {_NOW} + $2 WHERE id = ("
            "SELECT id FROM batches WHERE status = ANY($3::text[]) AND (claim_runner IS NULL"
            f" OR claim_until <= {_NOW}) ORDER BY created_at, seq LIMIT 1"
            f" FOR UPDATE SKIP LOCKED) RETURNING {BATCH_COLUMNS}",
            runner, float(lease_seconds), sorted(ACTIVE),
        )  # fmt: skip
        return batch_from_row(row) if row is not None else None

    async def renew_claim(self, batch_id: str, runner: str, *, lease_seconds: float) -> bool:
        status = await self._db.execute(
            f"UPDATE batches SET claim_until = {_NOW} + $3 WHERE id = $1 AND claim_runner = $2",
            batch_id, runner, float(lease_seconds),
        )  # fmt: skip
        return bool(status == "UPDATE 1")

    async def release_claim(self, batch_id: str, runner: str) -> None:
        await self._db.execute(
            "UPDATE batches SET claim_runner = NULL, claim_until = NULL WHERE id = $1"
            " AND claim_runner = $2",
            batch_id, runner,
        )  # fmt: skip


def _owner_after(table: str, owner: str | None, after: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if owner is not None:
        args.append(owner)
        where.append(f"owner = ${len(args)}")
    if after is not None:
        # Older than the cursor's row in the list's order; no such row: NULL, empty page.
        args.append(after)
        where.append(
            f"(created_at, seq) < (SELECT created_at, seq FROM {table} WHERE id = ${len(args)})"
        )
    return where, args
