"""The day book: each client's usage of a UTC day survives a restart when a state directory
is set, is never written when it is not, and a directory or file that cannot be used stops
the start with a message that names the setting."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.state.daybook import (
    DB_FILE,
    SCHEMA_VERSION,
    DayBook,
    DayUsage,
    StateDirError,
    open_state_dir,
)


def day(offset: int = 0) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


def test_sums_survive_a_new_daybook(tmp_path: Path) -> None:
    today, yesterday = day(), day(-1)
    book = DayBook(tmp_path)
    book.add(today, "alpha", requests=1, images=2, cost=0.04)
    book.add(today, "alpha", requests=1, images=1, cost=0.02)
    book.add(today, "beta", requests=3, images=0, cost=0.0)
    book.add(yesterday, "alpha", requests=5, images=7, cost=0.5)
    book.add(today, "alpha", images=4, cost=0.1)
    assert book.flush() is True
    again = DayBook(tmp_path)
    try:
        loaded = again.load(today)
        assert set(loaded) == {"alpha", "beta"}
        assert loaded["alpha"].requests == 2
        assert loaded["alpha"].images == 7
        assert loaded["alpha"].cost == pytest.approx(0.16)
        assert loaded["beta"] == DayUsage(requests=3, images=0, cost=0.0)
        assert again.load(yesterday) == {"alpha": DayUsage(5, 7, pytest.approx(0.5))}
        assert again.load(day(-2)) == {}
    finally:
        again.close()
        book.close()


def test_load_sees_what_was_added_without_an_explicit_flush(tmp_path: Path) -> None:
    book = DayBook(tmp_path)
    book.add(day(), "alpha", requests=2, images=3, cost=0.25)
    try:
        assert book.load(day()) == {"alpha": DayUsage(2, 3, pytest.approx(0.25))}
    finally:
        book.close()


def test_concurrent_adds_are_all_counted(tmp_path: Path) -> None:
    book = DayBook(tmp_path)
    threads, per_thread = 8, 125
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            book.add(day(), f"client-{n % 2}", requests=1, images=i % 3, cost=0.01)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    book.close()

    images_per_thread = sum(i % 3 for i in range(per_thread))
    again = DayBook(tmp_path)
    try:
        loaded = again.load(day())
    finally:
        again.close()
    assert set(loaded) == {"client-0", "client-1"}
    for usage in loaded.values():
        assert usage.requests == (threads // 2) * per_thread
        assert usage.images == (threads // 2) * images_per_thread
        assert usage.cost == pytest.approx((threads // 2) * per_thread * 0.01)
    assert sum(u.requests for u in loaded.values()) == 1000


def test_close_is_idempotent_and_later_adds_are_ignored(tmp_path: Path) -> None:
    book = DayBook(tmp_path)
    book.add(day(), "alpha", requests=1)
    book.close()
    book.close()
    book.add(day(), "alpha", requests=100)
    assert book.flush() is True
    again = DayBook(tmp_path)
    try:
        assert again.load(day())["alpha"].requests == 1
    finally:
        again.close()


def test_a_daybook_never_written_starts_no_thread(tmp_path: Path) -> None:
    def writers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "daybook"}

    before = writers()
    book = DayBook(tmp_path)
    assert book.load(day()) == {}
    assert book.flush() is True
    assert writers() == before
    book.close()
    assert (tmp_path / DB_FILE).exists()


def test_memory_only_writes_nothing(tmp_path: Path) -> None:
    book = DayBook(None)
    book.add(day(), "alpha", requests=1, images=1, cost=1.0)
    assert book.flush() is True
    assert book.load(day()) == {}
    book.close()
    book.close()
    assert list(tmp_path.iterdir()) == []


def test_days_older_than_a_week_are_dropped_at_open(tmp_path: Path) -> None:
    book = DayBook(tmp_path)
    book.add(day(-30), "alpha", requests=1)
    book.add(day(-8), "alpha", requests=2)
    book.add(day(-7), "alpha", requests=3)
    book.add(day(), "alpha", requests=4)
    book.close()

    again = DayBook(tmp_path)
    try:
        assert again.load(day(-30)) == {}
        assert again.load(day(-8)) == {}
        assert again.load(day(-7))["alpha"].requests == 3
        assert again.load(day())["alpha"].requests == 4
    finally:
        again.close()
    with closing(sqlite3.connect(tmp_path / DB_FILE)) as conn:
        days = {row[0] for row in conn.execute("SELECT day FROM day_usage")}
    assert days == {day(-7), day()}


def test_database_file_is_in_wal_mode_with_the_known_version(tmp_path: Path) -> None:
    DayBook(tmp_path).close()
    with closing(sqlite3.connect(tmp_path / DB_FILE)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_write_error_is_logged_once_and_the_writer_keeps_going(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    book = DayBook(tmp_path)
    book.add(day(), "alpha", requests=1)
    assert book.flush() is True
    with closing(sqlite3.connect(tmp_path / DB_FILE)) as other:
        other.execute("DROP TABLE day_usage")
        other.commit()
    caplog.set_level(logging.ERROR, logger="gateway.state")
    book.add(day(), "alpha", requests=2)
    assert book.flush() is False
    book.add(day(), "alpha", requests=4)
    assert book.flush() is False
    assert len([r for r in caplog.records if r.name == "gateway.state"]) == 1

    with closing(sqlite3.connect(tmp_path / DB_FILE)) as other:
        other.execute(
            "CREATE TABLE day_usage (day TEXT, client TEXT, requests INTEGER, images INTEGER,"
            " cost REAL, PRIMARY KEY (day, client))"
        )
        other.commit()
    book.add(day(), "alpha", requests=8)
    try:
        assert book.load(day()) == {"alpha": DayUsage(8, 0, 0.0)}
    finally:
        book.close()
    assert len([r for r in caplog.records if r.name == "gateway.state"]) == 1


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateDirError) as raised:
        DayBook(tmp_path)
    message = str(raised.value)
    assert "newer" in message
    assert "[state] dir" in message
    assert str(tmp_path / DB_FILE) in message


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"this is not sqlite at all, just text" * 100)
    with pytest.raises(StateDirError) as raised:
        DayBook(tmp_path)
    assert "[state] dir" in str(raised.value)
    assert DB_FILE in str(raised.value)


def test_open_state_dir_empty_means_memory_only() -> None:
    assert open_state_dir("") is None


def test_open_state_dir_creates_a_nested_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state"
    path = open_state_dir(str(target))
    assert path == target.resolve()
    assert target.is_dir()
    assert (target.stat().st_mode & 0o777) == 0o700 & ~current_umask()
    assert list(target.iterdir()) == []


def test_open_state_dir_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = open_state_dir("~/gw-state")
    assert path == (tmp_path / "gw-state").resolve()
    assert path is not None and path.is_dir()


def test_open_state_dir_refuses_an_unwritable_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes to a 0o500 directory anyway (see the test under a file)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StateDirError) as raised:
            open_state_dir(str(locked))
    finally:
        locked.chmod(0o700)
    message = str(raised.value)
    assert "[state] dir" in message
    assert str(locked) in message
    assert "Permission denied" in message


def test_open_state_dir_refuses_a_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    target = tmp_path / "file" / "sub"
    with pytest.raises(StateDirError) as raised:
        open_state_dir(str(target))
    message = str(raised.value)
    assert "[state] dir" in message
    assert str(target) in message
    assert "GATEWAY_STATE_DIR" in message


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_counts_wait_for_the_gathering_but_a_flush_or_close_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.state.daybook._GATHER_SECONDS", 60.0)

    def committed() -> dict[str, int]:
        with closing(sqlite3.connect(tmp_path / DB_FILE)) as conn:
            return dict(conn.execute("SELECT client, requests FROM day_usage").fetchall())

    book = DayBook(tmp_path)
    book.add(day(), "alpha", requests=1)
    threading.Event().wait(0.3)  # the writer is gathering: nothing committed yet
    assert committed() == {}
    assert book.flush(timeout=5.0) is True  # cut short, not 60 s
    assert committed() == {"alpha": 1}
    book.add(day(), "alpha", requests=2)
    book.close()  # likewise
    assert committed() == {"alpha": 3}
