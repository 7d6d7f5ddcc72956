"""A real Prometheus server scrapes the gateway, and the metrics a Grafana dashboard
queries come back from its API: names, labels and values survive the round trip, and
per-team PromQL sums are exactly what the teams did."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import CLIENTS_TOML, free_port, upstream_toml

TEAM_B_KEY = "sk-team-b-0123456789"


def _query(base: str, promql: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def _by_client(result: list[dict]) -> dict[str, float]:
    return {r["metric"]["client"]: float(r["value"][1]) for r in result}


def test_prometheus_scrapes_gateway_metrics(tmp_path: Path, fake_factory, gateway_factory):
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is needed: apt-get install -y prometheus"
    fake = fake_factory("acedata")
    fake.behave("dead-token", "invalid_token")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["dead-token", "good-token"])
        + CLIENTS_TOML
        + '[prices]\n"nano-banana" = 0.039\n[cache]\nenabled = false\n'
    )
    client = gw.client()
    team_a = 0
    while team_a < 3 or not fake.generation_calls("dead-token"):
        client.images.generate(prompt="scraped", response_format="url", model="nano-banana")
        team_a += 1
    team_b = gw.client(TEAM_B_KEY)
    for _ in range(2):
        team_b.images.generate(prompt="b", n=2, response_format="url", model="nano-banana")

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
                requests = _query(base, "sum by (client) (nano_banana_requests_total)")
            except httpx.HTTPError:
                requests = []
            if len(requests) == 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        assert requests, "Prometheus never saw the gateway's request counter"
        # Per team, exactly what each did (the requests all ended before the first scrape).
        assert _by_client(requests) == {"team-a": team_a, "team-b": 2}
        images = _query(base, "sum by (client) (nano_banana_images_total)")
        assert _by_client(images) == {"team-a": team_a, "team-b": 4}
        cost = _by_client(_query(base, "sum by (client) (nano_banana_cost_usd_total)"))
        assert cost == {"team-a": pytest.approx(0.039 * team_a), "team-b": pytest.approx(0.156)}
        ok_a = _query(
            base,
            'nano_banana_requests_total{client="team-a", endpoint="generations", '
            'model="nano-banana", status="200", cache="off"}',
        )
        assert [float(r["value"][1]) for r in ok_a] == [team_a]
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
