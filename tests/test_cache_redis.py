"""Several replicas sharing one Redis pay once per prompt between them, and a Redis that
goes away costs no request: each replica falls back to its own cache."""

from __future__ import annotations

import concurrent.futures
import itertools
import time

import httpx
import openai
import pytest

from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, upstream_toml
from tests.support.processes import GatewayProcess
from tests.support.redis_server import RedisServer

REDIS_PASSWORD = "redis-SECRET-password-42"


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def replicas(tmp_path, fake_factory, redis_server):
    """Two gateway processes on one fake upstream and one Redis."""
    started: list[GatewayProcess] = []
    fake = fake_factory("acedata", latency=0.5)

    def start(count: int = 2, redis_url: str | None = None) -> list[GatewayProcess]:
        toml = (
            upstream_toml("ace", fake, ["tok-1", "tok-2"])
            + CLIENTS_TOML
            + f'[cache]\nredis_url = "{redis_url or redis_server.url}"\n'
            + "redis_timeout_seconds = 0.3\n"
        )
        for _ in range(count):
            started.append(GatewayProcess(tmp_path, toml))
        return started[-count:]

    yield fake, start
    for proc in started:
        proc.stop()


def _generate(proc: GatewayProcess, prompt: str, **params) -> tuple[str, str]:
    client = openai.OpenAI(base_url=f"{proc.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)
    params.setdefault("response_format", "url")
    raw = client.images.with_raw_response.generate(prompt=prompt, **params)
    return raw.headers["x-cache"], raw.parse().data[0].url


def test_the_second_replica_serves_the_first_ones_result(replicas):
    fake, start = replicas
    a, b = start(2)
    how_a, url_a = _generate(a, "shared fox")
    how_b, url_b = _generate(b, "shared fox")
    assert (how_a, how_b) == ("miss", "hit")
    assert url_b == url_a
    assert len(fake.generation_calls()) == 1
    for proc in (a, b):
        assert REDIS_PASSWORD not in proc.log()


def test_identical_requests_on_two_replicas_coalesce(replicas):
    fake, start = replicas
    a, b = start(2)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(_generate, proc, "one fox for all") for proc in [a, b] * 5]
        outcomes = [f.result() for f in futures]
    assert len(fake.generation_calls()) == 1
    assert len({url for _, url in outcomes}) == 1
    assert sorted(how for how, _ in outcomes).count("miss") == 1


def test_stopping_redis_loses_no_request(replicas, redis_server):
    _fake, start = replicas
    a, b = start(2)
    assert "nano_banana_redis_up 1.0" in httpx.get(f"{a.url}/metrics").text
    counter = itertools.count()

    def one(i: int) -> tuple[str, str]:
        proc = (a, b)[(i // 2) % 2]
        # Half the prompts repeat, so hits, misses and coalesced waits all happen.
        prompt = f"fox {i % 6}" if i % 2 else f"unique fox {next(counter)}"
        return _generate(proc, prompt)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(24)]
        time.sleep(0.8)
        redis_server.stop()
        futures += [pool.submit(one, i) for i in range(24, 48)]
        outcomes = [f.result() for f in futures]  # any failed request raises here

    assert len(outcomes) == 48 and all(url for _, url in outcomes)
    for proc in (a, b):
        assert "Redis at 127.0.0.1" in proc.log() and "unavailable" in proc.log()
        assert REDIS_PASSWORD not in proc.log()
    assert "nano_banana_redis_up 0.0" in httpx.get(f"{a.url}/metrics").text
    # Each replica still answers repeats from its own cache.
    _generate(a, "after redis")
    assert _generate(a, "after redis")[0] == "hit"


def test_unreachable_redis_at_start_still_serves(tmp_path, fake_factory, replicas):
    _fake, start = replicas
    (a,) = start(1, redis_url="redis://127.0.0.1:1/0")
    assert _generate(a, "no redis")[0] == "miss"
    assert _generate(a, "no redis")[0] == "hit"
    assert "unavailable" in a.log()
