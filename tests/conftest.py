"""Shared fixtures: gateways, fake provider servers (tests/support/fakes.py) and child
gateway processes, all on 127.0.0.1 and all stopped at the end of each test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fakes import FakeUpstream
from tests.support.gateway import RunningGateway, make_config


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's gateways keep their state directory (the day's counts) in a folder of
    the test's own, never in the user's home; child processes inherit it."""
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def gateway_factory() -> Iterator[Any]:
    """Start gateways from TOML text; all are stopped at the end of the test."""
    running: list[RunningGateway] = []

    def start(toml_text: str, env: dict[str, str] | None = None) -> RunningGateway:
        gw = RunningGateway(make_config(toml_text, env)).start()
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.stop()


@pytest.fixture
def fake_factory() -> Iterator[Any]:
    """Start fake upstream servers; all are stopped at the end of the test."""
    started: list[FakeUpstream] = []

    def start(kind: str, **kwargs: Any) -> FakeUpstream:
        fake = FakeUpstream(kind, **kwargs).start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture
def spawn(tmp_path: Any) -> Iterator[Any]:
    """Start `python -m gateway` child processes; all get SIGTERM at the end of the test."""
    from tests.support.processes import GatewayProcess

    procs: list[GatewayProcess] = []

    def start(toml_text: str | None, env: dict[str, str] | None = None) -> GatewayProcess:
        p = GatewayProcess(tmp_path, toml_text, env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()
