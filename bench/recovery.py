"""Recovery: seconds from the provider's return to the first success and to steady service.

    python bench/run.py --scenario recovery              # 2 cases x 3 rounds
    python bench/run.py --scenario recovery --quick      # 1 round of each
    python bench/run.py --scenario recovery --gateway-command /path/to/nano-banana-gateway

Every round starts fresh processes on 127.0.0.1 (so no breaker state carries over): the fast
fake AceDataCloud (bench/fake_upstream.py) and the gateway, configured with one upstream
(the fake) holding two tokens, one client key, `timeout_seconds = 30`, defaults otherwise.
A load driver (this file, `drive`, in a process of its own) keeps 8 clients sending unique
prompts (response_format=url, the overhead scenario's request) one after another, without
waiting out a 503's Retry-After, and records every request's send time, finish time and
outcome. After 2 s of good service:

  restart  the fake is killed with SIGKILL (its sockets close at once) and, 3 s later,
           started again on the same port (listening 0.1-0.6 s after that: outage_s)
  errors   the fake answers every generation call with HTTP 500 and AceData's error JSON
           for 3 s (POST /_control/errors?seconds=3)

Times are on the machine's monotonic clock, which the fake, the driver and this module share.

  down                  restart: just before the kill; errors: the start of the 500s
  return                restart: when the new fake process was listening (it reports the
                        moment in /stats, so there is no polling error); errors: the end of
                        the 500s (the fake reports it)
  first_success_s       the earliest finish of a request answered OK at or after return,
                        minus return (whenever it was sent)
  steady_s              the latest send time of a failed request sent at or after return,
                        minus return; 0 when none failed. Every request sent after that moment
                        succeeded, until the end of the round (sends, not finishes: it can be
                        a few ms below first_success_s). The driver goes on until 5 s
                        have passed with no failure (and no sooner than 5 s after return);
                        if the moment is not followed by at least 2.5 s of sends (the round
                        hit its 90 s limit), steady_s is None: not reached
  refused_after_return  requests sent at or after return that failed
  last_held_answered_s  the last answer (good or not) to a request sent before return,
                        minus return; 0 if all were answered before it
  slowest_after_return_s  the longest wait (send to finish) of a request sent after return
  failed, ok            every request of the round (the 2 s before down included)

Per case the report holds every round's figures and the median and max over rounds; the
verdicts in bench/run.py hold the max to the target (<= 1 s for both figures, both cases).
Also per round, as a check on the above: `first_failure_s`, when the first failed request
finished, after down. A gateway that keeps a broken upstream away for a fixed
`breaker_seconds` B after it first fails should show steady_s ~= B - (return - that moment).

Measured figures, before and after the pool's health rules were redone, are in
bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import json
import select
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import run  # bench/run.py: the process helpers and the request shape
import uvloop

CLIENTS = 8
WARM_S = 2.0  # good service before the outage, so the pool and connections are settled
OUTAGE_S = 3.0
HOLD_S = 5.0  # the driver stops after this long without a failure (after return)
MAX_AFTER_S = 90.0  # ...or this long after return: three times the default breaker
REQUEST_TIMEOUT_S = 60.0  # per request; beyond the gateway's 30 s per upstream call
RETURN_WAIT_S = 120.0  # the driver's wait for the return line, should the scenario die
OK = "ok"
_PATH = "/v1/images/generations"
UPSTREAM_TOKENS = ("bench-upstream-token-1", "bench-upstream-token-2")


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class DriveSpec:
    """One round's load, as the scenario passes it on the command line."""

    port: int
    out: str  # where the records go, as JSON
    prefix: str  # of every prompt, so no two rounds share one
    clients: int = CLIENTS
    hold_s: float = HOLD_S
    max_after_s: float = MAX_AFTER_S


