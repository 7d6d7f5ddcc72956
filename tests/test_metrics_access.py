"""Who may read /metrics: anyone by default (existing Prometheus setups keep working), only
holders of [admin] metrics_key when one is set, or nobody on the API port when
[server] metrics_port moves the metrics to a port of their own."""

from __future__ import annotations

import httpx
import pytest

from tests.support.gateway import ADMIN_KEY, CLIENT_KEY, CLIENTS_TOML, free_port, upstream_toml

METRICS_KEY = "metrics-key-0123456789"


def test_metrics_are_open_by_default(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(upstream_toml("ace", fake, ["t1"]) + CLIENTS_TOML)
    with gw.http() as http:
        r = http.get("/metrics")
    assert r.status_code == 200
    assert "nano_banana_requests_total" in r.text


def test_metrics_key_protects_metrics(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["t1"])
        + CLIENTS_TOML.replace("[admin]\n", f'[admin]\nmetrics_key = "{METRICS_KEY}"\n')
    )
    with gw.http() as http:
        for headers in (
            {},
            {"authorization": "Bearer wrong-key-0123456789"},
            {"authorization": f"Bearer {CLIENT_KEY}"},  # a caller's key is not enough
            {"authorization": f"Bearer {ADMIN_KEY}"},  # nor is the admin's
            {"authorization": f"Basic {METRICS_KEY}"},
        ):
            r = http.get("/metrics", headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            assert METRICS_KEY not in r.text
        r = http.get("/metrics", headers={"authorization": f"Bearer {METRICS_KEY}"})
        assert r.status_code == 200
        assert "nano_banana_requests_total" in r.text
        assert METRICS_KEY not in r.text
        # The rest of the surface is unchanged.
        assert http.get("/healthz").status_code == 200


def test_metrics_port_serves_metrics_and_only_there(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    port = free_port()
    gw = gateway_factory(
        upstream_toml("ace", fake, ["t1"])
        + CLIENTS_TOML
        + f'[server]\nmetrics_port = {port}\nmetrics_host = "127.0.0.1"\n'
    )
    gw.client().images.generate(prompt="x", response_format="url")
    with gw.http() as http:
        r = http.get("/metrics")
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "Invalid URL (GET /metrics)"
        assert "/metrics" not in http.get("/openapi.json").json()["paths"]
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    assert (
        'nano_banana_requests_total{cache="miss",client="team-a",endpoint="generations",'
        'model="nano-banana",status="200"} 1.0' in r.text
    )
    gw.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
