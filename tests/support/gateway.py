"""The gateway under test: the real app served by uvicorn on 127.0.0.1 in a thread, the
official OpenAI SDK pointed at it, and configs written as the gateway reads them."""

from __future__ import annotations

import socket
import threading
import time
import tomllib
from typing import Any

import httpx
import openai
import uvicorn
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import Config, parse_config
from tests.support.fakes import FakeUpstream

CLIENT_KEY = "sk-team-a-0123456789"
ADMIN_KEY = "admin-key-0123456789"


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningGateway:
    """The gateway app on a real socket, in a thread with its own event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app: Starlette = create_app(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=30,
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> RunningGateway:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    @property
    def pool(self) -> Any:
        return self.app.state.pool

    def client(self, key: str = CLIENT_KEY, **kwargs: Any) -> openai.OpenAI:
        """The official SDK, as an app would build it, minus its own retries (so each test
        sees the gateway's answer, not the SDK's second try)."""
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, **kwargs)

    def async_client(self, key: str = CLIENT_KEY, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120)
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, **kwargs)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def admin(self) -> dict[str, Any]:
        with self.http() as c:
            r = c.get("/admin/upstreams", headers={"authorization": f"Bearer {ADMIN_KEY}"})
            r.raise_for_status()
            return r.json()

    def metrics(self) -> str:
        with self.http() as c:
            return c.get("/metrics").text


def make_config(toml_text: str, env: dict[str, str] | None = None) -> Config:
    """A Config from TOML text, the way the gateway reads a file."""
    return parse_config(tomllib.loads(toml_text), env or {}, source="test")


def upstream_toml(
    name: str,
    fake: FakeUpstream,
    tokens: list[str],
    *,
    kind: str | None = None,
    extra: str = "",
) -> str:
    """One [[upstreams]] table pointing at a fake server."""
    listed = ", ".join(f'"{t}"' for t in tokens)
    return (
        f'[[upstreams]]\nname = "{name}"\ntype = "{kind or fake.kind}"\n'
        f'base_url = "{fake.base_url}"\ntokens = [{listed}]\n'
        # Fast polling so defapi tests take milliseconds, not the production seconds.
        + (
            "poll_interval_seconds = 0.02\npoll_max_interval_seconds = 0.05\n"
            if (kind or fake.kind) == "defapi"
            else ""
        )
        + extra
        + "\n"
    )


CLIENTS_TOML = f"""
[[clients]]
name = "team-a"
key = "{CLIENT_KEY}"

[[clients]]
name = "team-b"
key = "sk-team-b-0123456789"

[admin]
key = "{ADMIN_KEY}"
"""