class _Driver:
    """The clients, their records, and when to stop."""

    def __init__(self, spec: DriveSpec) -> None:
        self.spec = spec
        self.expect = run.expect_for("gateway", "url").encode()
        self.records: list[tuple[float, float, str]] = []
        self.returned_at: float | None = None
        self.stdin_closed = False
        self.last_failure = 0.0  # finish time, so a slow failure still holds the stop off
        self.next_index = 0
        self.ok = 0
        self.stop = asyncio.Event()
        self.stopped_by = ""

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read `return <monotonic>` lines from the scenario (in a thread: stdin blocks)."""
        for line in sys.stdin:
            word, _, value = line.strip().partition(" ")
            if word == "return":
                loop.call_soon_threadsafe(setattr, self, "returned_at", float(value))
        loop.call_soon_threadsafe(setattr, self, "stdin_closed", True)

    async def one(self, http: httpx.AsyncClient, index: int) -> str:
        body = run.openai_body(f"{self.spec.prefix} {index}", "url")
        try:
            resp = await http.post(_PATH, content=body)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as exc:
            return f"transport:{type(exc).__name__}"
        if resp.status_code == 200 and self.expect in resp.content[:512]:
            return OK
        try:
            code = resp.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = ""
        return f"{resp.status_code}:{code}"

    async def client(self, http: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            index, self.next_index = self.next_index, self.next_index + 1
            sent = time.monotonic()
            outcome = await self.one(http, index)
            done = time.monotonic()
            self.records.append((sent, done, outcome))
            if outcome != OK:
                self.last_failure = done
            elif self.ok < 2 * self.spec.clients:
                self.ok += 1
                if self.ok == 2 * self.spec.clients:  # every client has been served: go
                    print("running", flush=True)

    async def watch(self) -> None:
        spec, began = self.spec, time.monotonic()
        while not self.stop.is_set():
            await asyncio.sleep(0.05)
            now = time.monotonic()
            back = self.returned_at
            if back is not None and now - max(back, self.last_failure) >= spec.hold_s:
                self.stopped_by = "steady"
            elif back is not None and now - back >= spec.max_after_s:
                self.stopped_by = "limit"
            elif back is None and (self.stdin_closed or now - began >= RETURN_WAIT_S):
                self.stopped_by = "no return"
            if self.stopped_by:
                self.stop.set()

    async def run(self) -> None:
        spec, loop = self.spec, asyncio.get_running_loop()
        threading.Thread(target=self.listen, args=(loop,), daemon=True).start()
        headers = {"Authorization": f"Bearer {run.CLIENT_KEY}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{spec.port}",
            headers=headers,
            limits=httpx.Limits(max_connections=spec.clients),
            timeout=REQUEST_TIMEOUT_S,
            trust_env=False,  # never a proxy from the environment: 127.0.0.1 only
        ) as http:
            clients = [asyncio.create_task(self.client(http)) for _ in range(spec.clients)]
            await self.watch()
            await asyncio.gather(*clients)
        out = {"stopped_by": self.stopped_by, "returned_at": self.returned_at}
        out["records"] = [[round(s, 6), round(d, 6), o] for s, d, o in self.records]
        Path(spec.out).write_text(json.dumps(out, separators=(",", ":")))


# --------------------------------------------------------------------------- figures


def figures(records: list[list[Any]], down: float, back: float) -> dict[str, Any]:
    """One round's numbers from its records (send, finish, outcome); see the docstring."""
    failed = [(s, d, o) for s, d, o in records if o != OK]
    first_ok = min((d for s, d, o in records if o == OK and d >= back), default=None)
    refused = [s for s, _, _ in failed if s >= back]
    steady_at = max(refused, default=back)
    kept_up = max((s for s, _, _ in records), default=back) - steady_at
    first_failure = min((d for s, d, _ in failed if d >= down), default=None)
    held = max((d for s, d, _ in records if s < back), default=back)
    after = max((d - s for s, d, _ in records if s >= back), default=None)
    return {
        "outage_s": round(back - down, 3),
        "first_success_s": None if first_ok is None else round(first_ok - back, 3),
        "steady_s": round(steady_at - back, 3) if kept_up >= HOLD_S / 2 else None,
        "steady_held_s": round(kept_up, 3),
        "last_held_answered_s": round(max(0.0, held - back), 3),
        "slowest_after_return_s": None if after is None else round(after, 3),
        "refused_after_return": len(refused),
        "failed": len(failed),
        "ok": len(records) - len(failed),
        "failed_before_down": sum(1 for _, d, _ in failed if d < down),  # should be 0
        "first_failure_s": None if first_failure is None else round(first_failure - down, 3),
        "outcomes": dict(Counter(o for _, _, o in records)),
    }


def _spread(values: list[float | None]) -> dict[str, float | None]:
    """Median and max over rounds; a round that never got there counts as infinite."""
    known = [float("inf") if v is None else v for v in values] or [float("inf")]
    spread = {"median": float(statistics.median(known)), "max": max(known)}
    return {k: None if v == float("inf") else round(v, 3) for k, v in spread.items()}


# --------------------------------------------------------------------------- one round


@dataclass
class _Servers:
    """The fake (replaced when restarted) and the gateway of one round."""

    fake: run.Proc
    gateway: run.Proc | None  # None until it has started
    fake_argv: list[str]
    env: dict[str, str]


def gateway_toml(fake_url: str, extra: str = "") -> str:
    """The round's gateway config; `extra` is appended (e.g. a [pool] table, to check the
    scenario against a known breaker time)."""
    tokens = ", ".join(f'"{t}"' for t in UPSTREAM_TOKENS)
    return (
        f'[[upstreams]]\nname = "fake"\ntype = "acedata"\nbase_url = "{fake_url}"\n'
        f"tokens = [{tokens}]\ntimeout_seconds = 30\n\n"
        f'[[clients]]\nname = "bench"\nkey = "{run.CLIENT_KEY}"\n\n{extra}'
    )


