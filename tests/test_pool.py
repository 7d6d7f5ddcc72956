"""The upstream pool under injected faults: no caller request is lost while any healthy
token remains, bad tokens stop getting traffic, cooled tokens come back, and the answer
when everything is gone tells the truth about when to come back."""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import openai
import pytest

from gateway.config import PoolConfig
from gateway.pool.health import Health, Lease, State, Verdicts
from gateway.upstreams.base import FailureKind, UpstreamError
from tests.support.gateway import CLIENTS_TOML, upstream_toml

# The pool tests repeat one prompt to watch tokens take turns: the identical-request
# cache would answer those repeats itself, so it is off here.
FAST_POOL = """
[pool]
max_attempts = 6
retry_backoff_seconds = 0.01
breaker_seconds = 30
bench_seconds = 3600

[cache]
enabled = false
"""


def _states(gw) -> dict[str, str]:
    """token index@upstream -> state, from the admin endpoint."""
    return {
        f"{t['index']}@{u['name']}": t["state"]
        for u in gw.admin()["upstreams"]
        for t in u["tokens"]
    }


def _generate(gw, n: int = 1) -> list[openai.types.ImagesResponse]:
    """n requests with prompts never sent before, so each one reaches an upstream."""
    client = gw.client()
    return [
        client.images.generate(prompt=f"p{next(_PROMPTS)}", response_format="url") for _ in range(n)
    ]


_PROMPTS = itertools.count()


# ------------------------------------------------------------------ bad tokens


@pytest.mark.parametrize("behaviour", ["invalid_token", "token_expired", "used_up"])
def test_dead_token_is_benched_after_first_failure(
    fake_factory, gateway_factory, caplog, behaviour
):
    fake = fake_factory("acedata")
    fake.behave("dead-token-secret", behaviour)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["dead-token-secret", "good-token"]) + CLIENTS_TOML + FAST_POOL
    )
    with caplog.at_level("WARNING"):
        responses = _generate(gw, 12)
    assert all(r.data for r in responses), "every caller request succeeds"
    assert len(fake.generation_calls("dead-token-secret")) == 1
    assert len(fake.generation_calls("good-token")) == 12
    assert _states(gw) == {"0@ace": "benched", "1@ace": "ok"}
    benched_logs = [r for r in caplog.records if "benched" in r.getMessage()]
    assert len(benched_logs) == 1, "logged once"
    text = benched_logs[0].getMessage()
    assert "ace" in text and "dead-token-secret" not in text
    # Nothing anywhere shows the token itself.
    assert "dead-token-secret" not in gw.metrics()
    assert "dead-token-secret" not in str(gw.admin())
    assert re.search(
        r'nano_banana_token_state\{state="benched",token="t-[0-9a-f]{8}",upstream="ace"\} 1\.0',
        gw.metrics(),
    )


