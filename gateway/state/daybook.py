"""Each client's usage of the current UTC day, in a small SQLite file in the state directory,
so that one gateway process without Redis does not forget it on restart. The event loop never
waits on the disk: add() only sums into a dict (a queue item per request cost 6.5-7 us of
CPU between add() and the writer thread; this costs 0.6), and one writer thread commits
whatever has piled up in one transaction, so a burst of requests costs one commit."""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..config import ConfigError

log = logging.getLogger("gateway.state")

DB_FILE = "gateway.sqlite3"
SCHEMA_VERSION = 1
KEEP_DAYS = 7
_PROBE = ".gateway-write-probe"
# How long the writer lets counts pile up before a commit. Each wake of the writer costs the
# busy event loop's thread GIL hand-overs (one per SQLite call, ~0.1-0.5 ms of CPU each on
# the bench machine), not the ~20 us the commit itself takes: at 0.05 s the writer cost
# ~10 us of CPU per cache hit at 3,000 hits/s (bench/RESULTS.md). A SIGKILL loses at most
# this long of counts; a shutdown or flush() commits at once.
_GATHER_SECONDS = 1.0
_HINT = (
    'set [state] dir (or GATEWAY_STATE_DIR) to a writable directory, or to "" to keep state'
    " in memory only"
)
_UPSERT = (
    "INSERT INTO day_usage (day, client, requests, images, cost) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT(day, client) DO UPDATE SET requests = requests + excluded.requests,"
    " images = images + excluded.images, cost = cost + excluded.cost"
)


class StateDirError(ConfigError):
    """The state directory cannot be used; the message names `[state] dir` and says what to do."""


def open_state_dir(directory: str) -> Path | None:
    """The state directory, created and proven writable now, so a bad setting stops the start
    rather than losing counts later. "" means memory only (None)."""
    if not directory:
        return None
    path = Path(directory).expanduser()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = path / _PROBE
        probe.touch()
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateDirError(f"[state] dir: cannot write to '{path}' ({reason}); {_HINT}") from None
    return path.resolve()


@dataclass
class DayUsage:
    """One client's counts of one day."""

    requests: int = 0
    images: int = 0
    cost: float = 0.0


class DayBook:
    """Per-client usage of each UTC day, in `<dir>/gateway.sqlite3` (file name: DB_FILE)."""

    def __init__(self, directory: Path | None) -> None:
        self._path = directory / DB_FILE if directory is not None else None
        # What the writer has still to commit, by (day, client); flushes waiting for it.
        self._pending: dict[tuple[str, str], DayUsage] = {}
        self._waiting: list[threading.Event] = []
        self._stopping = False
        self._wake = threading.Event()  # set when there is something for the writer
        self._hurry = threading.Event()  # set when a flush or close should not wait
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = directory is None
        self._failed = False
        self._conn: sqlite3.Connection | None = None
        if self._path is not None:
            # Opened here, not in the thread, so an unusable file stops the start; from then on
            # only the writer thread uses it (Thread.start() orders the hand-over), hence
            # check_same_thread=False. load() reads through a connection of its own.
            self._conn = self._open(self._path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, check_same_thread=False)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version <= SCHEMA_VERSION:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                oldest = (datetime.now(UTC).date() - timedelta(days=KEEP_DAYS)).isoformat()
                with conn:
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS day_usage (day TEXT, client TEXT, requests"
                        " INTEGER, images INTEGER, cost REAL, PRIMARY KEY (day, client))"
                    )
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("DELETE FROM day_usage WHERE day < ?", (oldest,))
                return conn
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise StateDirError(f"[state] dir: cannot use '{path}' ({exc}); {_HINT}") from None
        conn.close()
        raise StateDirError(
            f"[state] dir: '{path}' was written by a newer gateway (schema version {version},"
            f" this one knows {SCHEMA_VERSION}); upgrade the gateway or set [state] dir"
            " (or GATEWAY_STATE_DIR) to another directory"
        )

    def load(self, day: str) -> dict[str, DayUsage]:
        """The counts of `day` ('YYYY-MM-DD') by client, as last written, including everything
        add()ed so far. Blocking: meant for start-up, before serving."""
        if self._path is None:
            return {}
        self.flush()
        try:
            with closing(sqlite3.connect(self._path)) as conn:
                rows = conn.execute(
                    "SELECT client, requests, images, cost FROM day_usage WHERE day = ?", (day,)
                ).fetchall()
        except sqlite3.Error as exc:
            raise StateDirError(
                f"[state] dir: cannot read '{self._path}' ({exc}); {_HINT}"
            ) from None
        return {client: DayUsage(r, i, c) for client, r, i, c in rows}

    def add(
        self, day: str, client: str, *, requests: int = 0, images: int = 0, cost: float = 0.0
    ) -> None:
        """Count usage. Returns at once: the writer thread commits it. Ignored when memory-only
        or closed (the caller keeps its own counts in memory either way)."""
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(self._conn,), name="daybook", daemon=True
                )
                self._thread.start()
            if not self._pending:
                self._wake.set()  # the first of a batch: later ones ride along
            usage = self._pending.get((day, client))
            if usage is None:
                usage = self._pending[(day, client)] = DayUsage()
            usage.requests += requests
            usage.images += images
            usage.cost += cost

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything add()ed before the call is committed. False on timeout, or
        once a write has failed (the file then lacks those counts)."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or self._closed:
                return not self._failed
            self._waiting.append(done)
            self._wake.set()
            self._hurry.set()
        return done.wait(timeout) and not self._failed

    def close(self) -> None:
        """Commit what is queued, stop the writer thread, close the file. Idempotent."""
        with self._lock:
            self._closed = True
            thread, conn, self._conn = self._thread, self._conn, None
            if conn is None:  # memory only, or closed already
                return
            if thread is not None:
                self._stopping = True
                self._wake.set()
                self._hurry.set()
        if thread is None:
            conn.close()
        else:
            thread.join(timeout=5.0)  # the thread closes the connection once it has committed

    def _run(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            self._wake.wait()
            # Let a burst pile up: at most one commit a second however busy the gateway is
            # (a SIGKILL loses at most this long of counts); a flush or close cuts it short.
            self._hurry.wait(_GATHER_SECONDS)
            with self._lock:
                self._wake.clear()
                self._hurry.clear()
                sums, self._pending = self._pending, {}
                waiting, self._waiting = self._waiting, []
                stopping = self._stopping
            self._write(conn, sums)
            for event in waiting:
                event.set()
        conn.close()

    def _write(self, conn: sqlite3.Connection, sums: dict[tuple[str, str], DayUsage]) -> None:
        if not sums:
            return
        rows = [(d, c, u.requests, u.images, u.cost) for (d, c), u in sums.items()]
        try:
            with conn:
                conn.executemany(_UPSERT, rows)
        except sqlite3.Error:
            if not self._failed:
                log.exception("[state] dir: cannot write usage counts to %s", self._path)
            self._failed = True
