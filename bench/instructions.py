"""CPU per request as instructions, which this shared machine cannot disturb.

    python bench/instructions.py          # this checkout (miss, hit) and the pass-through
    python bench/instructions.py --build new=. --build old=/path/to/an/older/checkout

Wall-clock CPU per request moves by 10-15% between two processes of the same build here
(other work on the machine, each process's memory layout and hash seed), so a change of a
few percent cannot be seen in `bench/run.py`'s ratios. This runs each server under
`valgrind --tool=callgrind` with counting switched on only while the measured requests
run, and prints instructions per request: the same build twice gives the same count within
about 1%. Instructions are not seconds (system calls and cache misses are not in them), so
read the result beside the throughput table, not instead of it.

Each case: a fresh fake AceDataCloud (latency 0), the server under callgrind (`python -m
gateway` with PYTHONPATH set to the build, or `bench/passthrough.py`), a warm-up, then the
measured requests from 8 kept-alive clients: unique prompts (every one a cache miss) or one
prompt (every one a hit; the pass-through calls the upstream either way). Needs valgrind
(Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import run  # bench/run.py: ports, keys, the fake, the request bodies

CLIENTS = 8


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _load(port: int, target: str, total: int, prompt: str) -> None:
    spec = {
        "port": port,
        "path": "/v1/images/generations",
        "total": total,
        "concurrency": CLIENTS,
        "body": run.openai_body(prompt, "url"),
        "headers": {"Authorization": f"Bearer {run.CLIENT_KEY}"},
        "expect": run.expect_for(target, "url"),
        "timeout": 600,
    }
    out = subprocess.run(
        [sys.executable, str(run.BENCH / "load.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    done = json.loads(out.stdout)
    if done["ok"] != total:
        raise SystemExit(f"{target}: {done['ok']} of {total} answered: {done['outcomes']}")


def measure(build: Path | None, hits: bool, requests: int, tmp: Path) -> int:
    """Instructions per request of one server (the gateway from `build`, or the
    pass-through when `build` is None) over `requests` requests."""
    env = run._clean_env()
    fake_port = run.free_port()
    upstream = f"http://127.0.0.1:{fake_port}"
    fake = run.start(
        "fake",
        [sys.executable, str(run.BENCH / "fake_upstream.py"), "--port", str(fake_port),
         "--latency", "0", "--image-bytes", "1024"],
        upstream, "/stats", tmp, env,
    )  # fmt: skip
    port = run.free_port()
    if build is None:
        target = "passthrough"
        server = [sys.executable, str(run.BENCH / "passthrough.py"), "--port", str(port),
                  "--upstream", upstream, "--token", run.UPSTREAM_TOKEN]  # fmt: skip
    else:
        target = "gateway"
        server = [sys.executable, "-m", "gateway", "--port", str(port)]
        env = {
            **env,
            "PYTHONPATH": str(build),
            "ACEDATA_API_TOKENS": run.UPSTREAM_TOKEN,
            "ACEDATA_BASE_URL": upstream,
            "GATEWAY_CLIENT_KEYS": f"bench:{run.CLIENT_KEY}",
            "GATEWAY_STATE_DIR": str(tmp / f"state-{port}"),
        }
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run
    out = tmp / f"callgrind-{port}.out"
    # Started in tmp, not the checkout: `python -m gateway` would import the gateway of
    # the working directory before PYTHONPATH's. Under valgrind a start takes a while.
    try:
        proc = run.start(
            target,
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", *server],
            f"http://127.0.0.1:{port}", "/healthz", tmp, env, cwd=tmp, seconds=300,
        )  # fmt: skip
        try:
            _load(port, target, 100, "same" if hits else "warm {i}")
            _control(proc.pid, "-i", "on")
            _load(port, target, requests, "same" if hits else "measured {i}")
            _control(proc.pid, "-i", "off")
            _control(proc.pid, "-d")  # the counts, written while the server still runs
        finally:
            proc.stop()
    finally:
        fake.stop()
    total = 0
    for dump in glob.glob(f"{out}*"):
        for line in Path(dump).read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total // requests


def main() -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        help="NAME=DIR: a checkout to measure (default: this one, as 'this')",
    )
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("needs valgrind: apt-get install valgrind")
    builds = [b.split("=", 1) for b in args.build] or [["this", str(run.ROOT)]]
    print(f"instructions per request, {args.requests} requests from {CLIENTS} clients")
    with tempfile.TemporaryDirectory(prefix="nbg-instructions-") as name:
        tmp = Path(name)
        rows: list[tuple[str, int, int]] = [
            (label, measure(Path(path), False, args.requests, tmp),
             measure(Path(path), True, args.requests, tmp))
            for label, path in builds
        ]  # fmt: skip
        floor = measure(None, False, args.requests, tmp)
    print(f"{'server':<14} {'miss':>12} {'hit':>12}   pass-through / server: miss, hit")
    for label, miss, hit in rows:
        print(f"{label:<14} {miss:>12,} {hit:>12,}   {floor / miss:.3f}, {floor / hit:.3f}")
    print(f"{'pass-through':<14} {floor:>12,}")
    return 0


if __name__ == "__main__":
    os.chdir(run.ROOT)
    raise SystemExit(main())
