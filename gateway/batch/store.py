"""What the Batch API keeps durably: files (their bytes too), batches and each line of a
batch with its outcome. One interface, two backends: SQLite in the state directory (one
process) and PostgreSQL (several replicas sharing one database).

Every method is a coroutine (the event loop never waits on a disk or a socket: SQLite
runs in a worker thread). Times are UNIX seconds (int), as OpenAI's objects carry them.

Who runs a batch: a replica *claims* a batch (claim_batch) and holds the claim by renewing
it (renew_claim) while it works; a claim not renewed lapses, and another replica claims the
batch and goes on from the lines still pending. Each line's outcome is written once
(finish_line only moves a line from pending), so a line finished before a crash is never
made again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
STATUSES: tuple[str, ...] = BatchStatus.__args__  # type: ignore[attr-defined]
# The statuses a runner still has work in: a claim can be taken on these only.
ACTIVE: frozenset[str] = frozenset({"validating", "in_progress", "finalizing", "cancelling"})

FilePurpose = Literal["batch", "batch_output"]
LineState = Literal["pending", "done", "failed"]


@dataclass(frozen=True)
class FileRecord:
    """A stored file: OpenAI's File object plus its owner (a client name; "" when open)."""

    id: str  # "file-..."
    owner: str
    filename: str
    purpose: str  # "batch" for uploads; "batch_output" for what a batch wrote
    bytes: int
    created_at: int
    lines: int = 0  # JSONL lines counted at upload (0 for outputs)


@dataclass(frozen=True)
class BatchError:
    """One entry of a failed batch's `errors.data`."""

    code: str
    message: str
    line: int | None = None  # 1-based line of the input file
    param: str | None = None


@dataclass(frozen=True)
class BatchRecord:
    """A batch as stored; api/batches.py renders it as OpenAI's Batch object."""

    id: str  # "batch_..."
    owner: str
    endpoint: str  # "/v1/images/generations" | "/v1/images/edits"
    input_file_id: str
    completion_window: str  # "24h"
    status: str  # a BatchStatus
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    errors: tuple[BatchError, ...] = ()
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None


@dataclass(frozen=True)
class Line:
    """One request line of a batch: its place in the input (1-based), its custom_id and its
    body (the JSON object, as text)."""

    index: int
    custom_id: str
    body: str


@dataclass(frozen=True)
class Outcome:
    """What a line came to: the output (or error) file's line for it, as JSON text."""

    index: int
    ok: bool  # True: goes to the output file; False: to the error file
    record: str  # {"id", "custom_id", "response": {...} | null, "error": {...} | null}


@dataclass(frozen=True)
class Page:
    """A page of a list, OpenAI's way: the items, and whether more follow the last one."""

    items: Sequence[Any]
    has_more: bool


@dataclass
class Update:
    """Fields of a batch to change (None: leave as it is). `status` moves only if the
    batch's status is one of `from_status` (when given): the check and the write are one
    statement, so two replicas cannot both move it."""

    status: str | None = None
    from_status: tuple[str, ...] | None = None
    errors: tuple[BatchError, ...] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int | None = None
    times: dict[str, int] = field(default_factory=dict)  # e.g. {"in_progress_at": 1733...}


