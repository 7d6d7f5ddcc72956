"""A fast fake AceDataCloud for the benchmark, run in its own process.

    python bench/fake_upstream.py --port 9001 --latency 0 --image-bytes 8388608

It speaks the AceDataCloud schema the gateway's `acedata` upstream speaks
(`POST /nano-banana/images` -> `{"success", "task_id", "trace_id", "data": [{"prompt",
"image_url"}]}`, errors as `{"success": false, "error": {"code", "message"}}`), answers
after `--latency` seconds without blocking, and serves one pre-built PNG of about
`--image-bytes` at every image link.

Why not the fakes in tests/support/fakes.py: those are thread-per-connection servers built
to be steered and inspected by tests. Under benchmark load they would be the bottleneck, and
2,000 waiting calls would be 2,000 threads. This one is a bare asyncio protocol on uvloop
with httptools parsing, so the gateway, not the yardstick, is what gets measured.

`GET /stats` answers how many generation calls and image downloads it served, so the
benchmark can tell whether the gateway's cache answered a request or the upstream did.
Only ever binds 127.0.0.1.

`POST /_control/errors?seconds=S` (the recovery scenario, bench/recovery.py) makes every
generation call answer HTTP 500 with AceData's error JSON for the next S seconds; it answers
`{"now", "errors_until"}` on the monotonic clock. `/stats` also says since when the process
has been listening (`listening_since`) and how many calls got such a 500 (`errors_answered`),
so a restart's or a burst's end is known exactly, not to within a polling interval.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import signal
import time
import urllib.parse
import uuid
from typing import Any, cast

import httptools
import uvloop
from PIL import Image

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    500: b"Internal Server Error",
}
_MAX_ERROR_SECONDS = 3600.0


def make_png(target_bytes: int) -> bytes:
    """A PNG of about target_bytes: random pixels stored without compression, so the
    size is what was asked for and nothing downstream can shrink it."""
    if target_bytes <= 4096:
        img = Image.new("RGB", (1024, 1024), (30, 90, 200))  # a real 1K image, tiny on the wire
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()
    side = max(1, math.ceil(math.sqrt(target_bytes / 3)))
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=0)
    return buf.getvalue()


class Stats:
    """What the fake served; read through GET /stats."""

    def __init__(self) -> None:
        self.generations = 0
        self.images = 0
        self.in_flight = 0
        self.errors_answered = 0
        self.listening_since: float | None = None  # monotonic; set once the socket listens
        self.reset_window()

    def reset_window(self) -> None:
        """Start a new measuring window (GET /stats?reset=1)."""
        self.max_in_flight = self.in_flight
        # When the first and the last generation call of the window arrived, on the
        # machine's monotonic clock: with the driver's start on the same clock, how long
        # requests took to get through the proxy to the upstream.
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None

    def arrived(self) -> None:
        now = time.monotonic()
        if self.first_arrival is None:
            self.first_arrival = now
        self.last_arrival = now
        self.generations += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "generations": self.generations,
                "images": self.images,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "first_arrival": self.first_arrival,
                "last_arrival": self.last_arrival,
                "errors_answered": self.errors_answered,
                "listening_since": self.listening_since,
            }
        ).encode()


class FakeAceData:
    """Settings and state shared by every connection."""

    def __init__(self, origin: str, latency: float, png: bytes) -> None:
        self.origin = origin
        self.latency = latency
        self.png = png
        self.png_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(png)
        )
        self.stats = Stats()
        self.errors_until = 0.0  # monotonic; generation calls before it answer 500


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (status, _REASONS.get(status, b"Error"), content_type, len(body))
        + body
    )


def _ace_error(status: int, code: str, message: str) -> bytes:
    body = {
        "success": False,
        "error": {"code": code, "message": message},
        "trace_id": str(uuid.uuid4()),
    }
    return _response(status, json.dumps(body).encode())


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection. Requests on it are answered in order."""

    def __init__(self, fake: FakeAceData) -> None:
        self.fake = fake
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.auth = b""
        # HTTP clients (aiohttp, the load driver) do not pipeline, so one request at a time
        # per connection is all there is to answer in order.
        self.body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_response(400, b"bad request", b"text/plain"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.auth = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        stats = self.fake.stats
        if method == b"GET" and path.startswith(b"/cdn/") and path.endswith(b".png"):
            stats.images += 1
            self._write(self.fake.png_head)
            self._write(self.fake.png)
        elif method == b"POST" and path == b"/nano-banana/images":
            self._generate()
        elif method == b"GET" and path == b"/stats":
            if self.url.endswith(b"?reset=1"):
                stats.reset_window()
            self._write(_response(200, stats.as_json()))
        elif method == b"POST" and path == b"/_control/errors":
            self._error_burst()
        else:
            self._write(_ace_error(404, "no_api", "The API does not exist."))

    # control
    def _error_burst(self) -> None:
        query = urllib.parse.parse_qs(self.url.partition(b"?")[2].decode("latin-1"))
        try:
            seconds = float(query["seconds"][0])
        except (KeyError, ValueError):
            seconds = -1.0
        if not 0 <= seconds <= _MAX_ERROR_SECONDS:  # also refuses nan
            self._write(_response(400, b"seconds=0..3600 is required", b"text/plain"))
            return
        now = time.monotonic()
        self.fake.errors_until = now + seconds
        answer = {"now": now, "errors_until": self.fake.errors_until}
        self._write(_response(200, json.dumps(answer).encode()))

    # the API
    def _generate(self) -> None:
        # The comparison with 0 first: the other scenarios never pay for a clock read.
        if self.fake.errors_until > 0.0 and time.monotonic() < self.fake.errors_until:
            self.fake.stats.errors_answered += 1
            self._write(_ace_error(500, "api_error", "Internal server error."))
            return
        if not self.auth.startswith(b"Bearer ") or len(self.auth) <= 7:
            self._write(_ace_error(401, "invalid_token", "The token is missing or invalid."))
            return
        try:
            body: Any = json.loads(b"".join(self.body))
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._write(_ace_error(400, "bad_request", "The request body must be JSON."))
            return
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            self._write(_ace_error(400, "bad_request", "prompt is required."))
            return
        # A missing action means generate, so the bare pass-through can forward an OpenAI
        # body unchanged: it is the floor the gateway is compared with, not a translator.
        if body.get("action", "generate") not in ("generate", "edit"):
            self._write(_ace_error(400, "bad_request", "action is invalid."))
            return
        count = body.get("count") or body.get("n") or 1
        if not isinstance(count, int) or not 1 <= count <= 4:
            self._write(_ace_error(400, "bad_request", "count is invalid."))
            return
        self.fake.stats.arrived()
        answer = {
            "success": True,
            "task_id": str(uuid.uuid4()),
            "trace_id": str(uuid.uuid4()),
            "data": [
                {
                    "prompt": prompt,
                    "image_url": f"{self.fake.origin}/cdn/nanobanana/{uuid.uuid4()}.png",
                }
                for _ in range(count)
            ],
        }
        reply = _response(200, json.dumps(answer, separators=(",", ":")).encode())
        if self.fake.latency > 0:
            asyncio.get_running_loop().call_later(self.fake.latency, self._finish, reply)
        else:
            self._finish(reply)

    def _finish(self, reply: bytes) -> None:
        self.fake.stats.in_flight -= 1
        self._write(reply)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, latency: float, image_bytes: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    fake = FakeAceData(f"http://{host}:{port}", latency, make_png(image_bytes))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(fake), host, port, backlog=4096, reuse_address=True
    )
    fake.stats.listening_since = time.monotonic()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake acedata on {fake.origin}, latency {latency}s, png {len(fake.png)} bytes")
    async with server:
        await stop.wait()


def main() -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--image-bytes", type=int, default=0, help="size of the served PNG")
    args = parser.parse_args()
    uvloop.run(serve("127.0.0.1", args.port, args.latency, args.image_bytes))


if __name__ == "__main__":
    main()
