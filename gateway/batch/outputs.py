"""The end of a batch: its output and error files written from the stored outcomes (a
chunk at a time, never a whole file in memory), and its last status.

OpenAI's way: the output file holds the lines that were answered with a 200; the error
file the lines answered with an error and, for a batch cancelled or expired before its
end, a record for each line that never ran (`batch_cancelled` / `batch_expired`). A file
with no line is not made (its id stays null).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from .metrics import BatchMetrics
from .records import file_id, unrun_record
from .store import BatchRecord, BatchStore, FileRecord, Update

log = logging.getLogger("gateway.batch")

_FILE_CHUNK = 1 << 16
_PAGE = 500
_UNRUN = {
    "cancelled": ("batch_cancelled", "This request was not run: the batch was cancelled."),
    "expired": (
        "batch_expired",
        "This request could not be run before the batch's completion window ended.",
    ),
}


async def finish(
    store: BatchStore,
    record: BatchRecord,
    end: str,
    clock: Callable[[], float],
    metrics: BatchMetrics,
) -> None:
    """Write the files and move the batch to `end` (completed, cancelled, expired). Each
    file's id is stored as soon as it is written, so a replica that takes over after a
    death here does not write it twice."""
    fresh = await store.get_batch(record.id)
    if fresh is None:
        return
    if fresh.output_file_id is None and fresh.completed > 0:
        made = await write_file(store, fresh, "output", store.outcomes(fresh.id, ok=True), clock)
        await store.update_batch(fresh.id, Update(output_file_id=made))
    if fresh.error_file_id is None:
        made = await write_file(store, fresh, "error", error_lines(store, fresh, end), clock)
        if made is not None:
            await store.update_batch(fresh.id, Update(error_file_id=made))
    update = Update(status=end, from_status=(fresh.status,), times={f"{end}_at": int(clock())})
    if await store.update_batch(fresh.id, update) is not None:
        metrics.batches.labels(end).inc()
        log.info("batch %s: %s", fresh.id, end)
        # The files hold every outcome now: the lines (bodies with their images, answers
        # with theirs) would only be stored twice.
        await store.drop_lines(fresh.id)


async def error_lines(store: BatchStore, record: BatchRecord, end: str) -> AsyncIterator[str]:
    """The error file's lines, in input order within each kind."""
    async for failed in store.outcomes(record.id, ok=False):
        yield failed
    if end not in _UNRUN:
        return
    code, message = _UNRUN[end]
    after = 0
    while lines := await store.pending_lines(record.id, limit=_PAGE, after=after):
        for line in lines:
            yield unrun_record(line.custom_id, code, message)
        after = lines[-1].index


async def write_file(
    store: BatchStore,
    batch: BatchRecord,
    kind: str,
    records: AsyncIterator[str],
    clock: Callable[[], float],
) -> str | None:
    """A batch_output file of `records` (one a line) for the batch's owner: its id; None
    (and nothing stored) when there are none."""
    first = await anext(records, None)
    if first is None:
        return None

    async def chunks() -> AsyncIterator[bytes]:
        buffer = [first + "\n"]
        size = len(buffer[0])
        async for line in records:
            buffer.append(line + "\n")
            size += len(line) + 1
            if size >= _FILE_CHUNK:
                yield "".join(buffer).encode("utf-8")
                buffer, size = [], 0
        if buffer:
            yield "".join(buffer).encode("utf-8")

    record = FileRecord(
        id=file_id(),
        owner=batch.owner,
        filename=f"{batch.id}_{kind}.jsonl",
        purpose="batch_output",
        bytes=0,
        created_at=int(clock()),
    )
    stored = await store.put_file(record, chunks())
    return stored.id
