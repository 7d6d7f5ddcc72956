"""What a waiting request holds: tracemalloc in the gateway while 2,000 requests wait.

    python bench/memory.py                 # 2,000 waits on a 10 s upstream
    python bench/memory.py --waits 500 --top 25

The gateway runs under this file's `--serve` mode: `python -m gateway` with tracemalloc
started first and two signals added. SIGUSR2 takes the baseline snapshot (idle, warmed
up); SIGUSR1 takes a snapshot while every request is waiting and writes the difference,
by allocation site and by package, to a JSON file. The driver starts the fake upstream
and the gateway, warms the gateway, sends the waits (arriving over 2.5 s) and signals in
between. Python allocations only: what the kernel holds per socket, and allocator
overhead, are not in these figures (the RSS of the waits scenario has them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def _serve(out: Path) -> None:
    tracemalloc.start(1)
    baseline: list[tracemalloc.Snapshot] = []

    def take_baseline(signum: int, frame: Any) -> None:
        baseline[:] = [tracemalloc.take_snapshot()]

    def dump(signum: int, frame: Any) -> None:
        now = tracemalloc.take_snapshot()
        before = baseline[0] if baseline else now
        sites = now.compare_to(before, "lineno")
        files = now.compare_to(before, "filename")
        out.write_text(
            json.dumps(
                {
                    "total_growth_bytes": sum(s.size_diff for s in sites),
                    "sites": [[str(s.traceback[0]), s.size_diff, s.count_diff] for s in sites[:60]],
                    "files": [[str(s.traceback[0].filename), s.size_diff] for s in files[:60]],
                }
            )
        )

    signal.signal(signal.SIGUSR2, take_baseline)
    signal.signal(signal.SIGUSR1, dump)
    from gateway.__main__ import main

    sys.exit(main(sys.argv[sys.argv.index("--") + 1 :]))


def _package(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[0] if marker == "site-packages/" else "stdlib"
    return "gateway" if "/gateway/" in path else path


def main() -> int:
    sys.path.insert(0, str(BENCH))
    import run  # bench/run.py: ports, the fake, the load driver's request shape

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waits", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    run.raise_fd_limit()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"nbg-memory-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    env = run._clean_env()
    fake_port, gw_port = run.free_port(), run.free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(fake_port),
                 "--latency", "10", "--image-bytes", "0"],
                env=env, stdout=subprocess.DEVNULL,
            )
        )  # fmt: skip
        dump = tmp / "tracemalloc.json"
        gw_env = {
            **env,
            "ACEDATA_API_TOKENS": run.UPSTREAM_TOKEN,
            "ACEDATA_BASE_URL": f"http://127.0.0.1:{fake_port}",
            "GATEWAY_CLIENT_KEYS": f"bench:{run.CLIENT_KEY}",
            "GATEWAY_STATE_DIR": str(tmp / "state"),
        }
        gw = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(dump), "--", "--port", str(gw_port)],
            env=gw_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(gw)
        deadline = time.monotonic() + 30
        while True:
            try:
                run._get(f"http://127.0.0.1:{gw_port}/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the gateway did not start") from None
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {run.CLIENT_KEY}"}

        def load(total: int, rate: float | None, prompt: str) -> subprocess.Popen[bytes]:
            spec = {
                "port": gw_port, "path": "/v1/images/generations", "total": total,
                "concurrency": total, "body": run.openai_body(prompt, "url"),
                "headers": headers, "expect": run.expect_for("gateway", "url"),
                "min_body_bytes": 0, "rate": rate, "timeout": 90,
            }  # fmt: skip
            return subprocess.Popen(
                [sys.executable, str(BENCH / "load.py"), json.dumps(spec)], stdout=subprocess.PIPE
            )

        load(64, None, "warm {i}").wait()
        gw.send_signal(signal.SIGUSR2)
        time.sleep(1)
        ramp = 2.5 * args.waits / 1000
        driver = load(args.waits, args.waits / ramp, "mem {i}")
        # The snapshot once every request waits at the upstream (none answered yet: 10 s),
        # not at a guessed moment: a count short of it would flatter the figure per wait.
        waiting = 0
        deadline = time.monotonic() + ramp + 9
        while time.monotonic() < deadline:
            time.sleep(0.2)
            stats = json.loads(run._get(f"http://127.0.0.1:{fake_port}/stats"))
            waiting = stats["in_flight"]
            if waiting >= args.waits:
                break
        gw.send_signal(signal.SIGUSR1)
        result = json.loads(driver.communicate(timeout=120)[0])
        deadline = time.monotonic() + 30
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        data = json.loads(dump.read_text())
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=20)
    n = max(1, waiting)  # per request actually waiting when the snapshot was taken
    growth = data["total_growth_bytes"]
    print(f"{n} waits ({waiting} at the upstream at the snapshot, {result['ok']} answered):")
    print(f"Python allocations grew {growth / 2**20:.1f} MiB,")
    print(f"{growth / n / 1024:.1f} KiB per waiting request\n\nby package:")
    packages: dict[str, int] = {}
    for path, size in data["files"]:
        packages[_package(path)] = packages.get(_package(path), 0) + size
    for name, size in sorted(packages.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {size / n:>8.0f} B/wait  {name}")
    print("\nby allocation site:")
    for site, size, count in data["sites"][: args.top]:
        print(f"  {size / n:>8.0f} B/wait  {count / n:>5.1f} objects/wait  {site}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        _serve(Path(sys.argv[2]))
    raise SystemExit(main())
