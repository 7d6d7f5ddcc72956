"""Shared limits: what Redis-backed client limits cost on the hot path.

    python bench/run.py --scenario limits               # 3 alternating rounds
    python bench/run.py --scenario limits --quick

The overhead scenario's load (upstream latency 0, unique prompts, response_format=url,
32 clients as fast as they can) against three servers on 127.0.0.1, in turns:

  local        the gateway with one client whose four limits are all set (high enough
               never to refuse), counted in process (its day in the state directory)
  shared       the same configuration plus `[redis] url`: the limits (and the token
               health) through a real redis-server (no persistence)
  passthrough  the bare pass-through proxy (bench/passthrough.py), the floor

Both gateways run with `[cache] enabled = false`, so that Redis serves only the limits
and the difference between them is what shared limits cost (unique prompts miss the cache
anyway; the cache's own Redis calls are the cache's business).

Per request, around each shared run: `limit_round_trips_per_request` from the gateway's
`nano_banana_limits_redis_round_trips_total` (requests in flight together share round
trips), and `redis_commands_per_request` from Redis's own `INFO commandstats` (`evalsha`:
the scripts, one to take and one to settle; the once-a-second sync adds a few per run).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import run  # bench/run.py: the process helpers and the request shape

LIMITS = """
[[clients]]
name = "bench"
key = "{key}"
requests_per_minute = 100000000
max_concurrent_requests = 100000
images_per_day = 1000000000
budget_usd_per_day = 1000000000.0

[prices]
"nano-banana" = 0.039

[cache]
enabled = false
"""


class Redis:
    """redis-server on a free port, nothing written to disk."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("the limits scenario needs redis-server: apt-get install redis-server")
        self.port = run.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(tmp)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while self._ask("PING") != "+PONG":
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def _ask(self, command: str) -> str:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(command.encode() + b"\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    data += chunk
                    if not chunk or (data.startswith(b"+") and data.endswith(b"\r\n")):
                        break
                    if data.startswith(b"$") and data.count(b"\r\n") >= 2:
                        break
                return data.decode(errors="replace").strip()
        except OSError:
            return ""

    def commands(self) -> dict[str, int]:
        """Calls per command since start (INFO commandstats)."""
        calls: dict[str, int] = {}
        for line in self._ask("INFO commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line.partition(":")
                fields = dict(kv.split("=") for kv in rest.split(","))
                calls[name.removeprefix("cmdstat_")] = int(fields["calls"])
        return calls

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def _gateway(
    settings: run.Settings, fake: run.Proc, tmp: Path, name: str, redis: str | None
) -> run.Proc:
    config = tmp / f"{name}.toml"
    text = (
        '[[upstreams]]\nname = "acedata"\ntype = "acedata"\n'
        f'base_url = "{fake.url}"\ntokens = ["{run.UPSTREAM_TOKEN}"]\n'
        + LIMITS.format(key=run.CLIENT_KEY)
    )
    if redis:
        text += f'\n[redis]\nurl = "{redis}"\n'
    config.write_text(text)
    port = run.free_port()
    env = {**run._clean_env(), "GATEWAY_STATE_DIR": str(tmp / f"{name}-state")}
    return run.start(
        name,
        [*settings.gateway_cmd, "--port", str(port), "--config", str(config)],
        f"http://127.0.0.1:{port}",
        "/healthz",
        tmp,
        env,
    )


@contextmanager
def servers(settings: run.Settings, tmp: Path) -> Iterator[dict[str, Any]]:
    """The fake, Redis, both gateways and the pass-through; stopped afterwards."""
    with run.stack(settings, 0.0, 0, tmp) as s:  # the fake and the pass-through
        redis = Redis(tmp)
        started: list[run.Proc] = []
        try:
            local = _gateway(settings, s.fake, tmp, "local", None)
            started.append(local)
            shared = _gateway(settings, s.fake, tmp, "shared", redis.url)
            started.append(shared)
            yield {"stack": s, "local": local, "shared": shared, "redis": redis}
        finally:
            for proc in started:
                proc.stop()
            redis.stop()


def scenario(settings: run.Settings, tmp: Path) -> dict[str, Any]:
    """Throughput with limits in process, in Redis, and of the pass-through."""
    n, c = settings.overhead_requests, settings.overhead_clients
    per_run: list[dict[str, Any]] = []
    with servers(settings, tmp) as got:
        s: run.Stack = got["stack"]
        redis: Redis = got["redis"]
        stacks = {
            "local": run.Stack(s.fake, got["local"], s.passthrough),
            "shared": run.Stack(s.fake, got["shared"], s.passthrough),
            "passthrough": s,
        }

        def target(name: str) -> run.Target:
            where = run.targets(stacks[name])
            return where["passthrough" if name == "passthrough" else "gateway"]

        for name in stacks:
            run.drive(stacks[name], target(name), total=settings.warmup, concurrency=c,
                      prompt=f"warm {name} {{i}}")  # fmt: skip
        counter = iter(range(1_000_000))

        def round_trips() -> float:
            text = run._get(got["shared"].url + "/metrics").decode()
            for line in text.splitlines():
                if line.startswith("nano_banana_limits_redis_round_trips_total "):
                    return float(line.split()[1])
            return 0.0

        def closed(name: str) -> run.Measured:
            before, trips = redis.commands(), round_trips()
            label = f"limits-{next(counter)}"
            measured = run.drive(
                stacks[name], target(name), total=n, concurrency=c, prompt=label + " {i}"
            )
            # The gateway's CPU sits under "gateway" for both gateways; name it after the run.
            measured.target = name
            measured.cpu_s[name] = measured.cpu_s[
                "passthrough" if name == "passthrough" else "gateway"
            ]
            if name == "shared":
                after = redis.commands()
                ok = max(1, measured.load["ok"])
                counts = {k: round((after.get(k, 0) - before.get(k, 0)) / ok, 3) for k in after}
                counts["limit_round_trips"] = round((round_trips() - trips) / ok, 3)
                per_run.append(counts)
            return measured

        runs = run.alternate(settings.rounds, list(stacks), closed)
    summary = {name: run._summary(runs, name) for name in stacks}
    per_request = {
        k: round(run._median([r.get(k, 0.0) for r in per_run]), 3)
        for k in sorted({k for r in per_run for k in r})
    }
    return {
        "clients": c,
        "requests_per_run": n,
        "closed_loop": summary,
        "throughput_ratio_local_to_passthrough": run._ratio(runs, "local", "passthrough"),
        "throughput_ratio_shared_to_passthrough": run._ratio(runs, "shared", "passthrough"),
        "throughput_ratio_shared_to_local": run._ratio(runs, "shared", "local"),
        "redis_commands_per_request": per_request,
        "limit_round_trips_per_request": per_request.pop("limit_round_trips", 0.0),
        "runs": [r.as_json() for r in runs],
    }
