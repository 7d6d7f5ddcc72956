"""The benchmark's tiny run (`python bench/run.py --quick`) still works end to end.

It checks that the command completes, writes its JSON, and that every request of every
scenario was answered correctly; never the timings, which depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "wrote " + str(out) in done.stdout
    return dict(json.loads(out.read_text()))


def test_every_scenario_ran(report: dict[str, Any]) -> None:
    assert report["quick"] is True
    assert set(report["scenarios"]) == {"overhead", "cache", "long", "big"}
    assert {t["scenario"] for t in report["targets"]} == {"overhead", "cache", "long", "big"}
    for target in report["targets"]:
        assert target["verdict"] in ("met", "NOT MET", "pending cache")


def test_every_request_succeeded(report: dict[str, Any]) -> None:
    runs = [run for scenario in report["scenarios"].values() for run in scenario["runs"]]
    assert {run["target"] for run in runs} == {"gateway", "passthrough", "direct"}
    for run in runs:
        assert run["requests"] > 0
        assert run["failed"] == 0, run["outcomes"]
        assert run["ok"] == run["requests"]


def test_answers_came_through_the_upstream(report: dict[str, Any]) -> None:
    # Unique prompts are cache misses: each gateway request is one call to the fake.
    for name in ("overhead", "long", "big"):
        for run in report["scenarios"][name]["runs"]:
            assert run["upstream_calls"] == run["requests"], (name, run["target"])


def test_big_images_arrive_whole(report: dict[str, Any]) -> None:
    big = report["scenarios"]["big"]
    b64_len = 4 * ((big["png_bytes"] + 2) // 3)
    for run in big["runs"]:
        assert run["body_bytes"] >= run["ok"] * b64_len


def test_long_waits_were_held_together(report: dict[str, Any]) -> None:
    long = report["scenarios"]["long"]
    for run in long["runs"]:
        assert run["upstream_max_in_flight"] == long["concurrent"], run["mode"]
    assert long["gateway"]["peak_rss_mib"] > 0


def test_gateway_serves_on_uvloop_and_httptools(report: dict[str, Any]) -> None:
    assert report["scenarios"]["overhead"]["gateway_event_loop"] == {
        "uvloop": True,
        "httptools": True,
    }


def test_gateway_metrics_counted_the_load(report: dict[str, Any]) -> None:
    overhead = report["scenarios"]["overhead"]
    answered = sum(r["ok"] for r in overhead["runs"] if r["target"] == "gateway")
    assert overhead["gateway_metrics_requests_200"] >= answered
