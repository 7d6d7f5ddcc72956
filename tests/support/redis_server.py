"""A real redis-server (Debian's package) on 127.0.0.1 for the tests that share state."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.gateway import free_port


class RedisServer:
    """redis-server on a free port, no persistence, stopped and restarted at will.
    `extra_args` come last, so a deployment file's own arguments are honoured."""

    def __init__(
        self, workdir: Path, password: str | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # .ci/run installs it; a missing server is a failure, not a skip
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self._binary = binary
        self._dir = workdir
        self._dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self._extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += self._extra_args
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._proc = None
