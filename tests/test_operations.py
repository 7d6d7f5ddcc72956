"""The gateway as operators run it: the command line, config errors, graceful shutdown,
health endpoints, metrics, the admin endpoint, and secrets kept out of every output."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gateway import ADMIN_KEY, CLIENT_KEY, CLIENTS_TOML, upstream_toml

TOKENS = ["ace-SECRET-token-one", "ace-SECRET-token-two"]


# ------------------------------------------------------------------ command line


def test_cli_check_and_config_errors(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[[upstreams]]\nname = "ace"\ntype = "acedata"\ntokens = ["${ACE_TOKEN}"]\n')
    env = {**os.environ, "ACE_TOKEN": "from-env-token-123"}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(good), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "ace[acedata, 1 tokens]" in out.stdout
    assert "from-env-token-123" not in out.stdout + out.stderr

    missing_env = {k: v for k, v in os.environ.items() if k != "ACE_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(good), "--check"],
        capture_output=True,
        text=True,
        env=missing_env,
        timeout=60,
    )
    assert out.returncode == 2
    assert "upstreams[0].tokens[0]: environment variable ACE_TOKEN is not set" in out.stderr
    assert "Traceback" not in out.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('[[upstreams]]\nname = "x"\ntype = "midjourney"\ntokens = ["t"]\n')
    # The console script pip installed beside this interpreter.
    script = str(Path(sys.executable).with_name("nano-banana-gateway"))
    out = subprocess.run(
        [script, "--config", str(bad), "--check"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "upstreams[0].type" in out.stderr and "Traceback" not in out.stderr


def test_no_config_starts_loudly_on_the_mock(spawn):
    gw = spawn(None)
    log = gw.log()
    assert "OFFLINE MOCK" in log
    # The mock's placeholder token is no secret: the banner is not scrubbed into nonsense.
    assert "upstream mock: type=mock tokens=1" in log
    assert "[redacted]" not in log
    with httpx.Client(base_url=gw.url) as http:
        assert http.get("/readyz").json()["mock"] is True
        assert "mock" in http.get("/v1/models").json()["warning"].lower()
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    assert client.images.generate(prompt="hi", response_format="b64_json").data[0].b64_json


def test_env_tokens_are_used_instead_of_the_mock(spawn, fake_factory):
    fake = fake_factory("acedata")
    gw = spawn(
        None,
        env={
            "ACEDATA_API_TOKENS": "env-tok-1,env-tok-2",
            "ACEDATA_BASE_URL": fake.base_url,
            "GATEWAY_CLIENT_KEYS": f"team-a:{CLIENT_KEY}",
        },
    )
    assert "OFFLINE MOCK" not in gw.log()
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    client.images.generate(prompt="hi", response_format="url")
    assert fake.generation_calls()[0].token in ("env-tok-1", "env-tok-2")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{gw.url}/v1", api_key="sk-nope-000000", max_retries=0
        ).models.list()
    # One usage line per image request; no access-log line and no line per upstream call
    # (both cost CPU on every request at info level).
    log = gw.log()
    assert log.count('"endpoint":"generations"') == 1
    assert '"POST /v1/images/generations HTTP/1.1" 200' not in log
    assert "HTTP Request: POST" not in log


def test_access_log_can_be_turned_on(spawn, fake_factory):
    fake = fake_factory("acedata")
    gw = spawn(upstream_toml("ace", fake, ["tok-1"]) + "[server]\naccess_log = true\n")
    openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0).images.generate(
        prompt="hi", response_format="url"
    )
    assert '"POST /v1/images/generations HTTP/1.1" 200' in gw.log()


# ------------------------------------------------------------------ shutdown


def test_sigterm_lets_in_flight_requests_finish(spawn, fake_factory):
    fake = fake_factory("acedata", latency=1.5)
    gw = spawn(upstream_toml("ace", fake, ["t1"]) + CLIENTS_TOML)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["response"] = client.images.generate(prompt="slow", response_format="url")
        except Exception as exc:  # recorded and asserted on below
            outcome["error"] = exc

    worker = threading.Thread(target=call)
    worker.start()
    fake.wait_for_requests(1, path="/nano-banana/images", timeout=10)
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gw.url}/healthz", timeout=1)  # no new work is taken in
    worker.join(timeout=20)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["response"].data[0].url  # type: ignore[attr-defined]
    # uvicorn re-raises SIGTERM once it has drained, so the exit status is the signal's.
    assert gw.proc.wait(timeout=20) in (0, -signal.SIGTERM)


# ------------------------------------------------------------------ health, metrics, admin


def test_health_metrics_and_admin(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave(TOKENS[0], "invalid_token")
    gw = gateway_factory(upstream_toml("ace", fake, TOKENS) + CLIENTS_TOML)
    with gw.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
    gw.client().images.generate(prompt="metered", model="gpt-image-1", n=2)
    gw.client(key="sk-team-b-0123456789").images.generate(prompt="b", response_format="url")
    with pytest.raises(openai.BadRequestError):
        gw.client().images.generate(prompt="x", n=50)
    while not fake.generation_calls(TOKENS[0]):  # selection is random among equals
        gw.client(key="sk-team-b-0123456789").images.generate(prompt="c", response_format="url")
    text = gw.metrics()
    # Whatever the cache made of them (its result is a label): exactly one such request.
    assert re.search(
        r'nano_banana_requests_total\{cache="[a-z]+",client="team-a",endpoint="generations",model="nano-banana-2",status="200"\} 1\.0',
        text,
    )
    assert re.search(
        r'nano_banana_requests_total\{cache="[a-z]+",client="team-b",endpoint="generations",model="nano-banana",status="200"\} [1-9]',
        text,
    )
    assert re.search(
        r'nano_banana_requests_total\{cache="[a-z]+",client="team-a",endpoint="generations",model="[^"]+",status="400"\} 1\.0',
        text,
    )
    assert (
        'nano_banana_images_total{client="team-a",model="nano-banana-2",upstream="ace"} 2.0' in text
    )
    assert 'nano_banana_upstream_requests_total{outcome="auth",upstream="ace"} 1.0' in text
    assert "nano_banana_request_duration_seconds_bucket" in text
    assert 'nano_banana_upstream_tokens_available{upstream="ace"} 1.0' in text
    for secret in [*TOKENS, CLIENT_KEY, ADMIN_KEY]:
        assert secret not in text

    with gw.http() as http:
        assert http.get("/admin/upstreams").status_code == 401
        assert (
            http.get(
                "/admin/upstreams", headers={"authorization": "Bearer wrong-admin-key"}
            ).status_code
            == 401
        )
        body = http.get("/admin/upstreams", headers={"x-admin-key": ADMIN_KEY}).json()
    (ace,) = body["upstreams"]
    assert ace["type"] == "acedata" and ace["state"] == "ok"
    states = [t["state"] for t in ace["tokens"]]
    assert states == ["benched", "ok"]
    assert all(re.fullmatch(r"t-[0-9a-f]{8}", t["id"]) for t in ace["tokens"])
    assert ace["tokens"][0]["returns_in_seconds"] > 3000
    for secret in [*TOKENS, CLIENT_KEY, ADMIN_KEY]:
        assert secret not in str(body)


def test_admin_clients_shows_each_teams_day_against_its_limits(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, TOKENS)
        + f'[[clients]]\nname = "team-a"\nkey = "{CLIENT_KEY}"\nimages_per_day = 3\n'
        + '[[clients]]\nname = "team-b"\nkey = "sk-team-b-0123456789"\n'
        + f'[admin]\nkey = "{ADMIN_KEY}"\n'
    )
    client = gw.client()
    client.images.generate(prompt="one", n=2, response_format="url")
    with pytest.raises(openai.RateLimitError):
        client.images.generate(prompt="two", n=2, response_format="url")
    with gw.http() as http:
        assert http.get("/admin/clients").status_code == 401
        wrong = {"authorization": "Bearer wrong-admin-key"}
        assert http.get("/admin/clients", headers=wrong).status_code == 401
        body = http.get("/admin/clients", headers={"x-admin-key": ADMIN_KEY}).json()
    by_name = {c["client"]: c for c in body["clients"]}
    a, b = by_name["team-a"], by_name["team-b"]
    # The refused request held a place in the rate limits, so it counts as a request.
    assert (a["requests"], a["images"], a["refused"]) == (2, 2, {"images_per_day": 1})
    assert a["limits"]["images_per_day"] == 3 and a["limits"]["requests_per_minute"] is None
    assert (a["in_flight"], a["shared"]) == (0, False)
    assert (b["requests"], b["images"], b["refused"]) == (0, 0, {})
    for secret in [*TOKENS, CLIENT_KEY, ADMIN_KEY]:
        assert secret not in str(body)


def test_admin_is_off_without_a_key(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(upstream_toml("ace", fake, ["t1"]))
    with gw.http() as http:
        r = http.get("/admin/upstreams", headers={"authorization": "Bearer anything-at-all"})
        clients = http.get("/admin/clients", headers={"authorization": "Bearer anything-at-all"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert clients.status_code == 404


def test_secrets_never_reach_the_log(spawn, fake_factory):
    ace = fake_factory("acedata")
    ace.behave(TOKENS[0], "invalid_token")
    ace.behave(TOKENS[1], ["server_error", "ok"])
    defapi = fake_factory("defapi")
    defapi.behave("def-SECRET-token", "invalid_token")
    gw = spawn(
        upstream_toml("ace", ace, TOKENS)
        + upstream_toml("def", defapi, ["def-SECRET-token"])
        + CLIENTS_TOML
        + '[server]\nlog_level = "debug"\n'
    )
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    for _ in range(4):
        with contextlib.suppress(openai.APIError):
            client.images.generate(prompt="leak check", response_format="url")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{gw.url}/v1", api_key="sk-caller-typo-123", max_retries=0
        ).models.list()
    httpx.get(f"{gw.url}/admin/upstreams", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert gw.stop() in (0, -signal.SIGTERM)
    log = gw.log()
    assert "token benched" in log  # the log does speak of the tokens, by id
    for secret in [*TOKENS, "def-SECRET-token", CLIENT_KEY, ADMIN_KEY, "sk-caller-typo-123"]:
        assert secret not in log, f"{secret} leaked into the log"


def test_upstream_error_text_echoing_a_token_is_scrubbed(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    # Some providers echo the credential back; it must go no further than the gateway.
    fake.behave(TOKENS[0], "invalid_token", message=f"token {TOKENS[0]} is not valid")
    fake.behave(TOKENS[1], "bad_request", message=f"bad request for key {TOKENS[1]}")
    gw = gateway_factory(upstream_toml("ace", fake, TOKENS) + CLIENTS_TOML)
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.generate(prompt="echo")
    assert TOKENS[1] not in info.value.response.text
    assert "[redacted]" in info.value.body["message"]
    admin = str(gw.admin())
    assert "is not valid" in admin and "[redacted]" in admin
    for token in TOKENS:
        assert token not in admin
