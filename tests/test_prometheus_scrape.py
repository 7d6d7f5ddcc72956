"""A real Prometheus server scrapes the gateway, and the metrics a Grafana dashboard
queries come back from its API: names, labels and values survive the round trip."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLIENTS_TOML, free_port, upstream_toml


def _query(base: str, promql: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_prometheus_scrapes_gateway_metrics(tmp_path: Path, fake_factory, gateway_factory):
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is needed: apt-get install -y prometheus"
    fake = fake_factory("acedata")
    fake.behave("dead-token", "invalid_token")
    gw = gateway_factory(upstream_toml("ace", fake, ["dead-token", "good-token"]) + CLIENTS_TOML)
    client = gw.client()
    while not fake.generation_calls("dead-token"):
        client.images.generate(prompt="scraped", response_format="url")

    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: gateway\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{gw.port}']\n"
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        requests: list[dict] = []
        while time.monotonic() < deadline:
            try:
                requests = _query(base, 'nano_banana_requests_total{client="team-a"}')
            except httpx.HTTPError:
                requests = []
            if requests:
                break
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        assert requests, "Prometheus never saw the gateway's request counter"
        assert requests[0]["metric"]["endpoint"] == "generations"
        assert float(requests[0]["value"][1]) >= 1
        benched = _query(base, 'nano_banana_token_state{state="benched"} == 1')
        assert [m["metric"]["upstream"] for m in benched] == ["ace"]
        assert "dead-token" not in str(benched)
        up = _query(base, 'up{job="gateway"}')
        assert up and up[0]["value"][1] == "1"
        # A dashboard-style rate() query works on the exported histogram.
        latency = _query(
            base,
            "histogram_quantile(0.95, sum by (le) (nano_banana_request_duration_seconds_bucket))",
        )
        assert latency and latency[0]["value"][1] != "NaN"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