class BatchStore(Protocol):
    """The durable state of the Batch API; see the module's doc for the claim rules."""

    # The exceptions a call raises while the store is out of reach (a server away).
    down_errors: tuple[type[BaseException], ...]

    async def start(self) -> None:
        """Open (and migrate) the database; raises StateDirError / ConfigError naming the
        setting when it cannot be used."""

    async def aclose(self) -> None: ...

    # Files ------------------------------------------------------------------------------
    async def put_file(self, record: FileRecord, chunks: AsyncIterator[bytes]) -> FileRecord:
        """Store a file's bytes as they arrive and then its record (the returned one carries
        the byte count seen). Nothing is visible until the whole file is stored; a failure
        (or an exception raised by `chunks`, such as a size limit) leaves nothing behind.
        For purpose "batch" the returned record's `lines` is the count of non-blank lines
        seen (LineCounter); other purposes keep the `lines` given."""

    async def get_file(self, file_id: str) -> FileRecord | None: ...

    async def list_files(
        self, owner: str | None, *, purpose: str | None, after: str | None, limit: int
    ) -> Page:
        """Newest first (OpenAI's default order); `owner` None: every owner's (admin). An
        `after` that names no stored file gives an empty page."""

    def read_file(self, file_id: str, *, chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        """A stored file's bytes, chunk by chunk (each at most chunk_size): never the whole
        file in memory. Raises FileNotFoundError when the file is not (or no longer) stored."""

    async def delete_file(self, file_id: str) -> bool: ...

    # Batches ----------------------------------------------------------------------------
    async def create_batch(self, record: BatchRecord) -> None: ...

    async def get_batch(self, batch_id: str) -> BatchRecord | None: ...

    async def list_batches(self, owner: str | None, *, after: str | None, limit: int) -> Page:
        """Newest first; `after` is the id of the last batch of the previous page."""

    async def update_batch(self, batch_id: str, update: Update) -> BatchRecord | None:
        """Apply `update`; the batch as it is now, or None when `from_status` did not hold."""

    # Lines ------------------------------------------------------------------------------
    async def add_lines(self, batch_id: str, lines: Sequence[Line]) -> None:
        """Store a batch's request lines (called in chunks while validating; re-adding a line
        index already stored is a no-op, so a resumed validation can start over)."""

    async def pending_lines(self, batch_id: str, *, limit: int, after: int = 0) -> list[Line]:
        """Lines with no outcome yet whose index is above `after`, in input order."""

    async def finish_line(self, batch_id: str, outcome: Outcome) -> bool:
        """Record a line's outcome and count it in the batch's completed / failed, in one
        transaction; False (and nothing changed) when the line already had one."""

    async def drop_lines(self, batch_id: str) -> None:
        """Forget a finished batch's lines (its output and error files hold them now)."""

    def outcomes(self, batch_id: str, *, ok: bool) -> AsyncIterator[str]:
        """The recorded outcomes of one kind, in input order, as JSON text lines."""

    async def status_counts(self) -> dict[str, int]:
        """How many batches are in each status (every owner's): the metrics' gauge."""

    # Claims -----------------------------------------------------------------------------
    async def claim_batch(self, runner: str, *, lease_seconds: float) -> BatchRecord | None:
        """Take the oldest batch in an ACTIVE status whose claim is free or lapsed, for
        `runner` (a replica's id), until now + lease_seconds; None when there is none."""

    async def renew_claim(self, batch_id: str, runner: str, *, lease_seconds: float) -> bool:
        """Extend `runner`'s claim; False when it is no longer `runner`'s (taken over)."""

    async def release_claim(self, batch_id: str, runner: str) -> None: ...


# Shared by both backends ------------------------------------------------------------------
# Both store the same columns under the same names, so a row maps to a record one way.

# The batch's timestamps that Update.times may set (any other key is a programming error).
TIME_COLUMNS: tuple[str, ...] = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class Row(Protocol):
    """A database row read by column name (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: str, /) -> Any: ...


def errors_json(errors: Sequence[BatchError]) -> str:
    return json.dumps([dataclasses.asdict(e) for e in errors])


def file_from_row(row: Row) -> FileRecord:
    return FileRecord(
        id=row["id"],
        owner=row["owner"],
        filename=row["filename"],
        purpose=row["purpose"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        lines=row["lines"],
    )


def batch_from_row(row: Row) -> BatchRecord:
    metadata = json.loads(row["metadata"]) if row["metadata"] is not None else None
    errors = tuple(BatchError(**e) for e in json.loads(row["errors"]))
    return BatchRecord(
        id=row["id"],
        owner=row["owner"],
        endpoint=row["endpoint"],
        input_file_id=row["input_file_id"],
        completion_window=row["completion_window"],
        status=row["status"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        metadata=metadata,
        errors=errors,
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        **{name: row[name] for name in TIME_COLUMNS},
    )


class LineCounter:
    """Counts the non-blank lines of a file as its chunks go by (a line may span chunks):
    put_file fills FileRecord.lines with it for a "batch" upload."""

    def __init__(self) -> None:
        self.lines = 0
        self._open = False  # the current (unterminated) line has content

    def feed(self, chunk: bytes) -> None:
        *ended, rest = chunk.split(b"\n")
        for segment in ended:
            if self._open or segment.strip():
                self.lines += 1
            self._open = False
        self._open = self._open or bool(rest.strip())

    def finish(self) -> int:
        if self._open:
            self.lines += 1
            self._open = False
        return self.lines
