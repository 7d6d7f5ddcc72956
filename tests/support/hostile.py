"""A hostile upstream for tests: a real HTTP server on a loopback address whose answers a
test scripts byte by byte (broken JSON, endless trickles, redirects to internal
addresses, bombs), plus a canary that only counts who connects to it.

The well-behaved providers live in tests/support/fakes.py/; this one exists for what no honest
provider sends. Like the fakes it imports nothing from the gateway and only ever binds
and talks to the loopback interface.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

Handler = BaseHTTPRequestHandler
Route = Callable[[Handler], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: HostileServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Every accepted connection, before a byte of it is read: the canary's count.
        with self.owner.lock:
            self.owner.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the gateway hanging up mid-answer is what these tests provoke


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.requests.append((self.command, path, dict(self.headers.items()), body))
            route = owner.routes.get(path)
        if route is None:
            send(self, 404, b"not here", "text/plain")
        else:
            route(self)


class HostileServer:
    """Scripted answers per path, on `host` (any 127.x address) and a free port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self._server = _Server((host, 0), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def route(self, path: str, handler: Route) -> None:
        with self.lock:
            self.routes[path] = handler

    def paths(self) -> list[str]:
        with self.lock:
            return [p for _m, p, _h, _b in self.requests]

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ------------------------------------------------------------------ answers


def send(
    h: Handler,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> None:
    """A complete answer with a Content-Length."""
    h.send_response(status)
    h.send_header("content-type", content_type)
    h.send_header("content-length", str(len(body)))
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(body)


def answer(
    status: int, body: bytes, content_type: str = "application/json", **headers: str
) -> Route:
    """A route that always gives this answer."""
    extra = {k.replace("_", "-"): v for k, v in headers.items()}
    return lambda h: send(h, status, body, content_type, extra)


def json_answer(obj: Any, status: int = 200) -> Route:
    return answer(status, json.dumps(obj).encode())


def redirect(location: str, status: int = 302) -> Route:
    return answer(status, b"", "text/plain", location=location)


def ace_success(*links: str) -> Route:
    """An AceDataCloud success whose data holds these image links."""
    return json_answer(
        {
            "success": True,
            "task_id": "task-hostile",
            "trace_id": "trace-hostile",
            "data": [{"prompt": "p", "image_url": link} for link in links],
        }
    )


def declared_but_short(length: int) -> Route:
    """Headers announcing `length` bytes, then a few bytes and a hang-up."""

    def route(h: Handler) -> None:
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(length))
        h.end_headers()
        h.wfile.write(b'{"success": true')
        h.close_connection = True

    return route


def trickle(prefix: bytes, every: float, seconds: float) -> Route:
    """A chunked answer that never ends: a byte every `every` seconds for `seconds`, so no
    single read ever waits long enough to trip a per-read timeout."""

    def route(h: Handler) -> None:
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(prefix), prefix))
        h.wfile.flush()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                time.sleep(every)
                h.wfile.write(b"1\r\n \r\n")
                h.wfile.flush()
        except OSError:
            return  # the gateway gave up: what the test wants
        h.close_connection = True

    return route


def gzip_bomb(uncompressed: int, content_type: str = "application/json") -> Route:
    """A small gzip body that inflates to `uncompressed` bytes of zeros, sent with
    Content-Encoding: gzip whatever the client asked for."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1024 * 1024)
    parts = [comp.compress(chunk) for _ in range(uncompressed // len(chunk))]
    body = b"".join(parts) + comp.flush()
    return answer(200, body, content_type, content_encoding="gzip")


def gzip_json(obj: Any) -> bytes:
    return gzip.compress(json.dumps(obj).encode())


# ------------------------------------------------------------------ images


def png(width: int = 64, height: int = 64, color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def noisy_png(width: int = 256, height: int = 256) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((width, height), 80).convert("RGB").save(out, "PNG")
    return out.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A few hundred KB of PNG claiming side x side pixels: a decompression bomb."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, "PNG")
    return out.getvalue()


def corrupt_idat_png() -> bytes:
    """A PNG whose pixel data is broken but whose chunk checksums are right: only a full
    decode notices."""
    data = bytearray(noisy_png())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    data[start + length // 2] ^= 0xFF
    crc = zlib.crc32(bytes(data[start - 4 : start + length]))
    data[start + length : start + length + 4] = crc.to_bytes(4, "big")
    return bytes(data)


def can_bind(host: str) -> bool:
    """Whether this machine lets us listen on a given loopback address."""
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False
