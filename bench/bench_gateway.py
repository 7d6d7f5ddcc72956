"""Load benchmark: the gateway in its own process, a fake provider in another, and an
aiohttp load generator here. Everything stays on 127.0.0.1; every loop is bounded.

    python bench/bench_gateway.py            # both scenarios, ~1 minute
    python bench/bench_gateway.py --quick    # smaller numbers, ~15 s

Scenarios:
  mock      the built-in mock upstream (no network hop): the gateway's own request cost
  passthru  a fake AceDataCloud answering after a fixed latency, many calls held open at
            once: what the gateway adds on top of a slow upstream
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_gateway(config_text: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = tmp / f"gw-{port}.toml"
    cfg.write_text(config_text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    return proc, url


def start_fake(latency: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    code = (
        "import time\n"
        "from tests.fakes.upstreams import FakeUpstream\n"
        f"fake = FakeUpstream('acedata', latency={latency})\n"
        f"fake._port = {port}\n"
        "fake.start()\n"
        "while True: time.sleep(3600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, url
        time.sleep(0.1)
    raise RuntimeError("fake upstream did not start")


async def load(
    url: str, total: int, concurrency: int, body: dict, path: str = "/v1/images/generations"
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal errors
            async with sem:
                t0 = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}{path}",
                        json=body,
                        headers={"authorization": "Bearer t1"},
                        timeout=aiohttp.ClientTimeout(total=120),
                    ) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                except Exception:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": total,
        "errors": errors,
        "wall_s": wall,
        "req_per_s": total / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[int(len(latencies) * 0.99) - 1],
        "max_s": latencies[-1],
    }


def report(name: str, result: dict[str, float], note: str = "") -> None:
    print(
        f"{name:<34} {int(result['requests']):>6} req  {int(result['errors']):>3} err  "
        f"{result['req_per_s']:>8.1f} req/s  p50 {result['p50_s'] * 1000:>8.1f} ms  "
        f"p99 {result['p99_s'] * 1000:>8.1f} ms  max {result['max_s'] * 1000:>8.1f} ms  {note}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            gw, gw_url = start_gateway(
                '[[upstreams]]\nname = "mock"\ntype = "mock"\n[server]\nlog_level = "warning"\n',
                tmp,
            )
            procs.append(gw)
            body = {
                "prompt": "bench",
                "model": "nano-banana",
                "response_format": "url",
                "size": "256x256",
            }
            asyncio.run(load(gw_url, 200, 32, body))  # warm-up
            report(
                "mock, url, concurrency 64",
                asyncio.run(load(gw_url, int(4000 * scale), 64, body)),
                "(placeholder PNG drawn per request)",
            )

            latency = 1.0
            fake, fake_url = start_fake(latency)
            procs.append(fake)
            gw2, gw2_url = start_gateway(
                '[[upstreams]]\nname = "ace"\ntype = "acedata"\n'
                f'base_url = "{fake_url}"\ntokens = ["t1", "t2", "t3", "t4"]\n'
                '[server]\nlog_level = "warning"\n',
                tmp,
            )
            procs.append(gw2)
            body = {"prompt": "bench", "model": "nano-banana", "response_format": "url"}
            for concurrency in (100, 500):
                total = int(concurrency * 4 * scale) or concurrency
                # The fake itself, without the gateway: the baseline the overhead is over.
                direct = asyncio.run(
                    load(
                        fake_url,
                        total,
                        concurrency,
                        {"action": "generate", "prompt": "bench", "model": "nano-banana"},
                        path="/nano-banana/images",
                    )
                )
                report(f"fake directly, concurrency {concurrency}", direct)
                r = asyncio.run(load(gw2_url, total, concurrency, body))
                report(
                    f"acedata fake {latency:.0f}s, concurrency {concurrency}",
                    r,
                    f"(overhead p50 {(r['p50_s'] - latency) * 1000:.0f} ms,"
                    f" p99 {(r['p99_s'] - latency) * 1000:.0f} ms)",
                )
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.exit(main())