def test_benched_token_is_rechecked_after_bench_time(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("flaky", ["invalid_token", "ok"])
    gw = gateway_factory(
        upstream_toml("ace", fake, ["flaky", "good"])
        + CLIENTS_TOML
        + "[pool]\nbench_seconds = 0.5\nretry_backoff_seconds = 0.01\n"
    )
    _generate(gw, 4)
    assert _states(gw)["0@ace"] == "benched"
    assert len(fake.generation_calls("flaky")) == 1
    time.sleep(0.6)
    _generate(gw, 1)
    # Its time was up: the very next request re-checked it, and it answered well.
    assert len(fake.generation_calls("flaky")) == 2
    assert _states(gw)["0@ace"] == "ok"


# ------------------------------------------------------------------ rate limits


def test_rate_limited_token_cools_down_and_comes_back(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("busy", ["rate_limit", "ok"], retry_after=1)
    gw = gateway_factory(upstream_toml("ace", fake, ["busy", "good"]) + CLIENTS_TOML + FAST_POOL)
    while not fake.generation_calls("busy"):
        _generate(gw, 1)
    assert _states(gw)["0@ace"] == "cooling"
    entry = gw.admin()["upstreams"][0]["tokens"][0]
    assert 0 < entry["returns_in_seconds"] <= 1
    assert "rate_limited" in entry["last_error"]
    before = len(fake.generation_calls("busy"))
    _generate(gw, 6)
    assert len(fake.generation_calls("busy")) == before, "no traffic while cooling"
    time.sleep(1.1)
    for _ in range(20):
        _generate(gw, 1)
        if len(fake.generation_calls("busy")) > before:
            break
    assert len(fake.generation_calls("busy")) > before, "back in rotation after its cooldown"
    assert _states(gw)["0@ace"] == "ok"


def test_429_without_retry_after_backs_off_exponentially(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("only", "rate_limit", retry_after=None)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["only"])
        + CLIENTS_TOML
        + "[pool]\ncooldown_seconds = 0.2\nretry_backoff_seconds = 0.01\n"
    )
    waits = []
    for _ in range(3):
        with pytest.raises(openai.RateLimitError) as info:
            _generate(gw, 1)
        waits.append(gw.admin()["upstreams"][0]["tokens"][0]["returns_in_seconds"])
        assert int(info.value.response.headers["retry-after"]) >= 1
        time.sleep(waits[-1] + 0.05)
    assert waits[0] <= 0.2 < waits[1] <= 0.4 < waits[2] <= 0.8


def test_all_rate_limited_answers_429_with_true_retry_after(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("a", "rate_limit", retry_after=5)
    fake.behave("b", "rate_limit", retry_after=9)
    gw = gateway_factory(upstream_toml("ace", fake, ["a", "b"]) + CLIENTS_TOML + FAST_POOL)
    with pytest.raises(openai.RateLimitError) as info:
        _generate(gw, 1)
    assert info.value.response.headers["retry-after"] == "5"
    # Asked again at once, nothing is sent upstream: the answer is still the truth.
    with pytest.raises(openai.RateLimitError) as info:
        _generate(gw, 1)
    assert int(info.value.response.headers["retry-after"]) in (4, 5)
    assert len(fake.generation_calls()) == 2


def test_all_dead_answers_503_with_retry_after(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("a", "invalid_token")
    fake.behave("b", "used_up")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["a", "b"])
        + CLIENTS_TOML
        + "[pool]\nbench_seconds = 120\nretry_backoff_seconds = 0.01\n"
    )
    with pytest.raises(openai.InternalServerError) as info:
        _generate(gw, 1)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "upstreams_unavailable"
    assert 118 <= int(info.value.response.headers["retry-after"]) <= 120
    with gw.http() as http:
        assert http.get("/readyz").status_code == 503


# ------------------------------------------------------------------ broken upstreams


@pytest.mark.parametrize("behaviour", ["server_error", "drop", "invalid_json", "timeout"])
def test_failing_upstream_requests_move_elsewhere(fake_factory, gateway_factory, behaviour):
    bad = fake_factory("acedata", default=behaviour, default_options={"sleep": 3})
    good = fake_factory("defapi")
    gw = gateway_factory(
        upstream_toml("bad", bad, ["b1", "b2"], extra="timeout_seconds = 0.3")
        + upstream_toml("good", good, ["g1"])
        + CLIENTS_TOML
        + "[pool]\nmax_attempts = 4\nretry_backoff_seconds = 0.01\nbreaker_threshold = 2\n"
        + "upstream_breaker_threshold = 3\nbreaker_seconds = 60\n"
    )
    responses = _generate(gw, 10)
    assert all(r.data for r in responses)
    assert len(good.generation_calls()) == 10
    # The breaker opened after 3 failures in a row: from then on the broken upstream only
    # gets trial calls, the first 0.5 s later, each next one twice as late.
    times = [r.time for r in bad.generation_calls()]
    assert len(times) >= 3
    gaps = [b - a for a, b in itertools.pairwise(times[2:])]
    # (Trials go with the first request after their time, so a gap may be a little longer.)
    assert all(gap >= 0.45 * 2**i for i, gap in enumerate(gaps)), gaps
    snapshot = {u["name"]: u for u in gw.admin()["upstreams"]}
    assert snapshot["bad"]["state"] in ("broken", "probing")
    assert snapshot["bad"]["breaker"]["ejections"] == 1
    assert snapshot["bad"]["breaker"]["trials_failed"] == len(times) - 3
    assert snapshot["good"]["state"] == "ok"
    # Provider failures are the upstream's: no token of it was put out of service.
    assert {t["state"] for t in snapshot["bad"]["tokens"]} == {"ok"}
    assert 'nano_banana_upstream_state{state="ok",upstream="bad"} 0.0' in gw.metrics()
    outcome = {
        "server_error": "server_error",
        "drop": "connection",
        "invalid_json": "malformed",
        "timeout": "timeout",
    }[behaviour]
    assert re.search(
        rf'nano_banana_upstream_requests_total\{{outcome="{outcome}",upstream="bad"\}} [1-9]',
        gw.metrics(),
    )


def test_lone_broken_upstream_takes_panic_calls_and_recovers(fake_factory, gateway_factory):
    flaky = fake_factory("acedata")
    flaky.behave("f1", ["server_error", "server_error", "ok"])
    gw = gateway_factory(
        upstream_toml("flaky", flaky, ["f1"])
        + CLIENTS_TOML
        + "[pool]\nmax_attempts = 1\nbreaker_threshold = 2\nupstream_breaker_threshold = 2\n"
        + "probe_interval_seconds = 30\nbreaker_seconds = 60\nretry_backoff_seconds = 0.01\n"
        + "[cache]\nenabled = false\n"
    )
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            _generate(gw, 1)
        assert info.value.status_code == 502
        # The gateway retried already; the SDK is told not to multiply the calls.
        assert info.value.response.headers["x-should-retry"] == "false"
    upstream = gw.admin()["upstreams"][0]
    assert upstream["state"] == "broken" and upstream["returns_in_seconds"] > 25
    assert upstream["tokens"][0]["state"] == "ok", "a provider failure is not the token's"
    # Its first trial is 30 s away, but nothing else could serve: the request goes to it
    # anyway (panic) rather than being refused, and the provider's good answer ends it.
    assert _generate(gw, 1)[0].data
    upstream = gw.admin()["upstreams"][0]
    assert upstream["state"] == "ok"
    assert upstream["breaker"]["recoveries"] == 1 and upstream["breaker"]["panic_calls"] == 1
    assert upstream["breaker"]["trials_ok"] == 1
    assert len(flaky.generation_calls()) == 3
    assert 'nano_banana_upstream_recoveries_total{upstream="flaky"} 1.0' in gw.metrics()


def test_callers_fault_is_not_retried(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("a", "bad_request")
    fake.behave("b", "bad_request")
    gw = gateway_factory(upstream_toml("ace", fake, ["a", "b"]) + CLIENTS_TOML + FAST_POOL)
    with pytest.raises(openai.BadRequestError):
        _generate(gw, 1)
    assert len(fake.generation_calls()) == 1
    assert set(_states(gw).values()) == {"ok"}


# ------------------------------------------------------------------ failover and priority


def test_priority_prefers_cheap_upstream_and_spills_over(fake_factory, gateway_factory):
    cheap = fake_factory("acedata")
    middle = fake_factory("xhuoapi")
    last = fake_factory("defapi")
    gw = gateway_factory(
        upstream_toml("cheap", cheap, ["c1", "c2"], extra="priority = 0")
        + upstream_toml("middle", middle, ["m1"], extra="priority = 1")
        + upstream_toml("last", last, ["l1"], extra="priority = 2")
        + CLIENTS_TOML
        + FAST_POOL
    )
    _generate(gw, 6)
    assert len(cheap.generation_calls()) == 6
    assert not middle.generation_calls() and not last.generation_calls()
    # The cheap provider disappears entirely: no caller request is lost.
    cheap.stop()
    responses = _generate(gw, 6)
    assert all(r.data for r in responses)
    assert len(middle.generation_calls()) == 6
    # And the next one too.
    middle.stop()
    assert all(r.data for r in _generate(gw, 4))
    assert len(last.generation_calls()) == 4


def test_order_key_and_weights(fake_factory, gateway_factory):
    a = fake_factory("acedata", latency=0.2)
    b = fake_factory("xhuoapi", latency=0.2)
    gw = gateway_factory(
        upstream_toml("a", a, ["a1"], extra="order = 1\nweight = 3")
        + upstream_toml("b", b, ["b1"], extra="order = 1\nweight = 1")
        + CLIENTS_TOML
        + FAST_POOL
    )

    async def burst() -> None:
        client = gw.async_client()
        await asyncio.gather(
            *(client.images.generate(prompt="w", response_format="url") for _ in range(40))
        )

    asyncio.run(burst())
    # Least in-flight per unit of weight: a takes about three times b's share.
    assert len(a.generation_calls()) + len(b.generation_calls()) == 40
    assert len(a.generation_calls()) >= 2 * len(b.generation_calls())


def test_concurrency_cap_is_respected(fake_factory, gateway_factory):
    fake = fake_factory("acedata", latency=0.15)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["t1", "t2"], extra="max_concurrency = 3")
        + CLIENTS_TOML
        + FAST_POOL
    )

    async def burst() -> list:
        client = gw.async_client()
        return await asyncio.gather(
            *(client.images.generate(prompt="c", response_format="url") for _ in range(30))
        )

    results = asyncio.run(burst())
    assert len(results) == 30
    assert fake.max_concurrent_for("t1") <= 3 and fake.max_concurrent_for("t2") <= 3
    assert fake.max_concurrent_for("t1") == 3, "the cap is used, not just respected"


