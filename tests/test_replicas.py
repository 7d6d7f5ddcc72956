"""Two gateway processes over one real redis-server: per-client limits, the day's counts and
token health are one set for every replica, atomically; a replica killed mid-request gives
its hold back within its lease; a Redis that goes away costs no request and its replicas'
counts come back once it answers. Without Redis, one process keeps the day on disk."""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.fakes import FakeUpstream
from tests.support.gateway import ADMIN_KEY, free_port, upstream_toml
from tests.support.metrics import labels, of, samples
from tests.support.processes import GatewayProcess
from tests.support.redis_server import RedisServer

KEY_A = "sk-replica-team-a-0001"
KEY_B = "sk-replica-team-b-0002"
DEAD = "dead-token-0001"
GOOD = "good-token-0002"

Outcome = str | tuple[int, str | None]
OK = "ok"
OVER_DAY = (429, "insufficient_quota")
OVER_RATE = (429, "rate_limit_exceeded")
# uvicorn re-raises SIGTERM once its graceful shutdown is done.
CLEAN_EXIT = (0, -signal.SIGTERM)

_prompts = itertools.count()


# ---------------------------------------------------------------- configs and calls


def clients_toml(a: str = "", b: str = "") -> str:
    """team-a and team-b, each with the limit lines given."""
    return (
        f'\n[[clients]]\nname = "team-a"\nkey = "{KEY_A}"\n{a}\n'
        f'\n[[clients]]\nname = "team-b"\nkey = "{KEY_B}"\n{b}\n'
        f'\n[admin]\nkey = "{ADMIN_KEY}"\n'
    )


def redis_toml(url: str, extra: str = "") -> str:
    return f'\n[redis]\nurl = "{url}"\nsync_seconds = 0.2\ntimeout_seconds = 0.3\n{extra}\n'


def config(
    fake: FakeUpstream,
    clients: str,
    redis_url: str | None,
    *,
    redis_extra: str = "",
    extra: str = "",
    tokens: tuple[str, ...] = ("tok-replica-0001", "tok-replica-0002"),
) -> str:
    text = upstream_toml("ace", fake, list(tokens)) + clients + extra
    if redis_url is not None:
        text += redis_toml(redis_url, redis_extra)
    return text


def sdk(proc: GatewayProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0, timeout=60)


def call(proc: GatewayProcess, key: str = KEY_A, *, n: int = 1) -> Outcome:
    """One generation with a prompt never sent before (so no cache hit answers it):
    "ok", or the refusal's (status, code)."""
    try:
        made = sdk(proc, key).images.generate(
            model="nano-banana", prompt=f"replica prompt {next(_prompts)}", n=n,
            response_format="url",
        )  # fmt: skip
    except openai.APIStatusError as exc:
        return exc.status_code, exc.code
    assert len(made.data) == n
    return OK


def concurrently(jobs: list[Callable[[], Outcome]]) -> list[Outcome]:
    """Run every job at once (all released by one barrier), in order of the list."""
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], Outcome]) -> Outcome:
        barrier.wait(timeout=30)
        return job()

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, jobs))


def metrics(proc: GatewayProcess) -> dict[Any, float]:
    return samples(httpx.get(f"{proc.url}/metrics", timeout=10).text)


def usage(proc: GatewayProcess, client: str, limit: str) -> float:
    return of(metrics(proc), "nano_banana_client_limit_usage")[labels(client=client, limit=limit)]


def redis_up(proc: GatewayProcess) -> float:
    return metrics(proc)[("nano_banana_redis_up", frozenset())]


