"""A real, throwaway PostgreSQL server (Debian's postgresql 15) on 127.0.0.1 for tests.

PostgreSQL refuses to run as root: as root the server runs as the `postgres` OS user, in a
temporary directory given to it. Trust authentication, a free port, the unix socket inside
that directory; the server is stopped (and its files removed) at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.gateway import free_port


def _installed(name: str) -> str | None:
    """The newest Debian postgresql's `name` (its binaries are not on PATH)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return str(versions[-1]) if versions else None


def _binary(name: str) -> str:
    found = shutil.which(name) or _installed(name)
    if found is None:  # a missing server is a failure, not a skip
        raise RuntimeError(f"{name} is not installed: apt-get install postgresql")
    return found


class PostgresServer:
    """One server; `database()` makes a fresh database on it and gives its URL."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="pg-", dir=workdir))
        self._data = self._root / "data"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=self._user, timeout=120)

    def start(self) -> PostgresServer:
        if self._user is not None:
            shutil.chown(self._root, self._user, self._user)
            # mkdtemp's parent may be private to root: the server needs to reach its dir.
            parent = self._root.parent
            while parent != parent.parent and not os.stat(parent).st_mode & 0o001:
                os.chmod(parent, os.stat(parent).st_mode | 0o001)
                parent = parent.parent
        try:
            self._run(
                _binary("initdb"), "-D", str(self._data), "-A", "trust", "-U", "postgres",
                "--no-sync", "-E", "UTF8",
            )  # fmt: skip
            self._proc = subprocess.Popen(
                [
                    _binary("postgres"),
                    "-D",
                    str(self._data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self._root),
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=100",
                ],
                user=self._user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("postgres did not start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                # The port answers before the server takes logins: ask for a real one.
                self._psql("postgres", "SELECT 1")
                return
            except (OSError, subprocess.CalledProcessError):
                time.sleep(0.05)

    def _psql(self, db: str, sql: str) -> None:
        self._run(
            _binary("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql,
        )  # fmt: skip

    def database(self) -> str:
        """A new, empty database: its postgresql:// URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._psql("postgres", f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def url(self) -> str:
        """The server's own `postgres` database (known before the server starts)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def crash(self) -> None:
        """The server dies at once, as in a crash (stop() still cleans up)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # fast shutdown: clients are cut off
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        shutil.rmtree(self._root, ignore_errors=True)


@contextmanager
def postgres_server(workdir: Path | None = None) -> Iterator[str]:
    """A server of its own with one fresh database: the database's URL."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(workdir).start()
    try:
        yield server.database()
    finally:
        server.stop()