# ------------------------------------------------------------------ many requests in flight


def test_hundreds_in_flight_through_failing_tokens(fake_factory, gateway_factory):
    ace = fake_factory("acedata", latency=0.05)
    ace.behave("dead", "invalid_token")
    ace.behave("broke", "used_up")
    ace.behave("limited", "rate_limit", retry_after=30)
    ace.behave("ok-1", ["server_error", "ok", "ok", "drop", "ok"])
    xhuo = fake_factory("xhuoapi", default="server_error")
    defapi = fake_factory("defapi", latency=0.05)
    gw = gateway_factory(
        upstream_toml(
            "ace", ace, ["dead", "broke", "limited", "ok-1", "ok-2"], extra="max_concurrency = 8"
        )
        + upstream_toml("xhuo", xhuo, ["x1", "x2"])
        + upstream_toml(
            "def", defapi, ["dk-test-0001", "dk-test-0002"], extra="max_concurrency = 20"
        )
        + CLIENTS_TOML
        + "[pool]\nmax_attempts = 8\nretry_backoff_seconds = 0.01\nupstream_breaker_threshold = 4\n"
    )

    async def burst() -> list:
        client = gw.async_client(timeout=120)
        return await asyncio.gather(
            *(
                client.images.generate(prompt=f"load {i}", response_format="url")
                for i in range(300)
            ),
            return_exceptions=True,
        )

    results = asyncio.run(burst())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], f"{len(failures)} requests lost, e.g. {failures[:1]}"
    assert all(len(r.data) == 1 for r in results)
    # A bad token gets at most the calls that were already in flight when its first
    # failure came back; with a cap of 8 that is at most 8, and nothing after the bench.
    for token in ("dead", "broke", "limited"):
        assert len(ace.generation_calls(token)) <= 8, token
    states = _states(gw)
    assert states["0@ace"] == states["1@ace"] == "benched"
    assert states["2@ace"] == "cooling"
    for u in gw.admin()["upstreams"]:
        assert u["inflight"] == 0 and all(t["inflight"] == 0 for t in u["tokens"])
    served = (
        len(ace.generation_calls("ok-1"))
        + len(ace.generation_calls("ok-2"))
        + len(defapi.generation_calls())
    )
    assert served >= 300


