"""The Batch API: how fast a batch runs, and what it costs interactive requests meanwhile.

    python bench/run.py --scenario batch              # a 500-line batch, 100 requests per case
    python bench/run.py --scenario batch --quick      # 100 lines, 30 requests per case

The bench's fake AceDataCloud (bench/fake_upstream.py) answers every call after a small
latency; one gateway process (default settings, one client key, a state directory: the
batch store is SQLite) in front of it. Measured, in this order:

  idle          interactive image requests sent one after another, nothing else running:
                their p50 / p95 latency
  batch alone   a generations batch of unique prompts uploaded through /v1/files and run
                through /v1/batches: lines per second, from the create call's answer to the
                first poll (every 50 ms) that sees it completed
  during batch  the same batch again, and interactive requests one after another while it
                runs: their p50 / p95, and the batch's own lines per second
  idle again    as idle, after: the machine's drift shows as a gap between the two

The ratios (during batch / idle, the mean of both idle runs) are the numbers to read; the
milliseconds depend on the machine. Every batch line must succeed: the output file is read
and counted.
"""

from __future__ import annotations

import http.client
import json
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import run  # bench/run.py: the process helpers and the request shape

LATENCY = 0.05  # seconds per upstream call
CONCURRENCY = 4  # [batch] concurrency: the default, written out so the report says it
HEADROOM = 8  # [batch] interactive_headroom: the default


def _sizes(settings: run.Settings) -> tuple[int, int]:
    """(batch lines, interactive requests per case)."""
    return (100, 30) if settings.quick else (500, 100)


def _gateway(settings: run.Settings, fake: run.Proc, tmp: Path) -> run.Proc:
    config = tmp / "batch-gateway.toml"
    config.write_text(
        '[[upstreams]]\nname = "acedata"\ntype = "acedata"\n'
        f'base_url = "{fake.url}"\ntokens = ["{run.UPSTREAM_TOKEN}"]\n'
        f'\n[[clients]]\nname = "bench"\nkey = "{run.CLIENT_KEY}"\n'
        f'\n[state]\ndir = "{tmp / "batch-state"}"\n'
        f"\n[batch]\nconcurrency = {CONCURRENCY}\ninteractive_headroom = {HEADROOM}\n"
    )
    port = run.free_port()
    env = {**run._clean_env(), "GATEWAY_STATE_DIR": str(tmp / "batch-state")}
    return run.start(
        "batch-gateway",
        [*settings.gateway_cmd, "--port", str(port), "--config", str(config)],
        f"http://127.0.0.1:{port}",
        "/healthz",
        tmp,
        env,
    )


def _call(
    url: str, method: str, path: str, body: bytes | None = None, content_type: str = ""
) -> Any:
    headers = {"Authorization": f"Bearer {run.CLIENT_KEY}"}
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=120) as resp:
        raw = resp.read()
    return raw if path.endswith("/content") else json.loads(raw)


def _batch_file(lines: int, tag: str) -> bytes:
    out = []
    for i in range(lines):
        body = {"model": "nano-banana", "prompt": f"bench batch {tag} {i}", "n": 1}
        body["response_format"] = "url"
        line = {"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/images/generations"}
        out.append(json.dumps({**line, "body": body}))
    return ("\n".join(out) + "\n").encode()


