"""The load driver, run in its own process by bench/run.py.

    python bench/load.py '{"port": 8000, "path": "/v1/images/generations", "total": 1000,
                           "concurrency": 32, "body": "{\\"prompt\\": \\"p{i}\\"}", ...}'

Prints one JSON object with counts, throughput and latency percentiles.

Each client is one keep-alive HTTP/1.1 connection sending its requests one after another;
all connections are opened before the clock starts, so what is timed is the server's
answer, not the kernel's accept queue. `{i}` in the body becomes the request's index, which
makes every prompt unique (a cache miss); a body without it sends identical requests.
With `rate` set, request i is sent no earlier than start + i / rate (an open-loop pace,
for latency well below saturation); without it, clients send as fast as answers come back.
Latency counts from the moment a request is written to the moment its answer is read.

It is a bare asyncio protocol on uvloop with httptools parsing, far cheaper per request
than any Python HTTP client library, because on two cores the driver shares the CPU with
what it measures. Only 127.0.0.1 is ever a target; every run is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import httptools
import uvloop

_HEAD_KEEP = 512  # bytes of each answer kept to check it is what was asked for


@dataclass(frozen=True)
class Spec:
    """One load run, as bench/run.py describes it."""

    port: int
    path: str
    total: int
    concurrency: int
    body: str
    headers: dict[str, str]
    expect: str  # must appear in the first bytes of every 200 answer
    min_body_bytes: int = 0
    rate: float | None = None  # requests/s in total, or None for closed loop
    timeout: float = 120.0
    host: str = "127.0.0.1"
    connect_parallel: int = 256

    @staticmethod
    def from_json(text: str) -> Spec:
        """Parse the JSON the caller passed on the command line."""
        return Spec(**json.loads(text))


class _Connection(asyncio.Protocol):
    """One client connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.head = bytearray()
        self.body_bytes = 0
        self.keep_alive = False  # what the last answer said

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"unparsable answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionError("connection closed"))

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if len(self.head) < _HEAD_KEEP:
            self.head += body[: _HEAD_KEEP - len(self.head)]

    def on_message_complete(self) -> None:
        # Read here: once the message is complete, llhttp resets and says False.
        self.keep_alive = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self.parser.get_status_code())

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes) -> asyncio.Future[int]:
        """Write one request; the future holds the answer's status."""
        assert self.transport is not None
        self.head = bytearray()
        self.body_bytes = 0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Run:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        head = (
            f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in spec.headers.items())
            + "Content-Type: application/json\r\n"
        )
        self.head = head.encode()
        before, sep, after = spec.body.partition("{i}")
        self.body_parts = (before.encode(), after.encode()) if sep else None
        self.fixed = None if sep else self._request(spec.body.encode())
        self.expect = spec.expect.encode()
        self.next_index = 0
        self.latencies: list[float] = []
        self.outcomes: Counter[str] = Counter()
        self.body_bytes = 0
        self.started = 0.0

    def _request(self, body: bytes) -> bytes:
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def request_bytes(self, index: int) -> bytes:
        if self.fixed is not None:
            return self.fixed
        assert self.body_parts is not None
        return self._request(self.body_parts[0] + str(index).encode() + self.body_parts[1])

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.spec.host, self.spec.port)
        return conn

    async def client(self, conn: _Connection, go: asyncio.Event) -> None:
        spec = self.spec
        await go.wait()
        while True:
            index = self.next_index
            if index >= spec.total:
                break
            self.next_index += 1
            if spec.rate:
                delay = self.started + index / spec.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not conn.usable:  # the server closed it after the last answer: reopen
                try:
                    conn = await self.connect()
                except OSError:
                    self.outcomes["connect_error"] += 1
                    continue
            # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds.
            began = time.perf_counter()
            outcome = await self.one(conn, index)
            self.outcomes[outcome] += 1
            if outcome == "ok":
                self.latencies.append(time.perf_counter() - began)
        conn.close()

    async def one(self, conn: _Connection, index: int) -> str:
        loop = asyncio.get_running_loop()
        waiter = conn.send(self.request_bytes(index))
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            conn.close()

        timer = loop.call_later(self.spec.timeout, expire)
        try:
            status = await waiter
        except ConnectionError:
            return "timeout" if timed_out else "connection_error"
        finally:
            timer.cancel()
        self.body_bytes += conn.body_bytes
        if not conn.keep_alive:
            conn.close()
        if status != 200:
            return f"http_{status}"
        if self.expect not in conn.head or conn.body_bytes < self.spec.min_body_bytes:
            return "unexpected_body"
        return "ok"

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        gate = asyncio.Semaphore(spec.connect_parallel)

        async def opened() -> _Connection:
            async with gate:
                return await self.connect()

        t_connect = time.perf_counter()
        conns = await asyncio.gather(*(opened() for _ in range(spec.concurrency)))
        connect_s = time.perf_counter() - t_connect
        go = asyncio.Event()
        clients = [asyncio.ensure_future(self.client(c, go)) for c in conns]
        await asyncio.sleep(0)  # every client is now waiting on the gate
        cpu0 = time.process_time()
        started_monotonic = time.monotonic()  # the clock bench/fake_upstream.py stamps with
        self.started = time.perf_counter()
        go.set()
        await asyncio.gather(*clients)
        wall = time.perf_counter() - self.started
        cpu = time.process_time() - cpu0
        return {**self.summary(wall, cpu, connect_s), "started_monotonic": started_monotonic}

    def summary(self, wall: float, cpu: float, connect_s: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        ok = self.outcomes.get("ok", 0)

        def pct(q: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, max(0, round(q * len(lat)) - 1))] * 1000, 3)

        return {
            "requests": self.spec.total,
            "ok": ok,
            "failed": self.spec.total - ok,
            "outcomes": dict(self.outcomes),
            "wall_s": round(wall, 4),
            "req_per_s": round(ok / wall, 2) if wall > 0 else None,
            "latency_ms": {
                "p50": pct(0.50),
                "p90": pct(0.90),
                "p99": pct(0.99),
                "max": pct(1.0),
                "mean": round(sum(lat) / len(lat) * 1000, 3) if lat else None,
            },
            "body_bytes": self.body_bytes,
            "connect_s": round(connect_s, 4),
            "driver_cpu_s": round(cpu, 4),
        }


def raise_fd_limit(needed: int) -> None:
    """Lift the soft open-files limit towards the hard one; say so if that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        print(f"open-files hard limit {hard} is below the {needed} needed", file=sys.stderr)


def main() -> None:
    """Command line entry: one JSON spec in, one JSON summary out."""
    spec = Spec.from_json(sys.argv[1])
    raise_fd_limit(spec.concurrency + 64)
    print(json.dumps(uvloop.run(_Run(spec).run())))


if __name__ == "__main__":
    main()