def test_sequential_traffic_is_spread_by_weight(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    other = fake_factory("xhuoapi")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["a1", "a2"], extra="weight = 3")
        + upstream_toml("xhuo", other, ["x1"], extra="weight = 2")
        + CLIENTS_TOML
        + FAST_POOL
    )
    _generate(gw, 16)
    # Weights 3, 3 and 2 share 16 calls as 6, 6 and 4.
    assert [
        len(fake.generation_calls("a1")),
        len(fake.generation_calls("a2")),
        len(other.generation_calls("x1")),
    ] == [6, 6, 4]


@pytest.mark.parametrize(
    ("kind", "token_after"),
    [
        (FailureKind.SERVER_ERROR, State.BROKEN),
        (FailureKind.TIMEOUT, State.BROKEN),
        (FailureKind.MALFORMED, State.BROKEN),
        # A provider restarting refuses new connections while it finishes the calls it has:
        # a refused connection is no sign of a bad token.
        (FailureKind.CONNECTION, State.OK),
    ],
)
def test_failures_while_a_sibling_succeeds_break_the_token_unless_a_connection_failed(
    kind: FailureKind, token_after: State
) -> None:
    cfg = PoolConfig(breaker_threshold=3, upstream_breaker_threshold=100)
    verdicts = Verdicts(cfg, ())
    token, sibling, upstream = Health(), Health(), Health()
    names = ("up", "t-1")
    err = UpstreamError(kind, "up: failed")
    verdicts.failed(token, upstream, err, Lease(), 10.0, names)
    verdicts.succeeded(sibling, upstream, Lease(), 10.5, names)  # the sibling answers
    verdicts.failed(token, upstream, err, Lease(), 11.0, names)
    verdicts.failed(token, upstream, err, Lease(), 12.0, names)
    assert token.failures == 3
    assert token.state is token_after
    assert upstream.state is State.OK  # three in a row is far from its threshold