def token_states(proc: GatewayProcess) -> dict[str, str]:
    r = httpx.get(
        f"{proc.url}/admin/upstreams",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    r.raise_for_status()
    return {t["id"]: t["state"] for u in r.json()["upstreams"] for t in u["tokens"]}


def redacted(token: str) -> str:
    """The id the gateway shows a token by: its SHA-256, first 8 hex digits."""
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def wait_for(what: str, probe: Callable[[], Any], expected: Any, timeout: float = 10) -> None:
    """Poll until probe() == expected; fail naming what was last seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = probe()
        if seen == expected:
            return
        assert time.monotonic() < deadline, f"{what}: still {seen!r}, expected {expected!r}"
        time.sleep(0.05)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., list[GatewayProcess]]]:
    """Start `count` gateway processes on one config; all are stopped at the end."""
    started: list[GatewayProcess] = []

    def start(
        toml_text: str, count: int = 2, env: dict[str, str] | None = None
    ) -> list[GatewayProcess]:
        procs = [GatewayProcess(tmp_path, toml_text, env) for _ in range(count)]
        started.extend(procs)
        return procs

    yield start
    for proc in started:  # all at once: their shutdowns overlap
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for proc in started:
        terminate(proc, timeout=max(0.1, deadline - time.monotonic()), signalled=True)


def terminate(proc: GatewayProcess, timeout: float = 5, *, signalled: bool = False) -> int | None:
    """SIGTERM (unless `signalled`: sent already), and the exit code; None when the process was still
    running after `timeout` and had to be killed. A replica with nothing in flight ends in
    well under a second; test_sigterm_ends_every_replica_after_traffic asserts that it
    does, so that elsewhere a hung shutdown costs only time."""
    if not signalled and proc.proc.poll() is None:
        proc.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.proc.kill()
        proc.proc.wait(timeout=10)
        code = None
    proc.stop()  # closes its log
    return code


# ---------------------------------------------------------------- daily limits


@pytest.mark.parametrize("spelling", ["[redis] url", "[cache] redis_url"])
def test_images_per_day_is_one_count_for_both_replicas(
    redis_server, fake_factory, replicas, spelling
):
    fake = fake_factory("acedata")
    if spelling == "[redis] url":
        toml = config(fake, clients_toml("images_per_day = 6"), redis_server.url)
    else:  # the older spelling; [redis] then only tunes the sharing
        toml = config(fake, clients_toml("images_per_day = 6"), None)
        toml += f'\n[cache]\nredis_url = "{redis_server.url}"\n'
        toml += "\n[redis]\nsync_seconds = 0.2\n"
    a, b = replicas(toml)
    assert (redis_up(a), redis_up(b)) == (1.0, 1.0)
    outcomes = [call((a, b)[i % 2]) for i in range(10)]
    assert outcomes == [OK] * 6 + [OVER_DAY] * 4
    assert len(fake.generation_calls()) == 6
    # team-b shares no counter with team-a.
    assert call(b, KEY_B) == OK


def test_fifty_concurrent_requests_take_exactly_the_days_images(
    redis_server, fake_factory, replicas
):
    fake = fake_factory("acedata", latency=0.3)
    a, b = replicas(config(fake, clients_toml("images_per_day = 20"), redis_server.url))
    outcomes = concurrently([lambda p=(a, b)[i % 2]: call(p) for i in range(50)])
    assert outcomes.count(OK) == 20
    assert outcomes.count(OVER_DAY) == 30
    assert len(fake.generation_calls()) == 20
    for proc in (a, b):
        wait_for("images today", lambda p=proc: usage(p, "team-a", "images_per_day"), 20.0)


def test_concurrent_requests_fit_exactly_the_days_budget(redis_server, fake_factory, replicas):
    fake = fake_factory("acedata", latency=0.3)
    # 0.1 five times is 0.5 only within float rounding: the five must all fit.
    prices = '\n[prices]\n"nano-banana" = 0.1\n'
    a, b = replicas(
        config(fake, clients_toml("budget_usd_per_day = 0.5"), redis_server.url, extra=prices)
    )
    outcomes = concurrently([lambda p=(a, b)[i % 2]: call(p) for i in range(20)])
    assert outcomes.count(OK) == 5
    assert outcomes.count(OVER_DAY) == 15
    assert len(fake.generation_calls()) == 5
    for proc in (a, b):
        wait_for(
            "spend today",
            lambda p=proc: round(usage(p, "team-a", "budget_usd_per_day"), 9),
            0.5,
        )
    assert call(a) == OVER_DAY


def test_a_restart_of_every_replica_keeps_the_day(redis_server, fake_factory, replicas):
    fake = fake_factory("acedata")
    toml = config(fake, clients_toml("images_per_day = 4"), redis_server.url)
    a, b = replicas(toml)
    assert [call(a), call(b), call(a)] == [OK] * 3
    # Every request was settled in Redis before it was answered: the day survives
    # however the replicas end.
    terminate(a)
    terminate(b)
    c, d = replicas(toml)
    assert [call(c), call(d), call(c)] == [OK, OVER_DAY, OVER_DAY]
    assert len(fake.generation_calls()) == 4


# ---------------------------------------------------------------- rate and concurrency


def test_requests_per_minute_is_one_window_for_both_replicas(redis_server, fake_factory, replicas):
    fake = fake_factory("acedata")
    a, b = replicas(config(fake, clients_toml("requests_per_minute = 5"), redis_server.url))
    outcomes = [call((a, b)[i % 2]) for i in range(8)]
    assert outcomes == [OK] * 5 + [OVER_RATE] * 3
    assert len(fake.generation_calls()) == 5
    assert call(a, KEY_B) == OK


def test_max_concurrent_requests_counts_both_replicas(redis_server, fake_factory, replicas):
    fake = fake_factory("acedata", latency=1.5)
    a, b = replicas(config(fake, clients_toml("max_concurrent_requests = 3"), redis_server.url))
    outcomes = concurrently([lambda p=(a, b)[i % 2]: call(p) for i in range(10)])
    assert outcomes.count(OK) == 3
    assert outcomes.count(OVER_RATE) == 7
    assert fake.max_concurrent == 3
    assert len(fake.generation_calls()) == 3
    # Once they have ended, their places are free again, on either replica.
    assert concurrently([lambda p=p: call(p) for p in (a, b, a)]) == [OK] * 3


def test_a_killed_replicas_place_returns_when_its_lease_expires(
    redis_server, fake_factory, replicas
):
    fake = fake_factory("acedata")
    token = "tok-replica-0001"
    # The first call hangs (until the caller hangs up), every later one answers at once.
    fake.behave(token, ["timeout", "ok"], sleep=60)
    a, b = replicas(
        config(
            fake,
            clients_toml("max_concurrent_requests = 1"),
            redis_server.url,
            redis_extra="lease_seconds = 2\n",
            tokens=(token,),
        )
    )
    hung: dict[str, BaseException] = {}

    def on_a() -> None:
        try:
            call(a)
        except BaseException as exc:  # the connection dies with the replica
            hung["error"] = exc

    worker = threading.Thread(target=on_a, daemon=True)
    worker.start()
    fake.wait_for_requests(1, path="/nano-banana/images", timeout=10)
    a.proc.kill()
    a.proc.wait(timeout=10)
    # The lease of the killed request is still held: B refuses, without calling upstream.
    assert call(b) == OVER_RATE
    assert len(fake.generation_calls()) == 1
    deadline = time.monotonic() + 10
    outcome = call(b)
    while outcome != OK:
        assert outcome == OVER_RATE
        assert time.monotonic() < deadline, "the dead replica's lease never expired"
        time.sleep(0.1)
        outcome = call(b)
    assert len(fake.generation_calls()) == 2
    worker.join(timeout=10)
    assert isinstance(hung.get("error"), openai.APIConnectionError)


def test_a_running_requests_lease_is_renewed_past_its_expiry(redis_server, fake_factory, replicas):
    fake = fake_factory("acedata")
    token = "tok-replica-0001"
    # The first call takes 4.5 s, twice the lease; every later one answers at once.
    fake.behave(token, ["slow", "ok"], sleep=4.5)
    a, b = replicas(
        config(
            fake,
            clients_toml("max_concurrent_requests = 1"),
            redis_server.url,
            redis_extra="lease_seconds = 2\n",
            tokens=(token,),
        )
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long_one = pool.submit(call, a)
        (arrived,) = fake.wait_for_requests(1, path="/nano-banana/images", timeout=10)
        # Until well past the lease's first expiry, A's request still holds the place.
        refused = []
        while time.monotonic() < arrived.time + 3.0:
            refused.append(call(b))
            time.sleep(0.1)
        assert long_one.result(timeout=30) == OK
    assert len(refused) >= 10
    assert set(refused) == {OVER_RATE}
    assert len(fake.generation_calls()) == 1
    assert call(b) == OK


# ---------------------------------------------------------------- Redis down and back


def test_redis_stopped_mid_run_costs_no_request_and_counts_merge_back(
    redis_server, fake_factory, replicas
):
    fake = fake_factory("acedata", latency=0.2)
    a, b = replicas(config(fake, clients_toml(b="images_per_day = 3"), redis_server.url))
    assert (redis_up(a), redis_up(b)) == (1.0, 1.0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, (a, b)[i % 2]) for i in range(16)]
        time.sleep(0.3)
        redis_server.stop()
        futures += [pool.submit(call, (a, b)[i % 2]) for i in range(16)]
        outcomes = [f.result() for f in futures]
    assert outcomes == [OK] * 32
    for proc in (a, b):
        wait_for("redis_up", lambda p=proc: redis_up(p), 0.0)
        assert "Redis at 127.0.0.1" in proc.log()
        assert proc.log().count("is unavailable") == 1

    # Down: each replica enforces team-b's day on what it knows itself.
    assert [call(a, KEY_B) for _ in range(3)] == [OK] * 3
    local = ("nano_banana_limits_local_admissions_total", frozenset())
    assert metrics(a)[local] == 3
    assert call(a, KEY_B) == OVER_DAY
    found = metrics(a)
    assert sum(of(found, "nano_banana_redis_errors_total").values()) >= 1
    assert (
        of(found, "nano_banana_client_limit_usage")[labels(client="team-b", limit="images_per_day")]
        == 3
    )
    assert call(a) == OK  # an unlimited client still served

    redis_server.start()  # same port, empty: it kept nothing
    for proc in (a, b):
        wait_for("redis_up", lambda p=proc: redis_up(p), 1.0, timeout=20)
        wait_for("the log", lambda p=proc: "answers again" in p.log(), True)
    # What A made while Redis was down is in the shared count B reports and enforces.
    wait_for("B's images today", lambda: usage(b, "team-b", "images_per_day"), 3.0)
    assert call(b, KEY_B) == OVER_DAY
    for proc in (a, b):
        assert "Traceback" not in proc.log()


def test_refuse_mode_answers_503_for_daily_limits_while_redis_is_down(
    redis_server, fake_factory, replicas
):
    fake = fake_factory("acedata")
    a, b = replicas(
        config(
            fake,
            clients_toml(a="images_per_day = 5", b="requests_per_minute = 100"),
            redis_server.url,
            redis_extra='daily_limits_when_down = "refuse"\n',
        )
    )
    assert call(a) == OK
    redis_server.stop()
    with pytest.raises(openai.InternalServerError) as refused:
        sdk(b).images.generate(model="nano-banana", prompt="while down", response_format="url")
    assert refused.value.status_code == 503
    assert refused.value.code == "limits_unavailable"
    assert refused.value.response.headers["retry-after"] == "5"
    assert [call(a), call(b)] == [(503, "limits_unavailable")] * 2
    # team-b has no daily limit: served on what each replica knows.
    assert [call(a, KEY_B), call(b, KEY_B)] == [OK, OK]
    assert len(fake.generation_calls()) == 3

    redis_server.start()
    for proc in (a, b):
        wait_for("redis_up", lambda p=proc: redis_up(p), 1.0, timeout=20)
    assert [call(a), call(b)] == [OK, OK]


def test_sigterm_ends_every_replica_after_traffic(redis_server, fake_factory, tmp_path):
    """A replica that has served requests exits on SIGTERM, promptly, every time: its
    background reading of the shared counters stops when told to. (Whether the stop
    request lands in the middle of one of those reads is a matter of timing; six
    replicas, one after the other, give it many chances.)"""
    fake = fake_factory("acedata", latency=0.6)
    toml = config(fake, clients_toml("max_concurrent_requests = 30"), redis_server.url)
    codes: list[int | None] = []
    for _ in range(6):
        proc = GatewayProcess(tmp_path, toml)
        try:
            assert concurrently([lambda p=proc: call(p)] * 3) == [OK] * 3
            proc.proc.send_signal(signal.SIGTERM)
            try:
                codes.append(proc.proc.wait(timeout=8))
            except subprocess.TimeoutExpired:
                codes.append(None)  # still running 8 s after SIGTERM, nothing left to do
        finally:
            terminate(proc, timeout=1, signalled=True)
        if codes[-1] is None:
            break
    assert [code in CLEAN_EXIT for code in codes] == [True] * 6, codes


# ---------------------------------------------------------------- token health


def test_a_token_benched_on_one_replica_is_benched_on_all(redis_server, fake_factory, replicas):
    fake = fake_factory("acedata")
    fake.behave(DEAD, "invalid_token")
    toml = config(fake, clients_toml(), redis_server.url, tokens=(DEAD, GOOD))
    a, b = replicas(toml)
    dead_id, good_id = redacted(DEAD), redacted(GOOD)
    assert token_states(b) == {dead_id: "ok", good_id: "ok"}
    for _ in range(20):
        assert call(a) == OK  # the dead token's 401 is retried on the good one
        if fake.generation_calls(DEAD):
            break
    assert len(fake.generation_calls(DEAD)) == 1
    assert token_states(a)[dead_id] == "benched"
    wait_for("B's view of the dead token", lambda: token_states(b)[dead_id], "benched")
    assert token_states(b)[good_id] == "ok"
    assert [call(b) for _ in range(10)] == [OK] * 10
    assert len(fake.generation_calls(DEAD)) == 1

    # A replica started after the bench adopts it before it serves.
    (c,) = replicas(toml, count=1)
    assert token_states(c) == {dead_id: "benched", good_id: "ok"}
    assert [call(c) for _ in range(10)] == [OK] * 10
    assert len(fake.generation_calls(DEAD)) == 1


def test_a_429s_cool_down_reaches_every_replica_with_the_same_end(
    redis_server, fake_factory, replicas
):
    fake = fake_factory("acedata")
    fake.behave(DEAD, "rate_limit", retry_after=30)
    toml = config(fake, clients_toml(), redis_server.url, tokens=(DEAD, GOOD))
    a, b = replicas(toml)
    dead_id = redacted(DEAD)
    for _ in range(20):
        assert call(a) == OK  # the 429 is retried on the other token
        if fake.generation_calls(DEAD):
            break
    assert token_states(a)[dead_id] == "cooling"
    wait_for("B's view of the cooling token", lambda: token_states(b)[dead_id], "cooling")

    def returns_in(proc: GatewayProcess) -> float:
        r = httpx.get(
            f"{proc.url}/admin/upstreams", headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
        (token,) = [t for u in r.json()["upstreams"] for t in u["tokens"] if t["id"] == dead_id]
        return float(token["returns_in_seconds"])

    # The same end on both: the provider's 30 s, counted from the 429, not from B's read.
    assert abs(returns_in(a) - returns_in(b)) < 1.5
    assert 20 < returns_in(b) <= 30
    for _ in range(10):
        assert call(b) == OK
    assert len(fake.generation_calls(DEAD)) == 1


def test_every_replica_reports_the_same_usage(redis_server, fake_factory, replicas):
    fake = fake_factory("acedata")
    prices = '\n[prices]\n"nano-banana" = 0.039\n'
    limits = "images_per_day = 50\nbudget_usd_per_day = 10.0\nrequests_per_minute = 100"
    a, b = replicas(config(fake, clients_toml(limits), redis_server.url, extra=prices))
    assert [call(a), call(a, n=2), call(a)] == [OK] * 3

    def numbers(proc: GatewayProcess) -> dict[str, float]:
        found = of(metrics(proc), "nano_banana_client_limit_usage")
        by_label = {dict(key)["client"] + "/" + dict(key)["limit"]: v for key, v in found.items()}
        return {
            key.removeprefix("team-a/"): round(v, 6)
            for key, v in by_label.items()
            if key.startswith("team-a/")
        }

    expected = {
        "requests_per_minute": 3.0,
        "images_per_day": 4.0,
        "budget_usd_per_day": round(4 * 0.039, 6),
        "max_concurrent_requests": 0.0,
    }
    wait_for("A's numbers", lambda: numbers(a), expected, timeout=5)
    wait_for("B's numbers", lambda: numbers(b), expected, timeout=5)


# ---------------------------------------------------------------- one process, no Redis


def test_without_redis_a_restart_keeps_the_day_in_the_state_dir(tmp_path, fake_factory, replicas):
    fake = fake_factory("acedata")
    state = tmp_path / "state"
    env = {"GATEWAY_STATE_DIR": str(state)}
    toml = config(fake, clients_toml("images_per_day = 3"), None)
    (first,) = replicas(toml, count=1, env=env)
    assert "nano_banana_redis_up" not in httpx.get(f"{first.url}/metrics").text
    assert [call(first), call(first)] == [OK, OK]
    assert first.stop() in CLEAN_EXIT
    assert (state / "gateway.sqlite3").is_file()
    (second,) = replicas(toml, count=1, env=env)
    assert usage(second, "team-a", "images_per_day") == 2
    assert [call(second), call(second)] == [OK, OVER_DAY]
    assert len(fake.generation_calls()) == 3


@pytest.mark.parametrize("where", ["env", "config"])
def test_an_unwritable_state_dir_stops_the_start(tmp_path, fake_factory, where):
    fake = fake_factory("acedata")
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a directory")
    bad = blocker / "sub"
    toml = config(fake, clients_toml("images_per_day = 3"), None)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_TOKENS")}
    if where == "env":
        env["GATEWAY_STATE_DIR"] = str(bad)
    else:
        toml += f'\n[state]\ndir = "{bad}"\n'
    path = tmp_path / "config.toml"
    path.write_text(toml)
    argv = [sys.executable, "-m", "gateway", "--port", str(free_port()), "--config", str(path)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "[state] dir" in done.stderr
    assert str(bad) in done.stderr
    assert not bad.exists()


def test_an_empty_state_dir_keeps_the_day_in_memory_only(tmp_path, fake_factory, replicas):
    fake = fake_factory("acedata")
    unused = tmp_path / "unused-state"
    env = {"GATEWAY_STATE_DIR": str(unused)}
    toml = config(fake, clients_toml("images_per_day = 1"), None) + '\n[state]\ndir = ""\n'
    (first,) = replicas(toml, count=1, env=env)
    assert [call(first), call(first)] == [OK, OVER_DAY]
    assert first.stop() in CLEAN_EXIT
    assert not unused.exists()
    (second,) = replicas(toml, count=1, env=env)
    assert [call(second), call(second)] == [OK, OVER_DAY]
    assert second.stop() in CLEAN_EXIT
    assert not unused.exists()
    assert not list(tmp_path.rglob("gateway.sqlite3"))