def _upload(url: str, data: bytes) -> str:
    boundary = uuid.uuid4().hex
    body = b"".join(
        [
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            "batch\r\n".encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="bench.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'.encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    made = _call(url, "POST", "/v1/files", body, f"multipart/form-data; boundary={boundary}")
    return str(made["id"])


class BatchRun:
    """One batch, created and then watched from a thread until it ends."""

    def __init__(self, url: str, lines: int, tag: str) -> None:
        self.url, self.lines = url, lines
        file_id = _upload(url, _batch_file(lines, tag))
        payload = {
            "input_file_id": file_id,
            "endpoint": "/v1/images/generations",
            "completion_window": "24h",
        }
        created = _call(
            url, "POST", "/v1/batches", json.dumps(payload).encode(), "application/json"
        )
        self.t0 = time.monotonic()
        self.id: str = created["id"]
        self.final: dict[str, Any] = created
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline = self.t0 + 600
        while time.monotonic() < deadline:
            got = _call(self.url, "GET", f"/v1/batches/{self.id}")
            if got["status"] in ("completed", "failed", "cancelled", "expired"):
                self.seconds = time.monotonic() - self.t0
                self.final = got
                return
            time.sleep(0.05)
        self.final = {**self.final, "status": "timed out"}

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> dict[str, Any]:
        self._thread.join()
        b = self.final
        ok = 0
        if b.get("output_file_id"):
            raw = _call(self.url, "GET", f"/v1/files/{b['output_file_id']}/content")
            for line in raw.splitlines():
                record = json.loads(line)
                ok += int(record.get("error") is None and record["response"]["status_code"] == 200)
        counts = b.get("request_counts") or {}
        return {
            "status": b["status"],
            "lines": self.lines,
            "ok_lines": ok,
            "failed_lines": self.lines - ok,
            "request_counts": counts,
            "seconds": round(self.seconds, 2),
            "lines_per_s": round(self.lines / self.seconds, 1) if self.seconds else None,
        }


def _interactive(url: str, count: int, tag: str, while_running: BatchRun | None) -> dict[str, Any]:
    """Image requests one after another on one kept-alive connection (while the batch runs,
    when given: those sent after it ended are not counted)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Authorization": f"Bearer {run.CLIENT_KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    failed = 0
    for i in range(count):
        if while_running is not None and not while_running.running:
            break
        body = run.openai_body(f"bench interactive {tag} {i}", "url")
        t = time.perf_counter()
        conn.request("POST", "/v1/images/generations", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        ms = (time.perf_counter() - t) * 1000
        if resp.status == 200 and b'"url":"http' in data:
            if while_running is None or while_running.running:
                latencies.append(ms)
        else:
            failed += 1
    conn.close()
    return {
        "requests": len(latencies),
        "failed": failed,
        "p50_ms": _pct(latencies, 50),
        "p95_ms": _pct(latencies, 95),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
    }


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def scenario(settings: run.Settings, tmp: Path) -> dict[str, Any]:
    """Lines per second of a batch, and interactive latency idle vs while it runs."""
    lines, requests = _sizes(settings)
    env = run._clean_env()
    port = run.free_port()
    fake = run.start(
        "batch-fake",
        [
            sys.executable,
            str(run.BENCH / "fake_upstream.py"),
            "--port",
            str(port),
            "--latency",
            str(LATENCY),
            "--image-bytes",
            "0",
        ],
        f"http://127.0.0.1:{port}",
        "/stats",
        tmp,
        env,
    )
    try:
        gateway = _gateway(settings, fake, tmp)
        try:
            url = gateway.url
            _interactive(url, 10, "warm", None)
            idle = _interactive(url, requests, "idle", None)
            alone = BatchRun(url, lines, "alone").wait()
            calls_before = json.loads(run._get(fake.url + "/stats"))["generations"]
            busy_batch = BatchRun(url, lines, "busy")
            busy = _interactive(url, 100 * requests, "busy", busy_batch)
            together = busy_batch.wait()
            calls = json.loads(run._get(fake.url + "/stats"))["generations"] - calls_before
            idle_after = _interactive(url, requests, "idle-after", None)
            peak_rss = gateway.peak_rss_mib()
        finally:
            gateway.stop()
    finally:
        fake.stop()

    def idle_mean(key: str) -> float | None:
        both = [v for v in (idle[key], idle_after[key]) if v is not None]
        return round(statistics.fmean(both), 2) if both else None

    out: dict[str, Any] = {
        "upstream_latency_s": LATENCY,
        "batch_concurrency": CONCURRENCY,
        "interactive_headroom": HEADROOM,
        "batch_lines": lines,
        "batch_alone": alone,
        "batch_during_interactive": together,
        "upstream_calls_during_second_batch": calls,
        "interactive": {"idle": idle, "during_batch": busy, "idle_after": idle_after},
        "p50_ratio_during_to_idle": _ratio(busy["p50_ms"], idle_mean("p50_ms")),
        "p95_ratio_during_to_idle": _ratio(busy["p95_ms"], idle_mean("p95_ms")),
        "lines_per_s_ratio_with_to_without_interactive": _ratio(
            together["lines_per_s"], alone["lines_per_s"]
        ),
        "gateway_peak_rss_mib": round(peak_rss, 1),
    }
    print_table(out)
    return out


def print_table(r: dict[str, Any]) -> None:
    """The scenario's own summary (run.py's table knows the request-load scenarios)."""
    alone, together = r["batch_alone"], r["batch_during_interactive"]
    print(
        f"\nbatch: {r['batch_lines']} generation lines, upstream latency "
        f"{r['upstream_latency_s'] * 1000:g} ms, [batch] concurrency {r['batch_concurrency']}"
    )
    print(f"  {'run':<28} {'status':<10} {'ok':>5} {'seconds':>8} {'lines/s':>8}")
    for label, b in (("batch alone", alone), ("batch + interactive", together)):
        print(
            f"  {label:<28} {b['status']:<10} {b['ok_lines']:>5} {b['seconds']:>8} "
            f"{b['lines_per_s'] if b['lines_per_s'] is not None else '-':>8}"
        )
    print(f"\n  {'interactive, one at a time':<28} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}")
    rows = (("idle", "idle"), ("during batch", "during_batch"), ("idle after", "idle_after"))
    for label, key in rows:
        v = r["interactive"][key]
        print(f"  {label:<28} {v['requests']:>5} {v['p50_ms']!s:>8} {v['p95_ms']!s:>8}")
    print(
        f"  {'during / idle':<28} {'':>5} {r['p50_ratio_during_to_idle']!s:>8} "
        f"{r['p95_ratio_during_to_idle']!s:>8}"
    )


def verdicts(r: dict[str, Any]) -> list[run.Verdict]:
    """The issue's targets: every line answered, and interactive latency while a batch
    runs within a small margin (10%) of the idle figure."""
    lines = r["batch_lines"]
    out = []
    for key, what in (("batch_alone", "alone"), ("batch_during_interactive", "with interactive")):
        run_ = r[key]
        out.append(
            run.Verdict(
                "batch",
                f"lines answered, batch {what}",
                run_["ok_lines"],
                f"== {lines}",
                "met" if run_["ok_lines"] == lines else "NOT MET",
                f"{run_['lines_per_s']} lines/s",
            )
        )
    for q in ("p50", "p95"):
        ratio = r[f"{q}_ratio_during_to_idle"]
        during = r["interactive"]["during_batch"][f"{q}_ms"]
        out.append(
            run.Verdict(
                "batch",
                f"interactive {q} during a batch / idle",
                ratio if ratio is not None else "n/a",
                "<= 1.10",
                "met" if ratio is not None and ratio <= 1.10 else "NOT MET",
                f"{during} ms during the batch",
            )
        )
    return out
