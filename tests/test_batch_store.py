"""The BatchStore contract, held by both backends: SQLite in a state directory and a real
PostgreSQL server (tests/support/postgres.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.batch.postgres import PostgresBatchStore
from gateway.batch.sqlite import SQLiteBatchStore
from gateway.batch.store import BatchRecord, FileRecord, Line, Outcome, Update
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """A function giving (unstarted) stores over one and the same database."""
    if request.param == "sqlite":
        return lambda: SQLiteBatchStore(tmp_path / "state")
    url = request.getfixturevalue("pg_server").database()
    return lambda: PostgresBatchStore(url)


@pytest.fixture
async def store(make_store: Callable[[], Any]) -> AsyncIterator[Any]:
    s = make_store()
    await s.start()
    yield s
    await s.aclose()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


def batch(bid: str, created: int, status: str = "validating", owner: str = "a") -> BatchRecord:
    return BatchRecord(
        bid, owner, "/v1/images/generations", "file-in", "24h", status, created, created + 86400
    )


async def test_files_put_get_list_read_delete(store: Any) -> None:
    for i in range(3):
        rec = FileRecord(f"file-{i}", "a" if i < 2 else "b", f"f{i}.jsonl", "batch", 0, 100 + i)
        stored = await store.put_file(rec, chunks(b'{"x": 1}\n', b'{"y"', b": 2}\n"))
        assert stored.bytes == 18 and stored.lines == 2
        assert await store.get_file(f"file-{i}") == stored
    page = await store.list_files(None, purpose=None, after=None, limit=2)
    assert [f.id for f in page.items] == ["file-2", "file-1"] and page.has_more
    page = await store.list_files(None, purpose=None, after="file-1", limit=2)
    assert [f.id for f in page.items] == ["file-0"] and not page.has_more
    assert [
        f.id for f in (await store.list_files("a", purpose="batch", after=None, limit=9)).items
    ] == ["file-1", "file-0"]
    data = b"".join([c async for c in store.read_file("file-0", chunk_size=4)])
    assert data == b'{"x": 1}\n{"y": 2}\n'
    assert await store.delete_file("file-0") and not await store.delete_file("file-0")
    assert await store.get_file("file-0") is None


async def test_a_failed_put_leaves_nothing(store: Any) -> None:
    async def bad() -> AsyncIterator[bytes]:
        yield b"abc"
        raise ValueError("too big")

    with pytest.raises(ValueError):
        await store.put_file(FileRecord("file-x", "a", "x", "batch", 0, 1), bad())
    assert await store.get_file("file-x") is None
    assert (await store.list_files(None, purpose=None, after=None, limit=9)).items == []


async def test_batches_update_lines_and_claims(store: Any, make_store: Callable[[], Any]) -> None:
    await store.create_batch(batch("batch_1", 10))
    await store.create_batch(batch("batch_2", 20, status="completed"))
    assert [b.id for b in (await store.list_batches(None, after=None, limit=9)).items] == [
        "batch_2",
        "batch_1",
    ]
    moved = await store.update_batch(
        "batch_1",
        Update(
            status="in_progress", from_status=("validating",), total=3, times={"in_progress_at": 11}
        ),
    )
    assert moved is not None and moved.status == "in_progress" and moved.in_progress_at == 11
    assert (
        await store.update_batch("batch_1", Update(status="failed", from_status=("validating",)))
        is None
    )
    await store.add_lines("batch_1", [Line(i, f"c{i}", "{}") for i in (1, 2, 3)])
    await store.add_lines("batch_1", [Line(1, "other", "{}")])
    assert [ln.custom_id for ln in await store.pending_lines("batch_1", limit=2)] == ["c1", "c2"]
    assert await store.finish_line("batch_1", Outcome(2, True, "r2"))
    assert not await store.finish_line("batch_1", Outcome(2, False, "again"))
    assert await store.finish_line("batch_1", Outcome(1, False, "e1"))
    b = await store.get_batch("batch_1")
    assert (b.completed, b.failed) == (1, 1)
    assert [r async for r in store.outcomes("batch_1", ok=True)] == ["r2"]
    # Paging past a line, and counting by status.
    assert [ln.index for ln in await store.pending_lines("batch_1", limit=9, after=2)] == [3]
    assert await store.status_counts() == {"in_progress": 1, "completed": 1}
    other = make_store()
    await other.start()
    try:
        got = await store.claim_batch("r1", lease_seconds=0.2)
        assert got is not None and got.id == "batch_1"
        assert await other.claim_batch("r2", lease_seconds=30) is None
        assert not await other.renew_claim("batch_1", "r2", lease_seconds=30)
        await asyncio.sleep(0.3)
        assert (await other.claim_batch("r2", lease_seconds=30)).id == "batch_1"
        assert not await store.renew_claim("batch_1", "r1", lease_seconds=30)
        await other.release_claim("batch_1", "r2")
        assert (await store.claim_batch("r1", lease_seconds=30)).id == "batch_1"
    finally:
        await other.aclose()
    # Once its files hold them, a batch's lines go; the batch and its counts stay.
    await store.drop_lines("batch_1")
    assert await store.pending_lines("batch_1", limit=9) == []
    assert [r async for r in store.outcomes("batch_1", ok=False)] == []
    assert (await store.get_batch("batch_1")).failed == 1


async def test_data_survives_reopening_and_concurrent_finishes(
    store: Any, make_store: Callable[[], Any]
) -> None:
    await store.create_batch(batch("batch_c", 1, status="in_progress"))
    await store.add_lines("batch_c", [Line(i, f"c{i}", "{}") for i in range(1, 51)])
    other = make_store()
    await other.start()
    try:
        results = await asyncio.gather(
            *(
                s.finish_line("batch_c", Outcome(i, i % 2 == 0, f"r{i}"))
                for i in range(1, 51)
                for s in (store, other)
            )
        )
    finally:
        await other.aclose()
    assert sum(results) == 50
    await store.aclose()
    again = make_store()
    await again.start()
    try:
        b = await again.get_batch("batch_c")
        assert (b.completed, b.failed) == (25, 25)
        assert len([r async for r in again.outcomes("batch_c", ok=True)]) == 25
    finally:
        await again.aclose()
    await store.start()
