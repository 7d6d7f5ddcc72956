"""The gateway as a child process, the way operators run it, its output captured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.gateway import free_port


def wait_until_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Callable[[], str], timeout: float = 30
) -> None:
    """Return once GET {url}/healthz answers 200; fail with the log if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the gateway did not start:\n{log()}")
        time.sleep(0.05)


class ChildGateway:
    """A gateway command as a child process on `port`, its output in workdir/gateway.log,
    returned once it answers /healthz."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        workdir: Path,
        port: int,
        *,
        cwd: Path | None = None,
        timeout: float = 30,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "gateway.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_until_healthy(self.url, self.proc, self.log, timeout=timeout)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        if not self._log.closed:
            self._log.close()
        return code


class GatewayProcess(ChildGateway):
    """`python -m gateway` on a free port; config and log live in a folder of its own."""

    def __init__(self, workdir: Path, toml_text: str | None, env: dict[str, str] | None = None):
        port = free_port()
        workdir = workdir / f"gateway-{port}"
        workdir.mkdir(parents=True)
        args = [sys.executable, "-m", "gateway", "--port", str(port)]
        if toml_text is not None:
            config = workdir / "config.toml"
            config.write_text(toml_text)
            args += ["--config", str(config)]
        child_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_TOKENS")}
        child_env.update(env or {})
        super().__init__(args, child_env, workdir, port, timeout=20)