@contextmanager
def servers(settings: run.Settings, tmp: Path, extra_toml: str = "") -> Iterator[_Servers]:
    """A fresh fake and gateway, stopped afterwards (whichever fake is current by then)."""
    env, port, gw_port = run._clean_env(), run.free_port(), run.free_port()
    argv = [sys.executable, str(run.BENCH / "fake_upstream.py"), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    config = tmp / "recovery-gateway.toml"
    config.write_text(gateway_toml(url, extra_toml))
    srv = _Servers(run.start("fake", argv, url, "/stats", tmp, env), None, argv, env)
    try:
        srv.gateway = run.start(
            "gateway",
            [*settings.gateway_cmd, "--config", str(config), "--port", str(gw_port)],
            f"http://127.0.0.1:{gw_port}",
            "/healthz",
            tmp,
            env,
        )
        yield srv
    finally:
        if srv.gateway is not None:
            srv.gateway.stop()
        srv.fake.stop()


def _stats(fake: run.Proc) -> dict[str, Any]:
    return dict(json.loads(run._get(fake.url + "/stats")))


def _outage(case: str, srv: _Servers, tmp: Path) -> tuple[float, float]:
    """Take the provider away for OUTAGE_S; (down, return) on the monotonic clock."""
    if case == "restart":
        down = time.monotonic()
        srv.fake.popen.kill()
        srv.fake.popen.wait()
        time.sleep(OUTAGE_S)
        srv.fake = run.start("fake-restarted", srv.fake_argv, srv.fake.url, "/stats", tmp, srv.env)
        return down, float(_stats(srv.fake)["listening_since"])
    req = urllib.request.Request(
        f"{srv.fake.url}/_control/errors?seconds={OUTAGE_S}", data=b"", method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        answer = json.loads(resp.read())
    return float(answer["now"]), float(answer["errors_until"])


def _wait_line(proc: subprocess.Popen[str], want: str, timeout: float) -> None:
    """Until the driver prints `want`; its stderr in the error if it does not."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready and proc.stdout.readline().strip() == want:
            return
    proc.kill()
    _, err = proc.communicate()
    raise RuntimeError(f"the recovery driver did not start serving:\n{(err or '')[-3000:]}")


def one_round(
    settings: run.Settings, tmp: Path, case: str, label: str, extra_toml: str = ""
) -> dict[str, Any]:
    """One outage of one case, on fresh processes: the round's figures."""
    out = tmp / f"recovery-{label}.json"
    with servers(settings, tmp, extra_toml) as srv:
        assert srv.gateway is not None
        port = int(srv.gateway.url.rsplit(":", 1)[1])
        spec = DriveSpec(port=port, out=str(out), prefix=f"recovery-{label}")
        driver = subprocess.Popen(
            [sys.executable, __file__, "drive", json.dumps(asdict(spec))],
            cwd=run.ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_line(driver, "running", 30)
            time.sleep(WARM_S)
            down, back = _outage(case, srv, tmp)
            assert driver.stdin is not None
            driver.stdin.write(f"return {back!r}\n")  # communicate() then closes stdin
            driver.stdin.flush()
            _, err = driver.communicate(timeout=back - time.monotonic() + MAX_AFTER_S + 120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        if driver.returncode != 0:
            raise RuntimeError(f"the recovery driver failed:\n{err[-3000:]}")
        upstream_errors = _stats(srv.fake)["errors_answered"]
    data = json.loads(out.read_text())
    result = figures(data["records"], down, back)
    result["stopped_by"] = data["stopped_by"]
    if case == "errors":
        result["upstream_errors_answered"] = upstream_errors
    return result


# --------------------------------------------------------------------------- the scenario


def scenario(settings: run.Settings, tmp: Path) -> dict[str, Any]:
    """Both cases, settings.rounds rounds each: figures per round, median and max."""
    out: dict[str, Any] = {
        "clients": CLIENTS,
        "outage_s": OUTAGE_S,
        "hold_s": HOLD_S,
        "rounds": settings.rounds,
        "cases": {},
    }
    for case in ("restart", "errors"):
        rounds = []
        for i in range(settings.rounds):
            r = one_round(settings, tmp, case, f"{case}-{i + 1}")
            print(
                f"  {case} round {i + 1}: outage {r['outage_s']} s, first success "
                f"{r['first_success_s']} s, steady {r['steady_s']} s, refused after return "
                f"{r['refused_after_return']}, failed {r['failed']}, ok {r['ok']}",
                flush=True,
            )
            rounds.append(r)
        out["cases"][case] = {
            "first_success_s": _spread([r["first_success_s"] for r in rounds]),
            "steady_s": _spread([r["steady_s"] for r in rounds]),
            "refused_after_return": _spread([r["refused_after_return"] for r in rounds]),
            "failed": sum(r["failed"] for r in rounds),
            "ok": sum(r["ok"] for r in rounds),
            "rounds": rounds,
        }
    return out


def main() -> None:
    """`recovery.py drive SPEC`: the load driver (the scenario itself runs from run.py)."""
    if len(sys.argv) != 3 or sys.argv[1] != "drive":
        raise SystemExit("usage: python bench/run.py --scenario recovery")
    uvloop.run(_Driver(DriveSpec(**json.loads(sys.argv[2]))).run())


if __name__ == "__main__":
    main()
