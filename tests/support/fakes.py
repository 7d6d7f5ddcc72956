"""Genuine HTTP fakes of the Nano Banana reseller APIs, for tests.

Each :class:`FakeUpstream` is a real ``ThreadingHTTPServer`` bound to
127.0.0.1 on a free port, serving one provider's documented API
(``/work/shared/upstreams.md`` and the provider pages in ``/work/shared/seeds``):

* ``acedata``  - ``POST /nano-banana/images`` (synchronous, images in ``data[]``)
* ``xhuoapi``  - the same API under the ``/v1`` prefix
* ``defapi``   - ``POST /api/image/gen`` then ``GET /api/task/query?task_id=``

The image links they return point back at the same server (``.../cdn/...``)
and serve real PNGs whose pixel size follows Google's published tables, so a
test can check the gateway reports the true output size by decoding bytes.

Tests steer the fakes per API token with :meth:`FakeUpstream.behave` (errors,
hangs, dropped connections, malformed bodies ...) and inspect what the gateway
sent through :attr:`FakeUpstream.requests`.

Connections are kept alive as the real providers do.  ``idle_timeout`` closes
one left idle for that long (nginx's ``keepalive_timeout``), and the "stale"
behaviour closes a reused connection the instant a request arrives on it, as a
server does when its idle timer fires just as the client sends: the request
was never handled, and a client may send it again on a new connection.

Nothing here imports the ``gateway`` package: the yardstick must stay
independent of the code it measures.  Nothing here ever opens a connection to
anything but the loopback interface.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import re
import selectors
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

from PIL import Image

Kind = Literal["acedata", "xhuoapi", "defapi"]
RGB = tuple[int, int, int]

# ---------------------------------------------------------------------------
# Google's output-size tables (upstreams.md section 4)
# ---------------------------------------------------------------------------

#: gemini-2.5-flash-image ("nano-banana"): one fixed size per ratio, 1K only.
FLASH_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}

#: gemini-3-pro-image / gemini-3.1-flash-image at 1K; 2K doubles, 4K quadruples.
PRO_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}

RESOLUTION_FACTOR: dict[str, int] = {"1K": 1, "2K": 2, "4K": 4}

#: Ratios the AceData/XHuo ``aspect_ratio`` enum accepts (provider API reference).
ACEDATA_RATIOS: tuple[str, ...] = ("1:1", "3:2", "2:3", "16:9", "9:16", "4:3", "3:4")
ACEDATA_RESOLUTIONS: tuple[str, ...] = ("1K", "2K", "4K")
#: Base models; each is also accepted with an ``:official`` suffix.
ACEDATA_MODELS: tuple[str, ...] = (
    "nano-banana",
    "nano-banana-2",
    "nano-banana-pro",
    "nano-banana-2-lite",
)
#: AceData models that only ever produce the Flash 1K table.
_ACEDATA_FLASH_MODELS = frozenset({"nano-banana", "nano-banana-2-lite"})

#: Ratios defapi accepts (observed in clients); "auto" is handled separately.
DEFAPI_RATIOS: tuple[str, ...] = (
    "1:1",
    "16:9",
    "21:9",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "auto",
)
DEFAPI_IMAGE_SIZES: tuple[str, ...] = ("1k", "2k", "4k")
#: defapi model ids -> whether they use the Pro/3.1 table (True) or Flash 1K (False).
DEFAPI_MODELS: dict[str, bool] = {
    # The document lists gempix2 on its "Nano Banana Pro API" page, in every example.
    "google/gempix2": True,
    "google/gemini-2.5-flash-image": False,
    "google/nano-banana": False,
    "google/nano-banana-pro": True,
    "google/nano-banana-2": True,
    "google/gemini-3.1-flash-image-preview": True,
}
#: What defapi's own document (seeds/003) states, all a ``documented=True`` fake accepts:
#: the two ids of its "supported models" list and the four body fields of its table.
DEFAPI_DOCUMENTED_MODELS: frozenset[str] = frozenset(
    {"google/gempix2", "google/gemini-2.5-flash-image"}
)
DEFAPI_DOCUMENTED_FIELDS: frozenset[str] = frozenset({"model", "prompt", "images", "callback_url"})

#: Behaviour names accepted by :meth:`FakeUpstream.behave`, per API family.
ACEDATA_BEHAVIOURS: frozenset[str] = frozenset(
    {
        "ok",
        "invalid_token",
        "token_expired",
        "used_up",
        "forbidden",
        "rate_limit",
        "server_error",
        "bad_request",
        "timeout",
        "drop",
        "invalid_json",
        "partial",
        "slow",
        "empty",
        "stale",
        "reset",
    }
)
DEFAPI_BEHAVIOURS: frozenset[str] = frozenset(
    {
        "ok",
        "invalid_token",
        "server_error",
        "bad_request",
        "failed",
        "text_result",
        "never",
        "drop",
        "invalid_json",
        "rate_limit",
        "timeout",
        "slow",
        "stale",
    }
)
#: Behaviours of the image links (``FakeUpstream.cdn_behaviour``).
CDN_BEHAVIOURS: frozenset[str] = frozenset({"ok", "not_found", "browser_ua_only", "drop"})

#: Per-image limit of the AceData API reference ("should not exceed 10MB").
MAX_IMAGE_BYTES = 10 * 1024 * 1024

_DEFAULT_COLORS: dict[str, RGB] = {
    # A distinct colour per provider lets a test tell, from the returned
    # bytes alone, which upstream actually produced an image.
    "acedata": (30, 90, 200),
    "xhuoapi": (30, 160, 60),
    "defapi": (220, 120, 20),
}

_PREFIXES: dict[str, str] = {"acedata": "", "xhuoapi": "/v1", "defapi": ""}

# Image links look like ".../cdn/nanobanana/<uuid>.png" (acedata, xhuoapi) or
# ".../cdn/<uuid>.png" (defapi).  One pattern serves both.
_CDN_RE = re.compile(r"^(?:/v1)?/cdn/(?:nanobanana/)?([0-9a-f-]{36})\.png$")


# ---------------------------------------------------------------------------
# Image helpers (also used by tests to build uploads)
# ---------------------------------------------------------------------------

_encode_lock = threading.Lock()
_encoded: dict[tuple[str, int, int, RGB], bytes] = {}


def _encode(fmt: str, width: int, height: int, color: RGB) -> bytes:
    """Encode a solid-colour image once per (format, size, colour).

    A 4K Pro image takes a few hundred milliseconds to encode; hundreds of
    concurrent downloads must not each pay for it, so the bytes are cached and
    the encoding is serialised (a size is encoded at most once).
    """
    key = (fmt, width, height, color)
    cached = _encoded.get(key)
    if cached is not None:
        return cached
    with _encode_lock:
        cached = _encoded.get(key)
        if cached is None:
            buf = io.BytesIO()
            img = Image.new("RGB", (width, height), color)
            if fmt == "JPEG":
                img.save(buf, fmt, quality=90)
            else:
                img.save(buf, fmt)
            cached = buf.getvalue()
            _encoded[key] = cached
        return cached


def png_bytes(width: int, height: int, color: RGB = (200, 30, 30)) -> bytes:
    """A solid-colour PNG of the given pixel size (cached, cheap to call)."""
    return _encode("PNG", width, height, tuple(color))  # type: ignore[arg-type]


def jpeg_bytes(width: int, height: int, color: RGB = (200, 30, 30)) -> bytes:
    """A solid-colour JPEG of the given pixel size (cached, cheap to call)."""
    return _encode("JPEG", width, height, tuple(color))  # type: ignore[arg-type]


def webp_bytes(width: int, height: int, color: RGB = (200, 30, 30)) -> bytes:
    """A solid-colour WebP of the given pixel size (cached, cheap to call)."""
    return _encode("WEBP", width, height, tuple(color))  # type: ignore[arg-type]


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` as the providers accept in ``image_urls``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _ratio_value(ratio: str) -> float:
    w, h = ratio.split(":")
    return int(w) / int(h)


def nearest_ratio(width: int, height: int, allowed: tuple[str, ...] = ACEDATA_RATIOS) -> str:
    """The allowed ratio closest to width/height (compared on a log scale,
    so 2:1 and 1:2 are equally far from 1:1)."""
    target = math.log(width / height)
    return min(
        (r for r in allowed if r != "auto"),
        key=lambda r: abs(math.log(_ratio_value(r)) - target),
    )


def _uses_pro_table(model: str) -> bool:
    """Whether a model (AceData or defapi spelling) follows the Pro/3.1 table."""
    if model in DEFAPI_MODELS:
        return DEFAPI_MODELS[model]
    base = model.removesuffix(":official")
    if base not in ACEDATA_MODELS:
        raise ValueError(f"unknown model {model!r}")
    return base not in _ACEDATA_FLASH_MODELS


def expected_size(model: str, aspect_ratio: str = "1:1", resolution: str = "1K") -> tuple[int, int]:
    """Pixel size (width, height) the fakes produce for a generate request.

    ``model`` may be an AceData name (``nano-banana-pro``, ``...:official``)
    or a defapi id (``google/nano-banana-pro``); ``resolution`` is
    case-insensitive (``2K`` / ``2k``).  Flash models ignore the resolution,
    exactly as the providers document ("1K only").
    """
    if _uses_pro_table(model):
        w, h = PRO_1K[aspect_ratio]
        factor = RESOLUTION_FACTOR[resolution.upper()]
        return w * factor, h * factor
    return FLASH_1K[aspect_ratio]


def _nearest_resolution(long_side: int) -> str:
    """The Pro-table tier whose output is closest to an input image's size;
    used for ``edit`` where AceData says resolution follows the first image."""
    base = 1024
    return min(
        RESOLUTION_FACTOR,
        key=lambda r: abs(math.log(long_side / (base * RESOLUTION_FACTOR[r]))),
    )


class _BadImage(ValueError):
    """A ``data:`` URI that is not a decodable image."""


class _TooLarge(ValueError):
    """A ``data:`` image above the documented 10 MB limit."""


def _decode_data_uri_size(uri: str) -> tuple[int, int]:
    """Pixel size of a ``data:image/...;base64,`` URI, or raise _BadImage."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:") or ";base64" not in header:
        raise _BadImage("not a base64 data URI")
    try:
        raw = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _BadImage("bad base64") from exc
    if len(raw) > MAX_IMAGE_BYTES:
        raise _TooLarge("image larger than 10MB")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return img.size
    except Exception as exc:  # Pillow raises a zoo of types for junk input
        raise _BadImage("not an image") from exc


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the fake received it (recorded before it is answered)."""

    method: str
    path: str  # path only, without the query string
    query: dict[str, str]  # last value wins for repeated keys
    headers: dict[str, str]  # lower-case names
    token: str | None  # from "Authorization: Bearer X" (scheme case-insensitive)
    json: Any | None  # parsed body, None when absent or not JSON
    time: float  # time.monotonic() at arrival
    body: bytes = field(default=b"", repr=False)  # raw request body
    reused: bool = False  # the connection had carried an earlier request


def _bearer_token(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# ---------------------------------------------------------------------------
# Behaviour plans
# ---------------------------------------------------------------------------


@dataclass
class _Plan:
    """Behaviours for one token: consumed one per call, the last one repeats."""

    steps: list[str]
    options: dict[str, Any]

    def next(self) -> str:
        if len(self.steps) > 1:
            return self.steps.pop(0)
        return self.steps[0]


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the socket without writing anything
    reset: bool = False  # write the head and half the body, then reset the connection


def _json_reply(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(obj).encode(), headers=dict(headers or {}))


def _trace_id() -> str:
    return str(uuid.uuid4())


@dataclass
class _DefapiTask:
    task_id: str
    token: str
    mode: str  # "ok" | "failed" | "text_result" | "never"
    size: tuple[int, int]
    not_found_polls: int
    pending_polls: int
    options: dict[str, Any]
    polls: int = 0
    image_id: str | None = None  # created on the first successful poll, then stable
    extra_ids: list[str] = field(default_factory=list)  # "extra_images": more than asked
    stale_dropped: int = 0  # polls dropped for arriving on a reused connection


class _ClientGone(Exception):
    """The client hung up (or the fake is stopping) while we were sleeping."""


# ---------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Don't join handler threads on close: a handler stuck in a "timeout"
    # sleep would otherwise make stop() hang.  stop() shuts every connection
    # down, which also wakes sleeping handlers, so threads end promptly anyway.
    block_on_close = False
    # Hundreds of clients may connect at the same instant; the default backlog
    # of 5 would make the kernel refuse/reset some of them.
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeUpstream) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-answer (timeouts, drops) are expected in
        # these tests; tracebacks for them would only bury real failures.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | _ClientGone):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients keep connections alive the way they do against the
    # real providers; every answer therefore carries Content-Length.
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        #: requests this connection has carried so far
        self.served = 0
        self._waiting(True)
        self.server.fake._track_connection(self.connection, add=True)

    def _waiting(self, idle: bool) -> None:
        """Arm the idle timer while waiting for a request, disarm it while handling one.

        With a socket timeout, ``handle_one_request`` gives up on a request line
        that does not come in time and the connection is closed, as nginx's
        ``keepalive_timeout`` does.  It is off while a request is handled, so a
        slow body read, a "timeout" sleep or a long answer is never cut short.
        """
        idle_timeout = self.server.fake.idle_timeout
        if idle_timeout is not None:
            self.connection.settimeout(idle_timeout if idle else None)

    def finish(self) -> None:
        self.server.fake._track_connection(self.connection, add=False)
        with contextlib.suppress(OSError):  # the client already went away
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output readable

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Skip trailers up to the blank line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        fake = self.server.fake
        arrived = time.monotonic()
        self._waiting(False)
        reused = self.served > 0
        self.served += 1
        body = self._read_body()
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        parsed: Any | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        rec = Recorded(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            token=_bearer_token(headers.get("authorization")),
            json=parsed,
            time=arrived,
            body=body,
            reused=reused,
        )
        fake._record(rec)

        is_cdn = _CDN_RE.match(split.path) is not None
        # Concurrency is measured on API calls only: image downloads are a
        # separate phase and would blur "how many generations ran at once".
        if not is_cdn:
            fake._enter(rec.token)
        try:
            try:
                reply = fake._respond(rec, self._sleep)
            except _ClientGone:
                reply = _Reply(0, drop=True)
        finally:
            # Leave before the answer is written: once the client has read it, it may send
            # its next request at once, and that must not overlap this one in the count.
            if not is_cdn:
                fake._leave(rec.token)
        self._write(reply)
        self._waiting(True)

    def _write(self, reply: _Reply) -> None:
        if reply.drop:
            # No status line, no headers: the client sees the connection close
            # with nothing received (httpx: RemoteProtocolError).
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if reply.reset:
            # Half the answer, then an RST (SO_LINGER 0): the client sees the connection
            # reset in the middle of reading the body.
            self.wfile.write(reply.body[: len(reply.body) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.wfile.write(reply.body)

    def _sleep(self, seconds: float) -> None:
        """Sleep, but give up as soon as the client disconnects or the fake
        stops.  Without this a "timeout" behaviour would pin a thread (and
        count as in flight) for 30 s after the gateway has long given up."""
        if seconds <= 0:
            return
        fake = self.server.fake
        deadline = time.monotonic() + seconds
        # One blocking wait for the whole delay, woken early only when the
        # socket turns readable: a hang-up (EOF/RST), or stop() shutting the
        # socket down.  No periodic polling: with hundreds of sleeping threads
        # polling would saturate the GIL and slow the test process itself.
        # selectors (epoll) rather than select.select, because with hundreds
        # of sockets open, descriptors can exceed select()'s FD_SETSIZE.
        with selectors.DefaultSelector() as sel:
            sel.register(self.connection, selectors.EVENT_READ)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if not sel.select(remaining):
                return  # slept the full delay
        if fake._stopping.is_set():
            raise _ClientGone
        try:
            peek = self.connection.recv(1, socket.MSG_PEEK)
        except OSError as exc:
            raise _ClientGone from exc
        if not peek:
            raise _ClientGone  # orderly close by the client
        # Bytes of a pipelined next request (no client in these tests does
        # that): just finish the delay without watching the socket.
        time.sleep(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------


class FakeUpstream:
    """A real HTTP server imitating one provider, for the duration of a test.

    >>> with FakeUpstream("acedata") as up:
    ...     up.behave("k1", ["server_error", "ok"])
    ...     # point the gateway at up.base_url with token "k1" ...

    ``default`` is the behaviour of tokens never passed to :meth:`behave`; a
    list default is copied per token (each new token walks it from the start).
    ``latency`` delays every successful API answer (not image downloads).
    ``idle_timeout`` closes a keep-alive connection that carried no request
    for that many seconds (None: never).
    """

    HOST: ClassVar[str] = "127.0.0.1"

    def __init__(
        self,
        kind: str,
        *,
        default: str | list[str] = "ok",
        latency: float = 0.0,
        default_options: Mapping[str, Any] | None = None,
        image_color: RGB | None = None,
        idle_timeout: float | None = None,
        documented: bool = False,
    ) -> None:
        if kind not in _PREFIXES:
            raise ValueError(f"kind must be acedata, xhuoapi or defapi, not {kind!r}")
        self.kind: str = kind
        #: documented-minimum mode: accept and honour only what the provider's own document
        #: (../shared/seeds/) states; otherwise also what public clients are observed to use
        self.documented: bool = documented
        self.latency: float = latency
        #: Seconds an idle keep-alive connection stays open (None: until the
        #: client closes it).  Read as each connection waits: set it at any time.
        self.idle_timeout: float | None = idle_timeout
        self.image_color: RGB = image_color or _DEFAULT_COLORS[kind]
        #: Behaviour of image links: "ok", "not_found" (404), "browser_ua_only"
        #: (403 unless the User-Agent contains "Mozilla/", as observed on some
        #: defapi links) or "drop".  Plain attribute: set it at any time.
        self.cdn_behaviour: str = "ok"
        #: Whether image links honour ``Range: bytes=a-b`` (206 with those bytes, as
        #: CDNs do); False answers 200 with the whole image, as some hosts do.
        self.cdn_ranges: bool = True
        #: Seconds each image link waits before answering (a slow CDN).
        self.cdn_latency: float = 0.0
        self._default = self._check_steps(default)
        self._default_options: dict[str, Any] = dict(default_options or {})
        self._prefix = _PREFIXES[kind]

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: Every request received, in arrival order (append-only while running).
        self.requests: list[Recorded] = []
        self._plans: dict[str, _Plan] = {}
        self._images: dict[str, tuple[int, int]] = {}
        self._tasks: dict[str, _DefapiTask] = {}
        self._in_flight = 0
        self._in_flight_by_token: dict[str | None, int] = {}
        self._max_concurrent = 0
        self._max_by_token: dict[str | None, int] = {}

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Bind 127.0.0.1 and serve in a daemon thread.

        The first start picks a free port; a restart after :meth:`stop`
        re-binds the same port, so ``base_url`` stays valid and a test can
        simulate an upstream going down and coming back.
        """
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.HOST, self._port or 0), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self.kind}-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection (keep-alive included),
        so the port refuses connections afterwards."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port else "not started"
        return f"<FakeUpstream {self.kind} {where}>"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeUpstream not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` (no API prefix)."""
        return f"http://{self.HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the gateway should be configured with for this provider:
        ``http://127.0.0.1:PORT`` (acedata, defapi) or ``.../v1`` (xhuoapi)."""
        return self.origin + self._prefix

    @property
    def submit_path(self) -> str:
        """Path of the generation call: ``/nano-banana/images``,
        ``/v1/nano-banana/images`` or ``/api/image/gen``."""
        if self.kind == "defapi":
            return "/api/image/gen"
        return self._prefix + "/nano-banana/images"

    # -- steering ----------------------------------------------------------

    def _check_steps(self, behaviour: str | list[str]) -> list[str]:
        steps = [behaviour] if isinstance(behaviour, str) else list(behaviour)
        if not steps:
            raise ValueError("behaviour list must not be empty")
        allowed = DEFAPI_BEHAVIOURS if self.kind == "defapi" else ACEDATA_BEHAVIOURS
        unknown = [s for s in steps if s not in allowed]
        if unknown:
            raise ValueError(f"unknown {self.kind} behaviour(s) {unknown}; use {sorted(allowed)}")
        return steps

    def behave(self, token: str, behaviour: str | list[str], **options: Any) -> None:
        """Set what calls made with ``token`` get.

        A list is consumed one item per generation call (acedata/xhuoapi
        ``POST .../nano-banana/images``, defapi ``POST /api/image/gen``); its
        last item then repeats.  ``options`` apply to every item:

        * ``retry_after`` (rate_limit): header value, default 1; None omits it
        * ``sleep`` (timeout: default 30 s, slow: default 1 s)
        * ``message`` (acedata errors): override the error message
        * ``detail`` (defapi bad_request): override the detail text
        * ``not_found_polls`` / ``pending_polls`` (defapi, default 1 / 1)
        * ``reason`` (defapi failed), ``text`` (defapi text_result)
        * ``refused_polls`` (defapi, default 0): after the not-found ones, that many polls
          answer 401 although the submit with the same token was accepted
        * ``extra_images`` (defapi, default 0): a successful task returns that many images
          beyond the one it was asked for
        * ``vague`` (defapi, default False): every refused submit's detail is just
          "invalid request", naming no field
        * ``stale_polls`` (defapi, default 0): that many of each task's polls
          that arrive on a reused connection are dropped like "stale" (not
          counted as polls), so the client's re-send must carry on

        "stale" consumes its step like any other: when the call came on a
        connection that had carried an earlier request, the connection is
        closed without a byte of answer (as "drop"); on a fresh connection it
        answers as "ok".  Either way the call is recorded, with
        :attr:`Recorded.reused` telling which it was.

        "reset" (acedata/xhuoapi) makes the images, sends the answer's head and
        half its body, then resets the connection.
        """
        steps = self._check_steps(behaviour)
        with self._lock:
            self._plans[token] = _Plan(steps, dict(options))

    def _next_step(self, token: str) -> tuple[str, dict[str, Any]]:
        with self._lock:
            plan = self._plans.get(token)
            if plan is None:
                plan = _Plan(list(self._default), dict(self._default_options))
                self._plans[token] = plan
            return plan.next(), dict(plan.options)

    # -- inspection --------------------------------------------------------

    def _record(self, rec: Recorded) -> None:
        with self._changed:
            self.requests.append(rec)
            self._changed.notify_all()

    def calls(self, token: str | None = None, path: str | None = None) -> list[Recorded]:
        """Recorded requests, optionally filtered by token and/or path.

        ``path`` matches the exact request path, or the path after the
        provider prefix, so ``calls(path="/nano-banana/images")`` works for
        xhuoapi (whose real path is ``/v1/nano-banana/images``) too.
        """
        with self._lock:
            recs = list(self.requests)
        return [r for r in recs if self._matches(r, token, path)]

    def generation_calls(self, token: str | None = None) -> list[Recorded]:
        """Calls to the generation/submit endpoint (see :attr:`submit_path`)."""
        return self.calls(token=token, path=self.submit_path)

    def _matches(self, rec: Recorded, token: str | None, path: str | None) -> bool:
        if token is not None and rec.token != token:
            return False
        return path is None or rec.path in (path, self._prefix + path)

    def wait_for_requests(
        self,
        count: int,
        *,
        token: str | None = None,
        path: str | None = None,
        timeout: float = 5.0,
    ) -> list[Recorded]:
        """Block until at least ``count`` matching requests arrived (e.g. to
        cancel a client while its request is known to be in flight)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [r for r in self.requests if self._matches(r, token, path)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self!r}: {len(matching)} of {count} requests after {timeout}s"
                    )
                self._changed.wait(remaining)

    def reset(self) -> None:
        """Forget recorded requests and the concurrency high-water marks.
        Behaviours, issued images and defapi tasks are kept."""
        with self._lock:
            self.requests.clear()
            self._max_concurrent = self._in_flight
            self._max_by_token = dict(self._in_flight_by_token)

    @property
    def max_concurrent(self) -> int:
        """Most API requests (image downloads excluded) in flight at once."""
        with self._lock:
            return self._max_concurrent

    def max_concurrent_for(self, token: str | None) -> int:
        """Most API requests carrying ``token`` in flight at once."""
        with self._lock:
            return self._max_by_token.get(token, 0)

    @property
    def in_flight(self) -> int:
        """API requests being handled right now."""
        with self._lock:
            return self._in_flight

    def _enter(self, token: str | None) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_concurrent = max(self._max_concurrent, self._in_flight)
            n = self._in_flight_by_token.get(token, 0) + 1
            self._in_flight_by_token[token] = n
            self._max_by_token[token] = max(self._max_by_token.get(token, 0), n)

    def _leave(self, token: str | None) -> None:
        with self._lock:
            self._in_flight -= 1
            self._in_flight_by_token[token] -= 1

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # -- images ------------------------------------------------------------

    def _issue_image(self, size: tuple[int, int]) -> str:
        image_id = str(uuid.uuid4())
        with self._lock:
            self._images[image_id] = size
        return image_id

    def _image_url(self, image_id: str) -> str:
        if self.kind == "defapi":
            return f"{self.origin}/cdn/{image_id}.png"
        return f"{self.base_url}/cdn/nanobanana/{image_id}.png"

    def _serve_image(self, rec: Recorded, image_id: str) -> _Reply:
        behaviour = self.cdn_behaviour
        with self._lock:
            size = self._images.get(image_id)
        if rec.method != "GET" or size is None or behaviour == "not_found":
            return _Reply(404, b"Not Found", content_type="text/plain")
        if behaviour == "drop":
            return _Reply(0, drop=True)
        if (
            behaviour == "browser_ua_only"
            and "mozilla/" not in rec.headers.get("user-agent", "").lower()
        ):
            return _Reply(403, b"Forbidden", content_type="text/plain")
        if self.cdn_latency:
            time.sleep(self.cdn_latency)
        data = png_bytes(*size, color=self.image_color)
        wanted = self._byte_range(rec.headers.get("range"), len(data))
        if wanted is None or not self.cdn_ranges:
            return _Reply(200, data, content_type="image/png")
        first, last = wanted
        return _Reply(
            206,
            data[first : last + 1],
            content_type="image/png",
            headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"},
        )

    @staticmethod
    def _byte_range(header: str | None, length: int) -> tuple[int, int] | None:
        """(first, last) byte of a single ``bytes=first-[last]`` range within
        ``length``; None for no header, or one this fake does not serve as a range
        (suffix or multiple ranges: RFC 9110 lets a server answer those whole)."""
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", (header or "").strip())
        if m is None:
            return None
        first = int(m.group(1))
        last = min(int(m.group(2)) if m.group(2) else length - 1, length - 1)
        return (first, last) if first <= last else None

    # -- dispatch ----------------------------------------------------------

    def _respond(self, rec: Recorded, sleep: Callable[[float], None]) -> _Reply:
        cdn = _CDN_RE.match(rec.path)
        if cdn:
            return self._serve_image(rec, cdn.group(1))
        if self.kind == "defapi":
            return self._defapi(rec, sleep)
        return self._acedata(rec, sleep)

    # -- acedata / xhuoapi -------------------------------------------------

    @staticmethod
    def _ace_error(
        status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> _Reply:
        body = {
            "success": False,
            "error": {"code": code, "message": message},
            "trace_id": _trace_id(),
        }
        return _json_reply(status, body, headers)

    def _acedata(self, rec: Recorded, sleep: Callable[[float], None]) -> _Reply:
        if rec.path == self._prefix + "/nano-banana/tasks" and rec.method == "POST":
            # Documented, but its answer shape is not; rather than invent one
            # the gateway could come to depend on, say so loudly.
            return self._ace_error(
                400, "api_not_implemented", "The fake does not implement /nano-banana/tasks."
            )
        if rec.path != self._prefix + "/nano-banana/images" or rec.method != "POST":
            return self._ace_error(404, "no_api", "The API does not exist.")
        if rec.token is None:
            return self._ace_error(401, "invalid_token", "The token is missing or invalid.")

        step, opts = self._next_step(rec.token)
        msg = opts.get("message")
        if step == "invalid_token":
            return self._ace_error(401, "invalid_token", msg or "The token is invalid.")
        if step == "token_expired":
            return self._ace_error(401, "token_expired", msg or "The token has expired.")
        if step == "used_up":
            return self._ace_error(
                403, "used_up", msg or "Your balance is used up, please recharge."
            )
        if step == "forbidden":
            return self._ace_error(
                403, "forbidden", msg or "The model refused to generate this content."
            )
        if step == "rate_limit":
            retry_after = opts.get("retry_after", 1)
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            return self._ace_error(
                429, "too_many_requests", msg or "Too many requests, please slow down.", headers
            )
        if step == "server_error":
            return self._ace_error(500, "api_error", msg or "Internal server error.")
        if step == "bad_request":
            return self._ace_error(400, "bad_request", msg or "model is invalid.")
        if step == "drop" or (step == "stale" and rec.reused):
            return _Reply(0, drop=True)
        if step == "invalid_json":
            return _Reply(200, b'{"success": true, "data": [{"image_url": ')

        # ok / partial / slow / timeout / empty / stale: a real generation attempt,
        # so the request must be valid first (validation answers fast).
        problem = self._ace_validate(rec.json)
        if problem is not None:
            return problem
        body: dict[str, Any] = rec.json  # type: ignore[assignment]

        delay = self.latency
        if step == "slow":
            delay += float(opts.get("sleep", 1))
        elif step == "timeout":
            delay += float(opts.get("sleep", 30))
        sleep(delay)

        size = self._ace_output_size(body)
        # The reference's schema has no ``count``: documented, every call makes one image.
        count = 1 if self.documented else int(body.get("count") or 1)
        if step == "partial":
            count = 1  # documented: data holds only the sub-jobs that succeeded
        elif step == "empty":
            count = 0
        data = [
            {"prompt": body["prompt"], "image_url": self._image_url(self._issue_image(size))}
            for _ in range(count)
        ]
        reply = _json_reply(
            200,
            {"success": True, "task_id": str(uuid.uuid4()), "trace_id": _trace_id(), "data": data},
        )
        reply.reset = step == "reset"
        return reply

    def _ace_validate(self, body: Any) -> _Reply | None:
        """Check a request body against the AceData API reference."""

        def bad(message: str) -> _Reply:
            return self._ace_error(400, "bad_request", message)

        if not isinstance(body, dict):
            return bad("The request body must be a JSON object.")
        action = body.get("action")
        if action is None:
            return bad("action is required.")
        if action not in ("generate", "edit"):
            return bad("action is invalid.")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return bad("prompt is required.")
        model = body.get("model")
        if model is not None and (
            not isinstance(model, str) or model.removesuffix(":official") not in ACEDATA_MODELS
        ):
            return bad("model is invalid.")
        image_urls = body.get("image_urls")
        if image_urls is not None and (
            not isinstance(image_urls, list)
            or not all(isinstance(u, str) and u for u in image_urls)
        ):
            return bad("image_urls is invalid.")
        if action == "edit" and not image_urls:
            return bad("image_urls is required when action is edit.")
        for i, url in enumerate(image_urls or []):
            if url.startswith("data:"):
                try:
                    _decode_data_uri_size(url)
                except _TooLarge:
                    return self._ace_error(
                        413, "request_too_large", f"image_urls[{i}] exceeds 10MB."
                    )
                except _BadImage:
                    return bad(f"image_urls[{i}] is not a valid image.")
            elif not url.startswith(("http://", "https://")):
                return bad(f"image_urls[{i}] is invalid.")
        aspect_ratio = body.get("aspect_ratio")
        if aspect_ratio is not None and aspect_ratio not in ACEDATA_RATIOS:
            return bad("aspect_ratio is invalid.")
        resolution = body.get("resolution")
        if resolution is not None and resolution not in ACEDATA_RESOLUTIONS:
            return bad("resolution is invalid.")
        count = body.get("count")
        if (
            not self.documented  # not in the reference: ignored, whatever it says
            and count is not None
            and (not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 4)
        ):
            return bad("count is invalid.")
        callback_url = body.get("callback_url")
        if callback_url is not None:
            # The real API would answer at once and POST the result to a public
            # URL later; a loopback-only fake cannot honour that, so refuse
            # loudly instead of silently answering synchronously.
            return self._ace_error(
                400, "api_not_implemented", "The fake does not implement callback_url."
            )
        return None

    def _ace_output_size(self, body: dict[str, Any]) -> tuple[int, int]:
        model = body.get("model") or "nano-banana"
        pro = _uses_pro_table(model)
        # Documented: resolution "only works when model is nano-banana-pro"; others
        # make 1K whatever is asked (nano-banana-2 included, though its table has 2K).
        sized = model.removesuffix(":official") == "nano-banana-pro" if self.documented else pro
        if body["action"] == "edit":
            # Documented: for edit, ratio and resolution follow the first
            # image.  The fake can only look inside data: URIs (it never goes
            # to the internet), so http(s) links count as 1:1 at 1K.
            first = body["image_urls"][0]
            if first.startswith("data:"):
                w, h = _decode_data_uri_size(first)
                ratio = nearest_ratio(w, h, ACEDATA_RATIOS)
                resolution = _nearest_resolution(max(w, h)) if sized else "1K"
            else:
                ratio, resolution = "1:1", "1K"
        else:
            ratio = body.get("aspect_ratio") or "1:1"
            resolution = (body.get("resolution") or "1K") if sized else "1K"
        return expected_size(model, ratio, resolution)

    # -- defapi ------------------------------------------------------------

    @staticmethod
    def _def_bad(detail: str) -> _Reply:
        return _json_reply(400, {"code": 1, "message": "failed", "detail": detail})

    def _defapi(self, rec: Recorded, sleep: Callable[[float], None]) -> _Reply:
        if rec.path == "/api/image/gen" and rec.method == "POST":
            return self._defapi_submit(rec, sleep)
        if rec.path == "/api/task/query" and rec.method == "GET":
            return self._defapi_query(rec, sleep)
        return _json_reply(404, {"code": 1, "message": "not found"})

    def _defapi_submit(self, rec: Recorded, sleep: Callable[[float], None]) -> _Reply:
        unauthorized = _json_reply(401, {"code": 1, "message": "Invalid API key"})
        if rec.token is None:
            return unauthorized
        step, opts = self._next_step(rec.token)
        if step == "invalid_token":
            return unauthorized
        if step == "server_error":
            return _json_reply(500, {"code": 1, "message": "internal server error"})
        if step == "bad_request":
            return self._def_bad(opts.get("detail", "model is not supported"))
        if step == "rate_limit":
            retry_after = opts.get("retry_after", 1)
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            return _json_reply(429, {"code": 1, "message": "rate limited"}, headers)
        if step == "drop" or (step == "stale" and rec.reused):
            return _Reply(0, drop=True)
        if step == "invalid_json":
            return _Reply(200, b'{"code": 0, "message": "ok", "data": {"task_id": ')

        body = rec.json
        problem = self._defapi_validate(body)
        if problem is None and self.documented:
            problem = self._defapi_documented(body)
        if problem is not None and opts.get("vague"):
            problem = self._def_bad("invalid request")
        if problem is not None:
            return problem
        assert isinstance(body, dict)

        delay = self.latency
        if step == "slow":
            delay += float(opts.get("sleep", 1))
        elif step == "timeout":
            delay += float(opts.get("sleep", 30))
        sleep(delay)

        model: str = body["model"]
        ratio = body.get("aspect_ratio") or "1:1"
        if ratio == "auto":
            ratio = "1:1"
            images = body.get("images") or []
            if images and images[0].startswith("data:"):
                ratio = nearest_ratio(*_decode_data_uri_size(images[0]), DEFAPI_RATIOS)
        size = expected_size(model, ratio, body.get("image_size") or "1k")

        mode = step if step in ("failed", "text_result", "never") else "ok"
        task = _DefapiTask(
            task_id="ta" + str(uuid.uuid4()),
            token=rec.token,
            mode=mode,
            size=size,
            not_found_polls=int(opts.get("not_found_polls", 1)),
            pending_polls=int(opts.get("pending_polls", 1)),
            options=opts,
        )
        with self._lock:
            self._tasks[task.task_id] = task
        return _json_reply(200, {"code": 0, "message": "ok", "data": {"task_id": task.task_id}})

    def _defapi_validate(self, body: Any) -> _Reply | None:
        if not isinstance(body, dict):
            return self._def_bad("invalid request body")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return self._def_bad("prompt is required")
        model = body.get("model")
        if model is None or model == "":
            return self._def_bad("model is required")
        if model not in DEFAPI_MODELS:
            return self._def_bad(f"model {model} is not supported")
        images = body.get("images")
        if images is not None:
            if not isinstance(images, list) or not all(isinstance(u, str) and u for u in images):
                return self._def_bad("images: must be an array of strings")
            if len(images) > 4:
                return self._def_bad("images: at most 4")
            for i, url in enumerate(images):
                if url.startswith("data:"):
                    try:
                        _decode_data_uri_size(url)
                    except ValueError:
                        return self._def_bad(f"images[{i}]: invalid image")
                elif not url.startswith(("http://", "https://")):
                    return self._def_bad(f"images[{i}]: invalid url")
        aspect_ratio = body.get("aspect_ratio")
        if aspect_ratio is not None and aspect_ratio not in DEFAPI_RATIOS:
            return self._def_bad("aspect_ratio is invalid")
        image_size = body.get("image_size")
        if image_size is not None and image_size not in DEFAPI_IMAGE_SIZES:
            return self._def_bad("image_size is invalid")
        callback_url = body.get("callback_url")
        if callback_url is not None and not isinstance(callback_url, str):
            return self._def_bad("callback_url is invalid")
        # A callback_url is accepted and ignored: the task can still be
        # polled, and the fake never calls out.
        return None

    def _defapi_documented(self, body: dict[str, Any]) -> _Reply | None:
        """Refuse what the document does not state, worded as an API might."""
        unknown = sorted(set(body) - DEFAPI_DOCUMENTED_FIELDS)
        if unknown:
            return self._def_bad(f"unknown field: {unknown[0]}")
        if body["model"] not in DEFAPI_DOCUMENTED_MODELS:
            return self._def_bad("model not supported")
        if any(url.startswith("data:") for url in body.get("images") or []):
            return self._def_bad("images must be URLs")
        return None

    def _defapi_query(self, rec: Recorded, sleep: Callable[[float], None]) -> _Reply:
        if rec.token is None:
            # Sic: the documented 401 of this endpoint says "code": 401,
            # unlike the submit endpoint's "code": 1.
            return _json_reply(401, {"code": 401, "message": "Invalid API key"})
        task_id = rec.query.get("task_id")
        if not task_id:
            return self._def_bad("task_id is required")
        not_found = _json_reply(404, {"code": 1, "message": "task not found"})
        with self._lock:
            task = self._tasks.get(task_id)
            # Another account's task is as good as unknown.
            if task is None or task.token != rec.token:
                return not_found
            if rec.reused and task.stale_dropped < int(task.options.get("stale_polls", 0)):
                task.stale_dropped += 1
                return _Reply(0, drop=True)
            task.polls += 1
            polls = task.polls
            if polls <= task.not_found_polls:
                # Observed right after submit: the task is not visible yet.
                return not_found
            refused = int(task.options.get("refused_polls", 0))
            if polls <= task.not_found_polls + refused:
                # An auth hiccup of the query, for a token whose submit was accepted.
                return _json_reply(401, {"code": 401, "message": "Invalid API key"})
            finished = polls > task.not_found_polls + refused + task.pending_polls
            if finished and task.mode == "ok" and task.image_id is None:
                task.image_id = str(uuid.uuid4())
                self._images[task.image_id] = task.size
                task.extra_ids = [
                    str(uuid.uuid4()) for _ in range(int(task.options.get("extra_images", 0)))
                ]
                for extra in task.extra_ids:
                    self._images[extra] = task.size

        data: dict[str, Any] = {
            "task_id": task.task_id,
            "status": "in_progress",
            "result": None,
            "consumed": "0",
            "status_reason": {"message": None},
        }
        if finished and task.mode == "ok":
            assert task.image_id is not None
            data.update(
                status="success",
                consumed="0.500000",
                result=[{"image": self._image_url(i)} for i in (task.image_id, *task.extra_ids)],
            )
        elif finished and task.mode == "text_result":
            # Observed: "success" whose result is text, i.e. no image at all.
            data.update(
                status="success",
                consumed="0.500000",
                result=[{"text": task.options.get("text", "I can't make that")}],
            )
        elif finished and task.mode == "failed":
            data.update(
                status="failed",
                status_reason={"message": task.options.get("reason", "content rejected")},
            )
        sleep(self.latency)
        if self.documented:
            # Only the callback payload's shape is documented: the task itself, unwrapped.
            return _json_reply(200, data)
        return _json_reply(200, {"code": 0, "message": "ok", "data": data})
