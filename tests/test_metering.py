"""Metering end to end: two teams call the real gateway with the official OpenAI SDK, and the
counters, limits and usage log say exactly who used what, at what estimated cost."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.fakes import png_bytes
from tests.support.gateway import upstream_toml
from tests.support.metrics import labels, of, samples, settled_metrics

KEY_A = "sk-team-a-metering-0001"
KEY_B = "sk-team-b-metering-0002"
KEY_C = "sk-team-c-metering-0003"

PRICES_TOML = """
[prices]
"nano-banana" = 0.039
"nano-banana-2" = { "1K" = 0.067, "2K" = 0.101, "4K" = 0.151 }
"nano-banana-pro" = { "1K" = 0.134, "2K" = 0.134, "4K" = 0.24 }
"""

# The identical-request cache would label requests hit/miss; these tests meter upstream
# traffic, so it is off and every request reads cache="off".
NO_CACHE_TOML = "\n[cache]\nenabled = false\n"


def usage_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def clients_toml(*entries: str) -> str:
    return "".join(f"\n[[clients]]\n{entry}\n" for entry in entries)


def test_two_teams_exact_counters_costs_and_usage_log(tmp_path, fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    log_path = tmp_path / "usage.jsonl"
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(
            f'name = "team-a"\nkey = "{KEY_A}"',
            # team-b's key is configured by its SHA-256 only.
            f'name = "team-b"\nkey_sha256 = "{hashlib.sha256(KEY_B.encode()).hexdigest()}"\n'
            'models = ["nano-banana-pro"]\nrequests_per_minute = 100',
        )
        + PRICES_TOML
        + NO_CACHE_TOML
        + f'\n[usage]\nlog = "{log_path}"\n'
    )
    a, b = gw.client(KEY_A), gw.client(KEY_B)
    ids: dict[str, str | None] = {}

    ids["a-gen"] = a.images.generate(
        model="nano-banana", prompt="canary-prompt-1", n=2, response_format="url"
    )._request_id
    ids["a-alias-2k"] = a.images.generate(
        model="gpt-image-1", prompt="canary-prompt-2", size="2048x1365"
    )._request_id
    ids["a-edit"] = a.images.edit(
        model="nano-banana",
        image=("a.png", png_bytes(64, 64), "image/png"),
        prompt="canary-prompt-3",
        response_format="url",
    )._request_id
    with pytest.raises(openai.BadRequestError) as bad:
        a.images.generate(prompt="canary-prompt-4", n=50)
    ids["a-bad"] = bad.value.request_id
    ids["b-gen"] = b.images.generate(
        model="nano-banana-pro", prompt="canary-prompt-5", n=3, size="1024x1024",
        response_format="url",
    )._request_id  # fmt: skip
    events = list(
        b.images.generate(
            model="nano-banana-pro", prompt="canary-prompt-6", size="2048x2048", stream=True
        )
    )
    assert [e.type for e in events] == ["image_generation.completed"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        b.images.generate(model="nano-banana", prompt="canary-prompt-7")
    assert denied.value.status_code == 403
    assert denied.value.code == "model_not_allowed"
    assert denied.value.param == "model"
    ids["b-denied"] = denied.value.request_id
    with pytest.raises(openai.AuthenticationError) as unknown:
        gw.client("sk-nobody-0000000000").images.generate(prompt="canary-prompt-8")
    ids["nobody"] = unknown.value.request_id

    found = settled_metrics(gw)
    gen, edits = "generations", "edits"
    assert of(found, "nano_banana_requests_total") == {
        labels(endpoint=gen, client="team-a", model="nano-banana", status="200", cache="off"): 1,
        labels(endpoint=gen, client="team-a", model="nano-banana-2", status="200", cache="off"): 1,
        labels(endpoint=edits, client="team-a", model="nano-banana", status="200", cache="off"): 1,
        labels(endpoint=gen, client="team-a", model="unknown", status="400", cache="off"): 1,
        labels(
            endpoint=gen, client="team-b", model="nano-banana-pro", status="200", cache="off"
        ): 2,
        labels(endpoint=gen, client="team-b", model="nano-banana", status="403", cache="off"): 1,
        labels(endpoint=gen, client="unknown", model="unknown", status="401", cache="off"): 1,
    }
    assert of(found, "nano_banana_images_requested_total") == {
        labels(client="team-a", model="nano-banana"): 3,
        labels(client="team-a", model="nano-banana-2"): 1,
        labels(client="team-b", model="nano-banana-pro"): 4,
    }
    assert of(found, "nano_banana_images_total") == {
        labels(client="team-a", model="nano-banana", upstream="ace"): 3,
        labels(client="team-a", model="nano-banana-2", upstream="ace"): 1,
        labels(client="team-b", model="nano-banana-pro", upstream="ace"): 4,
    }
    cost = of(found, "nano_banana_cost_usd_total")
    assert cost.keys() == {
        labels(client="team-a", model="nano-banana"),
        labels(client="team-a", model="nano-banana-2"),
        labels(client="team-b", model="nano-banana-pro"),
    }
    assert cost[labels(client="team-a", model="nano-banana")] == pytest.approx(3 * 0.039)
    # gpt-image-1 at 2048x1365 is nano-banana-2 at 2K (1536x1024 would be 1K).
    assert cost[labels(client="team-a", model="nano-banana-2")] == pytest.approx(0.101)
    assert cost[labels(client="team-b", model="nano-banana-pro")] == pytest.approx(4 * 0.134)
    assert of(found, "nano_banana_cost_saved_usd_total") == {}
    assert of(found, "nano_banana_rate_limited_total") == {
        labels(client="team-b", limit="requests_per_minute"): 0
    }
    assert of(found, "nano_banana_client_limit") == {
        labels(client="team-b", limit="requests_per_minute"): 100
    }
    usage_now = of(found, "nano_banana_client_limit_usage")
    assert usage_now[labels(client="team-a", limit="images_per_day")] == 4
    assert usage_now[labels(client="team-b", limit="images_per_day")] == 4
    # The 403 (a model team-b may not use) was refused before the limits were taken.
    assert usage_now[labels(client="team-b", limit="requests_per_minute")] == 2
    assert usage_now[labels(client="team-a", limit="budget_usd_per_day")] == pytest.approx(0.218)
    assert usage_now[labels(client="team-a", limit="max_concurrent_requests")] == 0
    latency_counts = of(found, "nano_banana_request_duration_seconds_count")
    assert latency_counts[labels(endpoint=gen, model="nano-banana-pro")] == 2
    assert latency_counts[labels(endpoint=gen, model="nano-banana")] == 2  # one was a 403
    assert latency_counts[labels(endpoint=edits, model="nano-banana")] == 1
    assert of(found, "nano_banana_upstream_requests_total") == {
        labels(upstream="ace", outcome="ok"): 5
    }

    records = usage_lines(log_path)
    assert len(records) == 8
    by_id = {r["request_id"]: r for r in records}
    assert set(ids.values()) <= by_id.keys()
    first = by_id[ids["a-gen"]]
    assert first["client"] == "team-a"
    assert first["endpoint"] == "generations"
    assert first["model"] == "nano-banana"
    assert (first["images_requested"], first["images"]) == (2, 2)
    assert first["cost_usd"] == pytest.approx(0.078)
    assert (first["status"], first["cache"], first["upstreams"]) == (200, "off", ["ace"])
    assert (first["attempts"], first["upstream_outcomes"]) == (1, ["ace:ok"])
    assert len(first["task_ids"]) == 1 and len(first["trace_ids"]) == 1
    assert isinstance(first["latency_ms"], int)
    assert first["time"].endswith("Z")
    alias = by_id[ids["a-alias-2k"]]
    assert (alias["model"], alias["model_requested"]) == ("nano-banana-2", "gpt-image-1")
    assert (alias["size"], alias["resolution"], alias["aspect_ratio"]) == ("2048x1365", "2K", "3:2")
    assert by_id[ids["a-edit"]]["endpoint"] == "edits"
    assert by_id[ids["a-bad"]]["status"] == 400
    assert by_id[ids["a-bad"]]["images"] == 0
    assert by_id[ids["b-denied"]]["error_code"] == "model_not_allowed"
    assert by_id[ids["nobody"]]["client"] == "unknown"
    (streamed,) = [r for r in records if r["stream"]]
    assert (streamed["client"], streamed["status"], streamed["images"]) == ("team-b", 200, 1)
    assert streamed["cost_usd"] == pytest.approx(0.134)
    assert sum(r["cost_usd"] or 0 for r in records) == pytest.approx(3 * 0.039 + 0.101 + 0.536)

    text = log_path.read_text() + gw.metrics()
    for secret in ("canary-prompt", KEY_A, KEY_B, "sk-nobody", "tok-ace-0001"):
        assert secret not in text


def test_usage_log_counts_attempts_and_keeps_upstream_ids_of_failures(
    tmp_path, fake_factory, gateway_factory
):
    fake = fake_factory("acedata")
    fake.behave("tok-dead-0001", "invalid_token")
    fake.behave("tok-broken-02", "server_error")
    log_path = tmp_path / "usage.jsonl"
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-dead-0001", "tok-good-0002"])
        + upstream_toml("bad", fake_factory("acedata", default="server_error"), ["tok-broken-02"])
        + clients_toml(f'name = "team-a"\nkey = "{KEY_A}"')
        + NO_CACHE_TOML
        + f'\n[usage]\nlog = "{log_path}"\n[pool]\nretry_backoff_seconds = 0\n'
    )
    made = gw.client(KEY_A).images.generate(prompt="p", response_format="url", model="nano-banana")
    assert len(made.data) == 1
    record = usage_lines(log_path)[-1]
    assert record["status"] == 200
    # The first token answers 'invalid token', and the request moves on: two attempts.
    assert record["attempts"] == len(record["upstream_outcomes"]) >= 2
    assert record["upstream_outcomes"][0] == "ace:auth"
    assert record["upstream_outcomes"][-1] == "ace:ok"
    assert record["upstreams"] == ["ace"]

    # Now every token fails: the 502's log line still carries the provider's trace ids.
    fake.behave("tok-good-0002", "server_error")
    with pytest.raises(openai.InternalServerError):
        gw.client(KEY_A).images.generate(prompt="p", response_format="url")
    failed = usage_lines(log_path)[-1]
    assert failed["status"] >= 500
    assert failed["images"] == 0 and failed["cost_usd"] is None
    assert failed["trace_ids"], failed
    assert failed["attempts"] >= 1


def test_requests_per_minute_turns_into_429_at_the_right_request(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(
            f'name = "team-a"\nkey = "{KEY_A}"\nrequests_per_minute = 3',
            f'name = "team-b"\nkey = "{KEY_B}"',
        )
        + NO_CACHE_TOML
    )
    a = gw.client(KEY_A)
    for _ in range(3):
        a.images.generate(prompt="p", response_format="url")
    with pytest.raises(openai.RateLimitError) as limited:
        a.images.generate(prompt="p", response_format="url")
    err = limited.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert 1 <= int(err.response.headers["retry-after"]) <= 60
    assert "x-should-retry" not in err.response.headers
    assert "3 requests per minute" in err.message
    assert len(fake.generation_calls()) == 3  # the refused request never reached upstream
    # Another team's key is not limited by team-a's use.
    gw.client(KEY_B).images.generate(prompt="p", response_format="url")

    found = samples(gw.metrics())
    assert of(found, "nano_banana_rate_limited_total") == {
        labels(client="team-a", limit="requests_per_minute"): 1
    }
    requests = of(found, "nano_banana_requests_total")
    # Refused once it was read (the limits are taken in one step with the request known).
    assert requests[labels(endpoint="generations", client="team-a", model="nano-banana", status="429", cache="off")] == 1  # fmt: skip
    assert requests[labels(endpoint="generations", client="team-a", model="nano-banana", status="200", cache="off")] == 3  # fmt: skip


def test_images_per_day_counts_images_made_and_refuses_what_does_not_fit(
    fake_factory, gateway_factory
):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(f'name = "team-a"\nkey = "{KEY_A}"\nimages_per_day = 5')
        + NO_CACHE_TOML
    )
    a = gw.client(KEY_A)
    a.images.generate(prompt="p", n=2, response_format="url")
    a.images.generate(prompt="p", n=2, response_format="url")
    with pytest.raises(openai.RateLimitError) as limited:
        a.images.generate(prompt="p", n=2, response_format="url")
    err = limited.value
    assert err.code == "insufficient_quota"
    assert "1 are left today" in err.message
    # A retry within seconds cannot help: the SDK is told not to spend its retries on it.
    assert err.response.headers["x-should-retry"] == "false"
    assert int(err.response.headers["retry-after"]) <= 86400
    a.images.generate(prompt="p", n=1, response_format="url")  # exactly what is left
    with pytest.raises(openai.RateLimitError):
        a.images.generate(prompt="p", n=1, response_format="url")

    found = samples(gw.metrics())
    assert of(found, "nano_banana_rate_limited_total") == {
        labels(client="team-a", limit="images_per_day"): 2
    }
    assert (
        of(found, "nano_banana_client_limit_usage")[labels(client="team-a", limit="images_per_day")]
        == 5
    )
    assert (
        of(found, "nano_banana_client_limit")[labels(client="team-a", limit="images_per_day")] == 5
    )


def test_partial_results_use_the_day_only_for_images_made(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    # One image per call whatever the count; of the three calls that then ask for the
    # missing ones (one each), one succeeds and two fail.
    fake.behave("tok-ace-0001", ["partial", "partial", "server_error"])
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(f'name = "team-a"\nkey = "{KEY_A}"\nimages_per_day = 10')
        + PRICES_TOML
        + NO_CACHE_TOML
        + "[pool]\nmax_attempts = 1\n"
    )
    client = gw.client(KEY_A, default_headers={"x-gateway-allow-partial": "true"})
    made = client.images.generate(model="nano-banana", prompt="p", n=4, response_format="url")
    assert len(made.data) == 2
    found = samples(gw.metrics())
    usage_now = of(found, "nano_banana_client_limit_usage")
    assert usage_now[labels(client="team-a", limit="images_per_day")] == 2
    assert of(found, "nano_banana_images_requested_total") == {
        labels(client="team-a", model="nano-banana"): 4
    }
    assert of(found, "nano_banana_cost_usd_total") == {
        labels(client="team-a", model="nano-banana"): pytest.approx(2 * 0.039)
    }


def test_daily_budget_refuses_the_request_that_would_exceed_it(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(f'name = "team-a"\nkey = "{KEY_A}"\nbudget_usd_per_day = 0.1')
        + PRICES_TOML
        + NO_CACHE_TOML
    )
    a = gw.client(KEY_A)
    a.images.generate(model="nano-banana", prompt="p", response_format="url")
    a.images.generate(model="nano-banana", prompt="p", response_format="url")
    with pytest.raises(openai.RateLimitError) as limited:  # 3 x 0.039 > 0.10
        a.images.generate(model="nano-banana", prompt="p", response_format="url")
    assert limited.value.code == "insufficient_quota"
    found = samples(gw.metrics())
    assert of(found, "nano_banana_rate_limited_total") == {
        labels(client="team-a", limit="budget_usd_per_day"): 1
    }
    assert of(found, "nano_banana_client_limit_usage")[
        labels(client="team-a", limit="budget_usd_per_day")
    ] == pytest.approx(0.078)


def test_concurrent_requests_limit(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001", "tok-ace-0002"])
        + clients_toml(f'name = "team-a"\nkey = "{KEY_A}"\nmax_concurrent_requests = 1')
        + NO_CACHE_TOML
    )
    fake.behave("tok-ace-0001", "slow", sleep=3)
    outcome: dict[str, Any] = {}

    def slow_request() -> None:
        outcome["made"] = gw.client(KEY_A).images.generate(prompt="p", response_format="url")

    worker = threading.Thread(target=slow_request)
    worker.start()
    fake.wait_for_requests(1, path="/nano-banana/images", timeout=10)
    with pytest.raises(openai.RateLimitError) as limited:
        gw.client(KEY_A).images.generate(prompt="p", response_format="url")
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    worker.join(timeout=30)
    assert outcome["made"].data
    # The slot is free again once the first request has finished.
    gw.client(KEY_A).images.generate(prompt="p", response_format="url")
    found = samples(gw.metrics())
    assert of(found, "nano_banana_rate_limited_total") == {
        labels(client="team-a", limit="max_concurrent_requests"): 1
    }


def test_models_list_shows_what_the_client_may_use(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(
            f'name = "team-a"\nkey = "{KEY_A}"',
            f'name = "team-b"\nkey = "{KEY_B}"\nmodels = ["nano-banana-pro*"]',
        )
    )
    everything = {m.id for m in gw.client(KEY_A).models.list()}
    limited = {m.id for m in gw.client(KEY_B).models.list()}
    assert {"nano-banana", "nano-banana-pro", "gpt-image-1"} <= everything
    # The OpenAI names that lead to Pro are Pro too.
    assert limited == {"nano-banana-pro", "gpt-image-2.5-sunburst", "gpt-image-2.6-sunburst"}
    with pytest.raises(openai.NotFoundError):
        gw.client(KEY_B).models.retrieve("nano-banana")
    assert gw.client(KEY_B).models.retrieve("nano-banana-pro").id == "nano-banana-pro"


def test_usage_log_off_and_stdout(tmp_path, fake_factory, gateway_factory, capfd):
    fake = fake_factory("acedata")
    quiet = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(f'name = "team-c"\nkey = "{KEY_C}"')
        + '\n[usage]\nlog = "off"\n'
    )
    quiet.client(KEY_C).images.generate(prompt="p", response_format="url")
    assert '"client":"team-c"' not in capfd.readouterr().out

    loud = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(f'name = "team-c"\nkey = "{KEY_C}"')
    )
    made = loud.client(KEY_C).images.generate(prompt="p", response_format="url")
    lines = [
        json.loads(line)
        for line in capfd.readouterr().out.splitlines()
        if line.startswith("{") and '"request_id"' in line
    ]
    assert [line["request_id"] for line in lines] == [made._request_id]
    assert lines[0]["client"] == "team-c"


def test_promtool_accepts_the_metrics(fake_factory, gateway_factory):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    fake = fake_factory("acedata")
    fake.behave("tok-dead-0001", "invalid_token")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-dead-0001", "tok-ace-0001"])
        + clients_toml(
            f'name = "team-a"\nkey = "{KEY_A}"\nrequests_per_minute = 2\nimages_per_day = 100',
            f'name = "team-b"\nkey = "{KEY_B}"',
        )
        + PRICES_TOML
    )
    gw.client(KEY_A).images.generate(prompt="p", response_format="url")
    gw.client(KEY_A).images.generate(prompt="p", response_format="url", n=2)
    with pytest.raises(openai.RateLimitError):
        gw.client(KEY_A).images.generate(prompt="p", response_format="url")
    gw.client(KEY_B).images.edit(
        image=("a.png", png_bytes(32, 32), "image/png"), prompt="p", response_format="url"
    )
    with httpx.Client(base_url=gw.url) as http:
        text = http.get("/metrics").text
    # Every family the issue asks for is there, with its samples.
    names = {name for name, _ in samples(text)}
    for wanted in (
        "nano_banana_requests_total",
        "nano_banana_images_total",
        "nano_banana_images_requested_total",
        "nano_banana_cost_usd_total",
        "nano_banana_request_duration_seconds_bucket",
        "nano_banana_upstream_request_duration_seconds_bucket",
        "nano_banana_upstream_requests_total",
        "nano_banana_inflight_requests",
        "nano_banana_token_state",
        "nano_banana_upstream_state",
        "nano_banana_rate_limited_total",
        "nano_banana_client_limit",
        "nano_banana_client_limit_usage",
    ):
        assert wanted in names, wanted
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # promtool prints lint problems but exits 0 for some of them: there must be none.
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr


def test_a_caller_hanging_up_on_a_stream_is_metered_and_frees_its_slot(
    fake_factory, gateway_factory
):
    fake = fake_factory("acedata")
    fake.behave("tok-ace-0001", ["slow", "ok"], sleep=5)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(f'name = "team-a"\nkey = "{KEY_A}"\nmax_concurrent_requests = 1')
        + NO_CACHE_TOML
        + "\n[images]\nstream_keepalive_seconds = 0.05\n"
    )
    with (
        httpx.Client(base_url=gw.url, timeout=30) as http,
        http.stream(
            "POST",
            "/v1/images/generations",
            json={"prompt": "p", "stream": True},
            headers={"authorization": f"Bearer {KEY_A}"},
        ) as answer,
    ):
        assert answer.status_code == 200
        assert next(answer.iter_lines()).startswith(":")  # a keep-alive: still waiting
    # The connection is gone before any image: the request ends as 499, not as a 5xx.
    found = settled_metrics(gw)
    assert of(found, "nano_banana_requests_total") == {
        labels(
            endpoint="generations", client="team-a", model="nano-banana", status="499", cache="off"
        ): 1
    }
    assert (
        of(found, "nano_banana_client_limit_usage")[
            labels(client="team-a", limit="max_concurrent_requests")
        ]
        == 0
    )
    gw.client(KEY_A).images.generate(prompt="p", response_format="url")


def test_a_stream_that_fails_at_once_is_a_plain_error_and_frees_its_slot(
    fake_factory, gateway_factory
):
    fake = fake_factory("acedata")
    fake.behave("tok-ace-0001", ["bad_request", "ok"], message="The prompt is not acceptable.")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients_toml(f'name = "team-a"\nkey = "{KEY_A}"\nmax_concurrent_requests = 1')
        + NO_CACHE_TOML
    )
    with pytest.raises(openai.BadRequestError):
        list(gw.client(KEY_A).images.generate(prompt="p", stream=True))
    found = settled_metrics(gw)
    assert of(found, "nano_banana_requests_total") == {
        labels(
            endpoint="generations", client="team-a", model="nano-banana", status="400", cache="off"
        ): 1
    }
    usage_now = of(found, "nano_banana_client_limit_usage")
    assert usage_now[labels(client="team-a", limit="max_concurrent_requests")] == 0
    # The slot is free: the next request of a one-at-a-time client is served.
    gw.client(KEY_A).images.generate(prompt="p", response_format="url")
