"""What the gateway costs on top of its upstream: the benchmark's one command.

    pip install -e '.[test]'            # once, from the repository root
    python bench/run.py                 # the four scenarios, about 4 minutes on 2 cores
    python bench/run.py --quick         # a few hundred requests, to check it still works
    python bench/run.py --scenario overhead,cache --rounds 5 --json /tmp/bench.json

Each scenario starts, each in its own process on 127.0.0.1: the fast fake AceDataCloud
(bench/fake_upstream.py), the gateway as users run it (the installed `nano-banana-gateway`
command, default settings plus one client key, configured from the environment), and the
bare pass-through proxy (bench/passthrough.py). The load driver (bench/load.py) runs in a
process of its own for every measured run, against the gateway and the pass-through
alternately. It prints a table and writes JSON (default bench/last-run.json) holding every
run, the ratios, and a verdict per target of issue 8.

Scenarios:
  overhead  upstream latency 0, unique prompts, response_format=url, 32 clients as fast as
            they can (throughput), then 32 clients at a fixed pace (added latency)
  cache     the same with one identical prompt after a warm-up
  long      upstream latency 10 s, 2,000 requests waiting together: arriving over 5 s,
            then (fresh processes) arriving in one instant; all must succeed
  big       8 MiB PNGs as b64_json, 16 clients: MB/s delivered and peak memory
  recovery  (only when named) the provider restarted, then 3 s of HTTP 500s: seconds from
            its return to the first success and to steady service (bench/recovery.py)
  limits    (only when named) the overhead load with every client limit set, counted in
            process vs in Redis, and Redis round trips per request (bench/limits.py)
  batch     (only when named) a 500-line generations batch through /v1/files and
            /v1/batches: lines per second, and interactive p50/p95 one request after
            another while idle vs while the batch runs (bench/batch.py)

Peak memory is VmHWM from /proc, so each scenario gets fresh processes. CPU is utime+stime
from /proc, per process, read around each measured run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CLIENT_KEY = "sk-bench-0123456789abcdef"
UPSTREAM_TOKEN = "bench-upstream-token"
_TICK = os.sysconf("SC_CLK_TCK")
_PNG_B64 = "iVBORw0KGgo"  # the PNG signature, base64-encoded: the answer holds a real PNG


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _descendants(int(child))
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Proc:
    """One server process the benchmark started."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its children so far."""
        total = 0
        for pid in _descendants(self.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / _TICK

    def peak_rss_mib(self) -> float:
        """VmHWM: the most resident memory the process (and children) ever had."""
        return sum(_status_kb(p, "VmHWM") for p in _descendants(self.pid)) / 1024

    def rss_mib(self) -> float:
        """VmRSS now."""
        return sum(_status_kb(p, "VmRSS") for p in _descendants(self.pid)) / 1024

    def loaded(self, needle: str) -> bool:
        """Whether a shared object whose path contains needle is mapped (uvloop, httptools)."""
        try:
            return needle in Path(f"/proc/{self.pid}/maps").read_text()
        except OSError:
            return False

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return bytes(resp.read())


def start(
    name: str,
    argv: list[str],
    url: str,
    probe: str,
    tmp: Path,
    env: dict[str, str],
    *,
    cwd: Path = ROOT,
    seconds: float = 30,
) -> Proc:
    """Start a server in `cwd` and wait up to `seconds` until probe answers."""
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc = Proc(name, popen, url, log)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            break
        try:
            _get(url + probe, timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{name} did not start; its log:\n{log.read_text()[-3000:]}")


def gateway_command(override: str | None) -> list[str]:
    """The installed console script, next to this Python first (a venv need not be active)."""
    if override:
        return shlex.split(override)
    here = Path(sys.executable).parent / "nano-banana-gateway"
    found = str(here) if here.exists() else shutil.which("nano-banana-gateway")
    if not found:
        raise SystemExit(
            "nano-banana-gateway is not installed in this Python: run "
            "`pip install -e '.[test]'` from the repository root first"
        )
    return [found]


def _clean_env() -> dict[str, str]:
    """This environment minus anything that would point the gateway somewhere else."""
    drop = ("ACEDATA_", "XHUOAPI_", "DEFAPI_", "GATEWAY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Stack:
    """The three servers of one scenario."""

    fake: Proc
    gateway: Proc
    passthrough: Proc

    def all(self) -> list[Proc]:
        return [self.fake, self.gateway, self.passthrough]


@contextmanager
def stack(settings: Settings, latency: float, image_bytes: int, tmp: Path) -> Iterator[Stack]:
    """Fresh fake, gateway and pass-through for one scenario; stopped afterwards."""
    env = _clean_env()
    procs: list[Proc] = []
    try:
        port = free_port()
        fake = start(
            "fake",
            [
                sys.executable,
                str(BENCH / "fake_upstream.py"),
                "--port",
                str(port),
                "--latency",
                str(latency),
                "--image-bytes",
                str(image_bytes),
            ],
            f"http://127.0.0.1:{port}",
            "/stats",
            tmp,
            env,
        )
        procs.append(fake)
        port = free_port()
        gw_env = {
            **env,
            "ACEDATA_API_TOKENS": UPSTREAM_TOKEN,
            "ACEDATA_BASE_URL": fake.url,
            "GATEWAY_CLIENT_KEYS": f"bench:{CLIENT_KEY}",
            # The day's counts in a folder of this run's, not the user's home.
            "GATEWAY_STATE_DIR": str(tmp / f"state-{port}"),
        }
        gateway = start(
            "gateway",
            [*settings.gateway_cmd, "--port", str(port)],
            f"http://127.0.0.1:{port}",
            "/healthz",
            tmp,
            gw_env,
        )
        procs.append(gateway)
        port = free_port()
        passthrough = start(
            "passthrough",
            [
                sys.executable,
                str(BENCH / "passthrough.py"),
                "--port",
                str(port),
                "--upstream",
                fake.url,
                "--token",
                UPSTREAM_TOKEN,
            ],
            f"http://127.0.0.1:{port}",
            "/healthz",
            tmp,
            env,
        )
        procs.append(passthrough)
        yield Stack(fake, gateway, passthrough)
    finally:
        for proc in reversed(procs):
            proc.stop()


# --------------------------------------------------------------------------- load runs


@dataclass
class Target:
    """Where a measured run sends its requests, and what a good answer starts with."""

    name: str  # gateway | passthrough | direct
    port: int
    path: str
    headers: dict[str, str]


def targets(s: Stack) -> dict[str, Target]:
    """The gateway, the pass-through, and the fake itself."""
    gw_port = int(s.gateway.url.rsplit(":", 1)[1])
    pt_port = int(s.passthrough.url.rsplit(":", 1)[1])
    fake_port = int(s.fake.url.rsplit(":", 1)[1])
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    return {
        "gateway": Target("gateway", gw_port, "/v1/images/generations", auth),
        "passthrough": Target("passthrough", pt_port, "/v1/images/generations", auth),
        "direct": Target(
            "direct", fake_port, "/nano-banana/images", {"Authorization": "Bearer direct"}
        ),
    }


def openai_body(prompt: str, response_format: str) -> str:
    """What an app using the OpenAI SDK sends (an explicit model and format)."""
    return json.dumps(
        {"model": "nano-banana", "prompt": prompt, "n": 1, "response_format": response_format}
    )


def acedata_body(prompt: str) -> str:
    """What the gateway sends AceDataCloud for that request."""
    return json.dumps({"action": "generate", "prompt": prompt, "model": "nano-banana"})


def expect_for(target: str, response_format: str) -> str:
    """The start of a good answer's first image, per target and format."""
    if response_format == "b64_json":
        return f'"b64_json":"{_PNG_B64}'
    return '"url":"http' if target == "gateway" else '"image_url":"http'


@dataclass
class Measured:
    """One measured run: the driver's summary plus CPU of each server during it."""

    target: str
    load: dict[str, Any]
    cpu_s: dict[str, float]
    upstream_calls: int
    loadavg: tuple[float, float, float]
    window: dict[str, float] = field(default_factory=dict)
    upstream_max_in_flight: int = 0
    mode: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            **self.load,
            "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()},
            "cpu_ms_per_request": {
                k: round(v * 1000 / max(1, self.load["ok"]), 4) for k, v in self.cpu_s.items()
            },
            "upstream_calls": self.upstream_calls,
            "upstream_window": self.window,
            "upstream_max_in_flight": self.upstream_max_in_flight,
            "loadavg": self.loadavg,
            **({"mode": self.mode} if self.mode else {}),
        }


def fake_stats(s: Stack, *, reset: bool = False) -> dict[str, Any]:
    """The fake's counters; reset starts a new window of arrival times and peak in-flight."""
    return dict(json.loads(_get(s.fake.url + "/stats" + ("?reset=1" if reset else ""))))


def drive(
    s: Stack,
    target: Target,
    *,
    total: int,
    concurrency: int,
    prompt: str,
    response_format: str = "url",
    rate: float | None = None,
    min_body_bytes: int = 0,
    timeout: float = 120.0,
) -> Measured:
    """One run of the load driver, in its own process, against one target."""
    body = acedata_body(prompt) if target.name == "direct" else openai_body(prompt, response_format)
    spec = {
        "port": target.port,
        "path": target.path,
        "total": total,
        "concurrency": concurrency,
        "body": body,
        "headers": target.headers,
        "expect": expect_for(target.name, response_format),
        "min_body_bytes": min_body_bytes,
        "rate": rate,
        "timeout": timeout,
    }
    servers = {"gateway": s.gateway, "passthrough": s.passthrough, "upstream": s.fake}
    before = {k: p.cpu_seconds() for k, p in servers.items()}
    calls_before = fake_stats(s, reset=True)["generations"]
    out = subprocess.run(
        [sys.executable, str(BENCH / "load.py"), json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout + 600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load driver failed:\n{out.stderr[-3000:]}")
    load = json.loads(out.stdout)
    cpu = {k: p.cpu_seconds() - before[k] for k, p in servers.items()}
    after = fake_stats(s)
    window = {
        f"{key}_ms": round((after[key] - load["started_monotonic"]) * 1000, 1)
        for key in ("first_arrival", "last_arrival")
        if after[key] is not None
    }
    return Measured(
        target.name,
        load,
        cpu,
        after["generations"] - calls_before,
        os.getloadavg(),
        window,
        after["max_in_flight"],
    )


def alternate(rounds: int, names: list[str], run: Callable[[str], Measured]) -> list[Measured]:
    """Each name once per round, the order reversed every other round, so drift in the
    machine's load falls on both sides alike."""
    done: list[Measured] = []
    for i in range(rounds):
        for name in names if i % 2 == 0 else list(reversed(names)):
            done.append(run(name))
    return done


def metrics_count(s: Stack) -> float:
    """Requests the gateway's own /metrics says it answered with 200."""
    text = _get(s.gateway.url + "/metrics").decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("nano_banana_requests_total{") and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# --------------------------------------------------------------------------- scenarios


@dataclass
class Settings:
    """Sizes of every scenario; --quick shrinks them to a few hundred requests."""

    quick: bool
    rounds: int
    gateway_cmd: list[str]
    overhead_requests: int = 6000
    overhead_clients: int = 32
    paced_rate: float = 200.0
    paced_requests: int = 2000
    warmup: int = 300
    cache_requests: int = 6000
    long_latency: float = 10.0
    long_requests: int = 2000
    long_ramp_seconds: float = 5.0
    big_image_bytes: int = 8 * 1024 * 1024
    big_clients: int = 16
    big_requests: int = 64
    py_spy: Path | None = None

    @staticmethod
    def make(args: argparse.Namespace) -> Settings:
        cmd = gateway_command(args.gateway_command)
        py_spy = Path(args.py_spy) if args.py_spy else None
        if py_spy is not None and not (
            (Path(sys.executable).parent / "py-spy").exists() or shutil.which("py-spy")
        ):
            raise SystemExit("--py-spy needs py-spy: pip install py-spy")
        if args.quick:
            return Settings(
                quick=True,
                rounds=args.rounds or 1,
                gateway_cmd=cmd,
                overhead_requests=150,
                paced_rate=100.0,
                paced_requests=50,
                warmup=20,
                cache_requests=100,
                long_latency=1.0,
                long_requests=100,
                long_ramp_seconds=0.5,
                big_image_bytes=1024 * 1024,
                big_clients=4,
                big_requests=8,
                py_spy=py_spy,
            )
        return Settings(
            quick=False,
            rounds=args.rounds or 3,
            gateway_cmd=cmd,
            py_spy=py_spy,
        )


@contextmanager
def profiled(settings: Settings, s: Stack, target: str, label: str) -> Iterator[None]:
    """py-spy on the gateway or the pass-through while the block runs (--py-spy DIR), as
    collapsed stacks, one file per run: `label-target.txt`."""
    proc = {"gateway": s.gateway, "passthrough": s.passthrough}.get(target)
    if settings.py_spy is None or proc is None:
        yield
        return
    settings.py_spy.mkdir(parents=True, exist_ok=True)
    out = settings.py_spy / f"{label}-{target}.txt"
    here = Path(sys.executable).parent / "py-spy"
    spy = subprocess.Popen(
        [
            str(here) if here.exists() else "py-spy",
            "record",
            "--pid",
            str(proc.pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _summary(runs: list[Measured], name: str) -> dict[str, Any]:
    mine = [r for r in runs if r.target == name]
    if not mine:
        return {}
    server = "upstream" if name == "direct" else name
    return {
        "req_per_s": round(_median([r.load["req_per_s"] or 0.0 for r in mine]), 1),
        "p50_ms": round(_median([r.load["latency_ms"]["p50"] or 0.0 for r in mine]), 2),
        "p99_ms": round(_median([r.load["latency_ms"]["p99"] or 0.0 for r in mine]), 2),
        "cpu_ms_per_request": round(
            _median([r.cpu_s[server] * 1000 / max(1, r.load["ok"]) for r in mine]), 3
        ),
        "failed": sum(r.load["failed"] for r in mine),
        "requests": sum(r.load["requests"] for r in mine),
        "upstream_calls": sum(r.upstream_calls for r in mine),
    }


def _cpu_ratio(summary: dict[str, Any], a: str, b: str) -> float:
    """b's CPU per request / a's: what the throughput ratio would be if each server had a
    core to itself. Steadier than req/s on a machine others share."""
    return round(summary[b]["cpu_ms_per_request"] / summary[a]["cpu_ms_per_request"], 3)


def _ratio(runs: list[Measured], a: str, b: str) -> float:
    """Median over rounds of a's throughput / b's, each round's pair taken together."""
    ra = [r.load["req_per_s"] or 0.0 for r in runs if r.target == a]
    rb = [r.load["req_per_s"] or 0.0 for r in runs if r.target == b]
    return round(_median([x / y for x, y in zip(ra, rb, strict=True) if y]), 3)


def scenario_overhead(settings: Settings, tmp: Path) -> dict[str, Any]:
    """Upstream latency 0, unique prompts: throughput and added latency."""
    n, c = settings.overhead_requests, settings.overhead_clients
    with stack(settings, 0.0, 0, tmp) as s:
        where = targets(s)
        for name in where:
            drive(s, where[name], total=settings.warmup, concurrency=c, prompt="warm {i}")
        counter = iter(range(1_000_000))

        def closed(name: str) -> Measured:
            label = f"overhead-{next(counter)}"
            with profiled(settings, s, name, label):
                return drive(s, where[name], total=n, concurrency=c, prompt=label + " {i}")

        runs = alternate(settings.rounds, ["gateway", "passthrough", "direct"], closed)

        def paced(name: str) -> Measured:
            return drive(
                s,
                where[name],
                total=settings.paced_requests,
                concurrency=c,
                prompt=f"paced-{name}-{next(counter)} {{i}}",
                rate=settings.paced_rate,
            )

        paced_runs = alternate(1, ["gateway", "passthrough", "direct"], paced)
        metrics_ok = metrics_count(s)
        uses = {
            "uvloop": s.gateway.loaded("uvloop/loop"),
            "httptools": s.gateway.loaded("httptools/parser"),
        }
    summary = {name: _summary(runs, name) for name in ("gateway", "passthrough", "direct")}
    paced_summary = {
        name: _summary(paced_runs, name) for name in ("gateway", "passthrough", "direct")
    }
    return {
        "clients": c,
        "requests_per_run": n,
        "paced_rate": settings.paced_rate,
        "closed_loop": summary,
        "paced": paced_summary,
        "throughput_ratio_gateway_to_passthrough": _ratio(runs, "gateway", "passthrough"),
        "cpu_ratio_gateway_to_passthrough": _cpu_ratio(summary, "gateway", "passthrough"),
        "added_p50_ms_paced": round(
            paced_summary["gateway"]["p50_ms"] - paced_summary["direct"]["p50_ms"], 2
        ),
        "added_p50_ms_closed_loop": round(
            summary["gateway"]["p50_ms"] - summary["direct"]["p50_ms"], 2
        ),
        "gateway_metrics_requests_200": metrics_ok,
        "gateway_event_loop": uses,
        "runs": [r.as_json() for r in runs + paced_runs],
    }


def scenario_cache(settings: Settings, tmp: Path) -> dict[str, Any]:
    """One identical prompt after a warm-up: the gateway can answer without the upstream."""
    n, c = settings.cache_requests, settings.overhead_clients
    prompt = "a lighthouse at dusk, identical every time"
    with stack(settings, 0.0, 0, tmp) as s:
        where = targets(s)
        for name in ("gateway", "passthrough"):
            drive(s, where[name], total=settings.warmup, concurrency=c, prompt=prompt)

        def run(name: str) -> Measured:
            with profiled(settings, s, name, "cache"):
                return drive(s, where[name], total=n, concurrency=c, prompt=prompt)

        runs = alternate(settings.rounds, ["gateway", "passthrough"], run)
    summary = {name: _summary(runs, name) for name in ("gateway", "passthrough")}
    gw = summary["gateway"]
    return {
        "clients": c,
        "requests_per_run": n,
        "closed_loop": summary,
        "throughput_ratio_gateway_to_passthrough": _ratio(runs, "gateway", "passthrough"),
        "cpu_ratio_gateway_to_passthrough": _cpu_ratio(summary, "gateway", "passthrough"),
        "gateway_hit_share": round(1 - gw["upstream_calls"] / max(1, gw["requests"]), 3),
        "runs": [r.as_json() for r in runs],
    }


def scenario_long(settings: Settings, tmp: Path) -> dict[str, Any]:
    """Thousands of requests waiting on a slow upstream at the same time.

    Twice: arriving over a few seconds (all of them waiting together before the first is
    answered: the steady state of a busy gateway) and arriving in one instant (a thundering
    herd, where the last request in waits for the proxy to take in all the others first).
    Each mode gets fresh processes: its own peak memory, and no upstream connections left
    open by the other mode (opening 2,000 of them is part of the cost).
    """
    latency, n = settings.long_latency, settings.long_requests
    out: dict[str, Any] = {
        "upstream_latency_s": latency,
        "concurrent": n,
        "ramp_seconds": settings.long_ramp_seconds,
    }
    runs: list[Measured] = []
    for mode in ("ramp", "burst"):
        rate = n / settings.long_ramp_seconds if mode == "ramp" else None
        with stack(settings, latency, 0, tmp) as s:
            where = targets(s)
            for name in ("gateway", "passthrough"):
                drive(s, where[name], total=64, concurrency=64, prompt="warm {i}")
            idle = {"gateway": s.gateway.rss_mib(), "passthrough": s.passthrough.rss_mib()}

            def run(
                name: str, s: Stack = s, mode: str = mode, rate: float | None = rate
            ) -> Measured:
                with profiled(settings, s, name, f"long-{mode}"):
                    return drive(
                        s,
                        targets(s)[name],
                        total=n,
                        concurrency=n,
                        prompt=f"long-{mode}-{name} {{i}}",
                        rate=rate,
                        timeout=latency + 120,
                    )

            mine = alternate(1, ["gateway", "passthrough"], run)
            peak = {
                "gateway": s.gateway.peak_rss_mib(),
                "passthrough": s.passthrough.peak_rss_mib(),
            }
        for r in mine:
            lat = r.load["latency_ms"]

            def added(key: str, lat: dict[str, float | None] = lat) -> float | None:
                value = lat[key]
                return None if value is None else round(value - latency * 1000, 1)

            r.mode = mode
            runs.append(r)
            out.setdefault(mode, {})[r.target] = {
                "ok": r.load["ok"],
                "failed": r.load["failed"],
                "outcomes": r.load["outcomes"],
                "added_p50_ms": added("p50"),
                "added_p99_ms": added("p99"),
                "added_max_ms": added("max"),
                "last_reached_upstream_ms": r.window.get("last_arrival_ms"),
                "upstream_max_in_flight": r.upstream_max_in_flight,
                "cpu_ms_per_request": round(r.cpu_s[r.target] * 1000 / max(1, r.load["ok"]), 3),
                "idle_rss_mib": round(idle[r.target], 1),
                "peak_rss_mib": round(peak[r.target], 1),
                "kib_per_waiting_request": round((peak[r.target] - idle[r.target]) * 1024 / n, 1),
            }
    for name in ("gateway", "passthrough"):
        worst = max(("ramp", "burst"), key=lambda m: out[m][name]["peak_rss_mib"])
        out[name] = {
            key: out[worst][name][key]
            for key in ("idle_rss_mib", "peak_rss_mib", "kib_per_waiting_request")
        }
    out["runs"] = [r.as_json() for r in runs]
    return out


def scenario_big(settings: Settings, tmp: Path) -> dict[str, Any]:
    """Big PNGs as b64_json: the bytes go through the gateway's memory."""
    size, c, n = settings.big_image_bytes, settings.big_clients, settings.big_requests
    out: dict[str, Any] = {"image_bytes": size, "clients": c, "requests_per_run": n}
    with stack(settings, 0.0, size, tmp) as s:
        png_len = len(_get(s.fake.url + "/cdn/nanobanana/probe.png", timeout=30))
        out["png_bytes"] = png_len
        b64_len = 4 * ((png_len + 2) // 3)
        where = targets(s)

        def run(name: str) -> Measured:
            with profiled(settings, s, name, "big"):
                return drive(
                    s,
                    where[name],
                    total=n,
                    concurrency=c,
                    prompt=f"big-{name} {{i}}",
                    response_format="b64_json",
                    min_body_bytes=b64_len,
                )

        runs = alternate(
            settings.rounds if not settings.quick else 1, ["gateway", "passthrough"], run
        )
        peak = {"gateway": s.gateway.peak_rss_mib(), "passthrough": s.passthrough.peak_rss_mib()}
    for name in ("gateway", "passthrough"):
        mine = [r for r in runs if r.target == name]
        out[name] = {
            "ok": sum(r.load["ok"] for r in mine),
            "failed": sum(r.load["failed"] for r in mine),
            "image_mb_per_s": round(
                _median([r.load["ok"] * png_len / r.load["wall_s"] / 1e6 for r in mine]), 1
            ),
            "p50_ms": round(_median([r.load["latency_ms"]["p50"] or 0.0 for r in mine]), 1),
            "p99_ms": round(_median([r.load["latency_ms"]["p99"] or 0.0 for r in mine]), 1),
            "peak_rss_mib": round(peak[name], 1),
            "cpu_ms_per_request": round(
                _median([r.cpu_s[name] * 1000 / max(1, r.load["ok"]) for r in mine]), 2
            ),
        }
    out["rss_limit_mib"] = round(200 + 3 * c * size / 2**20, 1)
    out["runs"] = [r.as_json() for r in runs]
    return out


def scenario_limits(settings: Settings, tmp: Path) -> dict[str, Any]:
    """Client limits counted in process vs in Redis, beside the pass-through."""
    import limits  # here, not at the top: bench/limits.py imports this module

    return limits.scenario(settings, tmp)


def scenario_batch(settings: Settings, tmp: Path) -> dict[str, Any]:
    """A batch's lines per second, and interactive latency idle vs while it runs."""
    import batch  # here, not at the top: bench/batch.py imports this module

    return batch.scenario(settings, tmp)


def scenario_waits(settings: Settings, tmp: Path) -> dict[str, Any]:
    """RSS and CPU at 1,000 / 2,000 / 4,000 / 8,000 waiting requests."""
    import waits  # here, not at the top: bench/waits.py imports this module

    return waits.scenario(settings, tmp)


def scenario_recovery(settings: Settings, tmp: Path) -> dict[str, Any]:
    """Seconds from the provider's return to the first success and to steady service."""
    import recovery  # here, not at the top: bench/recovery.py imports this module

    return recovery.scenario(settings, tmp)


SCENARIOS: dict[str, Callable[[Settings, Path], dict[str, Any]]] = {
    "overhead": scenario_overhead,
    "cache": scenario_cache,
    "long": scenario_long,
    "big": scenario_big,
    "recovery": scenario_recovery,
    "limits": scenario_limits,
    "batch": scenario_batch,
    "waits": scenario_waits,
}
# Run only when named: a round lasts as long as the gateway takes to recover (half a
# minute with a 30 s breaker), and the default set is what the smoke test runs.
OPT_IN = ("recovery", "limits", "batch", "waits")


# --------------------------------------------------------------------------- targets


@dataclass
class Verdict:
    """One target of issue 8 and whether this run met it."""

    scenario: str
    target: str
    value: float | str
    limit: str
    verdict: str  # met | NOT MET | pending cache
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


# Why a throughput target is not met, said with the run's own CPU figures (RESULTS.md has
# the profile behind these words).
OVERHEAD_WHY = (
    "{gw} ms of CPU per request against the pass-through's {pt}: the {diff} ms between is "
    "the gateway's own stages (auth, limits, parsing and checking every field, translation, "
    "the cache key and store, the pool's choice and verdict, metrics, the usage line), each a "
    "few microseconds, with no single hot spot left; counted in instructions "
    "(bench/instructions.py) it comes closer, as its larger code and data per request run "
    "slower per instruction (bench/RESULTS.md)"
)
CACHE_WHY = (
    "a hit costs {gw} ms of CPU against the pass-through's {pt} (which also calls the "
    "upstream): a hit still authenticates, takes the limits, parses and checks the body, "
    "translates it, builds the key, meters and writes the usage line (bench/RESULTS.md)"
)


def _why(r: dict[str, Any], words: str) -> str:
    gw = r["closed_loop"]["gateway"]["cpu_ms_per_request"]
    pt = r["closed_loop"]["passthrough"]["cpu_ms_per_request"]
    return words.format(gw=gw, pt=pt, diff=round(gw - pt, 3))


def verdicts(results: dict[str, Any], settings: Settings) -> list[Verdict]:
    """Check each scenario's numbers against the issue's targets."""
    out: list[Verdict] = []

    def check(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    if "overhead" in results:
        r = results["overhead"]
        ratio = r["throughput_ratio_gateway_to_passthrough"]
        note = f"CPU per request, pass-through / gateway: {r['cpu_ratio_gateway_to_passthrough']}"
        if ratio < 0.85:
            note += "; why: " + _why(r, OVERHEAD_WHY)
        met = check(ratio >= 0.85)
        out.append(Verdict("overhead", "throughput vs pass-through", ratio, ">= 0.85", met, note))
        added = r["added_p50_ms_paced"]
        out.append(
            Verdict(
                "overhead",
                f"p50 added latency, {r['clients']} clients at {r['paced_rate']:g} req/s",
                added,
                "<= 3 ms",
                check(added <= 3),
                f"at saturation: {r['added_p50_ms_closed_loop']} ms (queueing, see RESULTS.md)",
            )
        )
    if "cache" in results:
        r = results["cache"]
        ratio = r["throughput_ratio_gateway_to_passthrough"]
        hits = r["gateway_hit_share"]
        if hits < 0.5:
            verdict = "pending cache"
            note = f"the upstream answered {1 - hits:.0%} of identical requests: no cache yet"
        else:
            verdict, note = check(ratio >= 2.0), f"{hits:.0%} answered without the upstream"
        note += (
            f"; CPU per request, pass-through / gateway: {r['cpu_ratio_gateway_to_passthrough']}"
        )
        if verdict == "NOT MET":
            note += "; why: " + _why(r, CACHE_WHY)
        out.append(Verdict("cache", "throughput vs pass-through", ratio, ">= 2.0", verdict, note))
    if "long" in results:
        r = results["long"]
        n = r["concurrent"]
        for mode, how in (("ramp", f"arriving over {r['ramp_seconds']:g} s"), ("burst", "at once")):
            gw, pt = r[mode]["gateway"], r[mode]["passthrough"]
            out.append(
                Verdict("long", f"succeeded, {how}", gw["ok"], f"== {n}", check(gw["ok"] == n))
            )
            p99 = gw["added_p99_ms"] if gw["added_p99_ms"] is not None else float("inf")
            out.append(
                Verdict(
                    "long",
                    f"p99 added latency ms, {how}",
                    p99,
                    "<= 1000",
                    check(p99 <= 1000),
                    f"pass-through {pt['added_p99_ms']} ms; last request reached the upstream "
                    f"after {gw['last_reached_upstream_ms']} ms",
                )
            )
        gw = r["gateway"]
        out.append(
            Verdict(
                "long",
                "gateway peak RSS MiB",
                gw["peak_rss_mib"],
                "<= 250",
                check(gw["peak_rss_mib"] <= 250),  # at 2,000 waits; 8,000: the waits scenario
                f"{gw['kib_per_waiting_request']} KiB per waiting request",
            )
        )
    if "waits" in results:
        import waits

        out.extend(waits.verdicts(results["waits"]))
    if "batch" in results:
        import batch

        out.extend(batch.verdicts(results["batch"]))
    if "big" in results:
        r = results["big"]
        gw = r["gateway"]
        out.append(
            Verdict("big", "failed requests", gw["failed"], "== 0", check(gw["failed"] == 0))
        )
        out.append(
            Verdict(
                "big",
                "gateway peak RSS MiB",
                gw["peak_rss_mib"],
                f"<= {r['rss_limit_mib']:g}",
                check(gw["peak_rss_mib"] <= r["rss_limit_mib"]),
                f"{gw['image_mb_per_s']} MB/s of images",
            )
        )
    for case, r in results.get("recovery", {}).get("cases", {}).items():
        for key, what in (("first_success_s", "first success"), ("steady_s", "steady service")):
            worst = r[key]["max"]  # None: not reached in some round
            out.append(
                Verdict(
                    "recovery",
                    f"{case}: s from return to {what}, worst round",
                    worst if worst is not None else "not reached",
                    "<= 1",
                    check(worst is not None and worst <= 1),
                    f"median {r[key]['median']} s; {r['failed']} failed, {r['ok']} ok",
                )
            )
    if "limits" in results:
        r = results["limits"]
        trips = r["limit_round_trips_per_request"]
        out.append(
            Verdict(
                "limits",
                "Redis round trips per request for the limits",
                trips,
                "<= 1 (the issue's target)",
                check(trips <= 1.05),
                "one script takes every limit, one settles (before the answer, so a follow-up "
                f"on another replica is never refused for it); throughput shared / local "
                f"{r['throughput_ratio_shared_to_local']}, shared / pass-through "
                f"{r['throughput_ratio_shared_to_passthrough']}, local / pass-through "
                f"{r['throughput_ratio_local_to_passthrough']}",
            )
        )
    if settings.quick:
        for v in out:
            if v.scenario == "recovery":
                continue  # --quick runs fewer rounds of it, each as long and as telling
            v.note = ("quick run: sizes too small to judge; " + v.note).rstrip("; ")
    return out


# --------------------------------------------------------------------------- report


def print_table(results: dict[str, Any], checks: list[Verdict]) -> None:
    """The human-readable summary."""
    print()
    print(
        f"{'scenario':<15} {'target':<12} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'CPU ms/req':>11} {'failed':>7}"
    )
    for scen in ("overhead", "cache", "limits"):
        if scen not in results:
            continue
        r = results[scen]
        rows = [(f"{scen}", k, v) for k, v in r["closed_loop"].items()]
        rows += [(f"{scen} paced", k, v) for k, v in r.get("paced", {}).items()]
        for label, name, v in rows:
            print(
                f"{label:<15} {name:<12} {v['req_per_s']:>9.1f} {v['p50_ms']:>9.2f} "
                f"{v['p99_ms']:>9.2f} {v['cpu_ms_per_request']:>11.3f} {v['failed']:>7}"
            )
    if "long" in results:
        r = results["long"]
        print(f"\nlong waits: upstream {r['upstream_latency_s']:g} s, {r['concurrent']} requests")
        for mode in ("ramp", "burst"):
            for name in ("gateway", "passthrough"):
                v = r[mode][name]
                print(
                    f"  {mode:<5} {name:<12} ok {v['ok']:>5}  added p50 {v['added_p50_ms']} ms"
                    f"  p99 {v['added_p99_ms']} ms  max {v['added_max_ms']} ms"
                    f"  last in {v['last_reached_upstream_ms']} ms"
                    f"  CPU {v['cpu_ms_per_request']} ms/req  peak RSS {v['peak_rss_mib']} MiB"
                    f" ({v['kib_per_waiting_request']} KiB/request)"
                )
    if "big" in results:
        r = results["big"]
        print(
            f"\nbig images: {r['png_bytes'] / 2**20:.1f} MiB PNG as b64_json, {r['clients']} "
            "clients"
        )
        for name in ("gateway", "passthrough"):
            v = r[name]
            print(
                f"  {name:<12} ok {v['ok']:>4}  failed {v['failed']}  {v['image_mb_per_s']} MB/s"
                f"  p50 {v['p50_ms']} ms  peak RSS {v['peak_rss_mib']} MiB"
                f"  CPU {v['cpu_ms_per_request']} ms/req"
            )
    if "waits" in results:
        import waits

        print("\n".join(waits.table(results["waits"])))
    print()
    for v in checks:
        note = f"  ({v.note})" if v.note else ""
        print(f"[{v.verdict:>13}] {v.scenario:<9} {v.target}: {v.value} (target {v.limit}){note}")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def raise_fd_limit() -> None:
    """Children inherit this: the gateway holds two sockets per waiting request."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 3 * 2000 + 256:
        print(
            f"warning: open-files hard limit {hard} is low for the 2,000-request scenario",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred requests in all")
    parser.add_argument(
        "--scenario",
        default=",".join(s for s in SCENARIOS if s not in OPT_IN),
        help="comma-separated subset of " + ", ".join(SCENARIOS) + " (recovery: only if named)",
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="alternating rounds per case (default 3, quick 1)"
    )
    parser.add_argument("--json", default=str(BENCH / "last-run.json"), help="where to write")
    parser.add_argument("--gateway-command", help="run this instead of the installed command")
    parser.add_argument(
        "--py-spy", metavar="DIR", help="record the gateway with py-spy (collapsed stacks) into DIR"
    )
    args = parser.parse_args(argv)
    chosen = [x.strip() for x in args.scenario.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    settings = Settings.make(args)
    raise_fd_limit()

    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "command": " ".join(
            ["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": started.isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "quick": settings.quick,
        "rounds": settings.rounds,
        "gateway_command": settings.gateway_cmd,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "scenarios": {},
    }
    results: dict[str, Any] = report["scenarios"]
    with tempfile.TemporaryDirectory(prefix="nbg-bench-") as tmp_name:
        for name in chosen:
            print(f"-- {name} (load average {os.getloadavg()[0]:.2f})", flush=True)
            t0 = time.monotonic()
            results[name] = SCENARIOS[name](settings, Path(tmp_name))
            results[name]["seconds"] = round(time.monotonic() - t0, 1)
            results[name]["loadavg_after"] = os.getloadavg()
    report["loadavg_end"] = os.getloadavg()
    checks = verdicts(results, settings)
    report["targets"] = [v.as_json() for v in checks]
    print_table(results, checks)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
