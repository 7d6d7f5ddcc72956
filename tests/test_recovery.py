"""A provider's blip is not the gateway's outage: provider failures are blamed on the
upstream, never on its tokens; a broken upstream is tried again at once when nothing else
can serve (panic) and at a short interval otherwise; and service comes back with the
provider. Real gateway, real fake providers on 127.0.0.1, the official SDK as the client.

The seconds it takes are measured by the benchmark (`python bench/run.py --scenario
recovery`); these tests check the behaviour: nothing sent after the provider is back is
refused, and no token is put out of service for the provider's trouble.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.support.gateway import ADMIN_KEY, CLIENT_KEY, CLIENTS_TOML, upstream_toml
from tests.support.metrics import labels, of, samples
from tests.support.traffic import Traffic

# Defaults of [pool] except what makes a failing call fail fast; the cache is off so every
# request reaches the provider.
POOL = """
[cache]
enabled = false

[pool]
retry_backoff_seconds = 0.05
"""


TOKENS = ("tok-a", "tok-b")


def _ace(fake, tokens=TOKENS, extra: str = "timeout_seconds = 5") -> str:
    return upstream_toml("ace", fake, list(tokens), extra=extra)


def _assert_recovered(gw, traffic: Traffic, back: float) -> None:
    """Everything sent once the provider was healthy again succeeded; no token was put out
    of service; the breaker opened and closed, as the admin view and metrics say."""
    after = traffic.sent_after(back)
    assert after, "traffic went on after the provider came back"
    refused = [r for r in after if r.status != 200]
    assert refused == [], f"{len(refused)} of {len(after)} refused after the return: {refused[:3]}"
    first = traffic.first_success_after(back)
    # 27 s before the health rules were redone; the benchmark holds the 1 s target.
    assert first is not None and first < 5, first
    upstream = gw.admin()["upstreams"][0]
    assert upstream["state"] == "ok"
    assert {t["state"] for t in upstream["tokens"]} == {"ok"}, upstream["tokens"]
    assert upstream["breaker"]["ejections"] >= 1 and upstream["breaker"]["recoveries"] >= 1
    found = samples(gw.metrics())
    out = [
        k for k, v in of(found, "nano_banana_token_state").items() if v and ("state", "ok") not in k
    ]
    assert out == [], out
    assert of(found, "nano_banana_upstream_recoveries_total")[labels(upstream="ace")] >= 1


def _every_token(fake, step: str, **options) -> Callable[[], None]:
    """What makes every token of the fake answer with `step` from now on."""

    def behave() -> None:
        for token in TOKENS:
            fake.behave(token, step, **options)

    return behave


def _outage(gw, fake, down, up, seconds: float = 1.5) -> float:
    """Steady traffic; `down()` for `seconds`; `up()`; traffic for 2 s more. Returns the
    moment the provider was healthy again."""
    with Traffic(gw.url, CLIENT_KEY) as traffic:
        traffic.wait_for_answers(16)
        down()
        time.sleep(seconds)
        up()
        back = time.monotonic()
        time.sleep(2)
        traffic.wait_for_answers(16)
    gw.traffic = traffic
    return back


def test_provider_restart(fake_factory, gateway_factory, caplog):
    fake = fake_factory("acedata")
    gw = gateway_factory(_ace(fake) + CLIENTS_TOML + POOL)
    with caplog.at_level("WARNING", logger="gateway.pool"):
        back = _outage(gw, fake, fake.stop, fake.start)
    _assert_recovered(gw, gw.traffic, back)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("upstream broken: ace") for m in messages), messages
    assert any(m.startswith("upstream recovered: ace after") for m in messages), messages
    assert not any("benched" in m or "token broken" in m for m in messages), messages


def test_burst_of_server_errors(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(_ace(fake) + CLIENTS_TOML + POOL)

    back = _outage(gw, fake, _every_token(fake, "server_error"), _every_token(fake, "ok"))
    _assert_recovered(gw, gw.traffic, back)


def test_provider_that_accepts_and_never_answers(fake_factory, gateway_factory):
    fake = fake_factory("acedata", default_options={"sleep": 30})
    gw = gateway_factory(_ace(fake, extra="timeout_seconds = 0.5") + CLIENTS_TOML + POOL)

    back = _outage(gw, fake, _every_token(fake, "timeout", sleep=30), _every_token(fake, "ok"))
    _assert_recovered(gw, gw.traffic, back)


def test_panic_calls_are_bounded_and_the_rest_told_when_to_retry(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        _ace(fake, extra="timeout_seconds = 1")
        + CLIENTS_TOML
        + POOL
        + "panic_concurrency = 2\npanic_wait_seconds = 3\nmax_attempts = 1\n"
        # Panic calls start at most two per 5 s: 0 s and 2.5 s into the wave.
        + "probe_interval_seconds = 5\nbreaker_seconds = 10\n"
    )
    _every_token(fake, "timeout", sleep=30)()

    async def wave(n: int) -> list[BaseException | object]:
        client = gw.async_client(timeout=30)
        return await asyncio.gather(
            *(client.images.generate(prompt=f"wave {i}", response_format="url") for i in range(n)),
            return_exceptions=True,
        )

    first = asyncio.run(wave(6))  # all six time out: the upstream breaks
    assert all(isinstance(r, openai.APIStatusError) and r.status_code == 504 for r in first)
    assert gw.admin()["upstreams"][0]["state"] in ("broken", "probing")
    fake.reset()
    second = asyncio.run(wave(6))
    # Only two calls went to the broken provider; the others waited 3 s for a third and
    # were then told to come back in a second.
    assert fake.max_concurrent <= 2
    assert len(fake.generation_calls()) == 2
    refused = [r for r in second if isinstance(r, openai.APIStatusError) and r.status_code == 503]
    assert len(refused) == 4
    for r in refused:
        assert r.body["code"] == "upstreams_unavailable"
        assert r.response.headers["retry-after"] == "1"
        assert "x-should-retry" not in r.response.headers


def test_mixed_faults_with_failover_lose_nothing(fake_factory, gateway_factory):
    down = fake_factory("acedata")
    flaky = fake_factory("xhuoapi", latency=0.02)
    steady = fake_factory("defapi", latency=0.02)
    rng = random.Random(7)
    for token in ("x1", "x2"):
        flaky.behave(token, [rng.choices(["ok", "server_error"], [7, 3])[0] for _ in range(400)])
    for fake, token in ((down, "a2"), (flaky, "x2"), (steady, "dk-test-0002")):
        fake.behave(token, "invalid_token")
    down.behave("a1", "ok")
    gw = gateway_factory(
        upstream_toml("down", down, ["a1", "a2"], extra="timeout_seconds = 5")
        + upstream_toml("flaky", flaky, ["x1", "x2"], extra="timeout_seconds = 5")
        + upstream_toml(
            "steady", steady, ["dk-test-0001", "dk-test-0002"], extra="timeout_seconds = 5"
        )
        + CLIENTS_TOML
        + POOL
        + "max_attempts = 8\n"
    )
    down.stop()

    async def burst(start: int, n: int) -> list[BaseException | object]:
        client = gw.async_client(timeout=120)
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> object:
            async with sem:
                return await client.images.generate(prompt=f"mixed {i}", response_format="url")

        return await asyncio.gather(
            *(one(i) for i in range(start, start + n)), return_exceptions=True
        )

    results = asyncio.run(burst(0, 150))
    steady.stop()  # the steady one restarts mid-run
    time.sleep(0.3)
    steady.start()
    results += asyncio.run(burst(150, 150))
    lost = [r for r in results if isinstance(r, BaseException)]
    assert lost == [], f"{len(lost)} of {len(results)} lost, e.g. {lost[:2]}"
    states = {
        (u["name"], t["index"]): t["state"] for u in gw.admin()["upstreams"] for t in u["tokens"]
    }
    # The dead tokens are benched; the live ones of the failing providers are not.
    assert states[("flaky", 1)] == states[("steady", 1)] == "benched"
    assert states[("flaky", 0)] == "ok" and states[("steady", 0)] == "ok"


@pytest.mark.parametrize("kind", ["acedata", "defapi"])
def test_a_token_that_fails_while_its_siblings_succeed_is_broken(
    fake_factory, gateway_factory, kind
):
    fake = fake_factory(kind)
    fake.behave("sick", "server_error")
    gw = gateway_factory(
        upstream_toml("up", fake, ["sick", "well"])
        + CLIENTS_TOML
        + POOL
        + "breaker_threshold = 3\nprobe_interval_seconds = 60\nbreaker_seconds = 60\n"
    )
    client = gw.client()
    for i in range(12):
        assert client.images.generate(prompt=f"s {i}", response_format="url").data
    # Three failures in a row while "well" succeeded: only the token explains them.
    assert len(fake.generation_calls("sick")) == 3
    tokens = {t["index"]: t for t in gw.admin()["upstreams"][0]["tokens"]}
    assert tokens[0]["state"] == "broken" and tokens[1]["state"] == "ok"
    assert gw.admin()["upstreams"][0]["state"] == "ok"


def test_connections_reset_mid_answer_blame_the_upstream_not_the_tokens(
    fake_factory, gateway_factory
):
    fake = fake_factory("acedata")
    gw = gateway_factory(_ace(fake) + CLIENTS_TOML + POOL)

    back = _outage(gw, fake, _every_token(fake, "reset"), _every_token(fake, "ok"))
    _assert_recovered(gw, gw.traffic, back)
    found = samples(gw.metrics())
    outcomes = of(found, "nano_banana_upstream_requests_total")
    assert outcomes[labels(upstream="ace", outcome="connection")] >= 5


def test_a_paused_gateway_comes_back_without_benching_anything(fake_factory, spawn):
    """SIGSTOP for 15 s (a VM pause, a stop-the-world stall), then SIGCONT: the provider
    closed the idle keep-alive connections meanwhile; nothing is put out of service."""
    fake = fake_factory("acedata", latency=0.05)
    fake.idle_timeout = 2.0
    proc = spawn(_ace(fake) + CLIENTS_TOML + POOL)
    with Traffic(proc.url, CLIENT_KEY) as traffic:
        traffic.wait_for_answers(24)
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(15)
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        time.sleep(2)
        traffic.wait_for_answers(24)
    after = traffic.sent_after(resumed)
    assert after and all(r.status == 200 for r in after), [r for r in after if r.status != 200]
    # The requests held through the pause were answered, too.
    assert all(r.status == 200 for r in traffic.records), [
        r for r in traffic.records if r.status != 200
    ]
    with httpx.Client(base_url=proc.url, timeout=10) as http:
        admin = http.get("/admin/upstreams", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    upstream = admin.json()["upstreams"][0]
    assert {t["state"] for t in upstream["tokens"]} == {"ok"}, upstream["tokens"]
    assert upstream["state"] == "ok"
    assert "benched" not in proc.log() and "broken" not in proc.log()
