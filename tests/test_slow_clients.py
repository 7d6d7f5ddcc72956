"""Slow and stalled clients against `python -m gateway`: a request's head must arrive within
[server] header_timeout_seconds, its body within body_timeout_seconds, and a head over
max_header_bytes gets a 431, so stalled sockets cannot pile up until the process runs out
of file descriptors. Honest clients (slow but steady, kept-alive, pipelined, waiting on a
long answer or a stream) are unaffected.

One gateway serves the file, with bounds of seconds; every wait allows generous slack,
since only "closed eventually, and not at once" is asserted, never a precise time.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.processes import GatewayProcess

HEAD_SECONDS = 2.0
BODY_SECONDS = 2.0
# Longer than both bounds: an answer that takes this long must not be cut off.
LATENCY_SECONDS = 3.0
# How late a bound may fire on a busy machine before the test calls it "never".
SLACK = 20.0
STALLED = 3000
HALF_LINE = b"POST /v1/images/gene"

CONFIG = f"""
[[upstreams]]
name = "mock"
type = "mock"
mock_latency_seconds = {LATENCY_SECONDS}

[cache]
enabled = false

[server]
header_timeout_seconds = {HEAD_SECONDS}
body_timeout_seconds = {BODY_SECONDS}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts the gateway's descriptors in /proc")
    proc = GatewayProcess(tmp_path_factory.mktemp("slow"), CONFIG)
    yield proc
    proc.stop()


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0, timeout=60)


def connect(gw: GatewayProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_peer(s: socket.socket, timeout: float) -> bytes | None:
    """Everything the gateway sent until it closed the connection, or None if it still
    had not after `timeout` seconds."""
    s.settimeout(timeout)
    received = b""
    try:
        while chunk := s.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def raise_own_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# ------------------------------------------------------------------ stalled heads


def test_thousands_of_half_sent_request_lines_are_closed(gw: GatewayProcess) -> None:
    raise_own_file_limit(STALLED + 500)
    baseline = open_fds(gw.proc.pid)
    sockets: list[socket.socket] = []
    try:
        for _ in range(STALLED):
            s = connect(gw)
            s.sendall(HALF_LINE)
            sockets.append(s)
        opened = time.monotonic()
        # The gateway holds them (else this test would prove nothing)...
        assert wait_for(lambda: open_fds(gw.proc.pid) > baseline + STALLED // 2, 5)
        # ...and still serves everyone else meanwhile.
        image = client(gw).images.generate(prompt="while stalled", response_format="b64_json")
        assert image.data and image.data[0].b64_json

        with selectors.DefaultSelector() as selector:
            for s in sockets:
                s.setblocking(False)
                selector.register(s, selectors.EVENT_READ)
            pending = len(sockets)
            deadline = opened + HEAD_SECONDS + SLACK
            while pending and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(1024)
                    except ConnectionResetError:
                        data = b""
                    assert data == b"", data  # closed without an answer
                    selector.unregister(sock)
                    pending -= 1
        assert pending == 0, f"{pending} of {STALLED} stalled connections still open"
    finally:
        for s in sockets:
            s.close()
    # The gateway's descriptors come back down to about where they were.
    assert wait_for(lambda: open_fds(gw.proc.pid) <= baseline + 20, SLACK), (
        f"{open_fds(gw.proc.pid)} descriptors open, {baseline} before"
    )


def test_a_connection_that_sends_nothing_is_closed_after_the_head_bound(
    gw: GatewayProcess,
) -> None:
    started = time.monotonic()
    with connect(gw) as s:
        assert closed_by_peer(s, HEAD_SECONDS + SLACK) == b""
    assert time.monotonic() - started >= HEAD_SECONDS / 2  # not closed on the spot


def test_a_head_trickled_past_the_bound_is_closed(gw: GatewayProcess) -> None:
    """A byte at a time keeps an idle timer happy for ever; the head bound is not one."""
    started = time.monotonic()
    closed = False
    with connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while not closed and time.monotonic() - started < HEAD_SECONDS + SLACK:
            try:
                s.sendall(b"a")
                closed = closed_by_peer(s, 0.2) is not None
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    assert closed, "a trickling head was waited on for ever"
    assert time.monotonic() - started >= HEAD_SECONDS / 2


# ------------------------------------------------------------------ stalled body


def test_a_body_that_stops_half_way_is_closed_and_the_gateway_stays_healthy(
    gw: GatewayProcess,
) -> None:
    head = (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    with connect(gw) as s:
        s.sendall(head + b'{"prompt": "' + b"x" * 488)  # 500 of the 1000 bytes
        assert closed_by_peer(s, BODY_SECONDS + SLACK) is not None, "the body was waited on"
    assert time.monotonic() - started >= BODY_SECONDS / 2
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
    assert client(gw).images.generate(prompt="after", response_format="b64_json").data
    # The cut-off request is the caller's hang-up, recorded as such: not a 500, no traceback.
    log = gw.log()
    assert "Traceback" not in log and "ClientDisconnect" not in log
    assert '"status":499' in log and '"error_code":"client_closed_request"' in log


# ------------------------------------------------------------------ oversized heads


def test_an_oversized_head_gets_431(gw: GatewayProcess) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        r = http.get("/healthz", headers={"x-big": "a" * 100_000})
        assert r.status_code == 431
        assert r.json() == {
            "error": {
                "message": r.json()["error"]["message"],
                "type": "invalid_request_error",
                "param": None,
                "code": "request_header_too_large",
            }
        }
        assert r.headers["connection"] == "close"
        # Well under the bound is fine.
        assert http.get("/healthz", headers={"x-big": "a" * 30_000}).status_code == 200


def test_an_unfinished_header_is_refused_once_it_outgrows_the_bound(gw: GatewayProcess) -> None:
    """httptools buffers a header until its line ends: the bytes count as they arrive."""
    with connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(10):
                s.sendall(b"a" * 10_000)  # 100 KB, and the line never ends
        answer = closed_by_peer(s, SLACK)
    assert answer is not None and answer.startswith(b"HTTP/1.1 431 "), answer


# ------------------------------------------------------------------ honest clients


def test_a_slow_but_steady_request_within_the_bounds_works(gw: GatewayProcess) -> None:
    body = b'{"prompt": "slow and steady", "response_format": "b64_json"}'
    head = (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with connect(gw) as s:
        # Each part arrives in four pieces over about 0.45 s: well inside its bound.
        for part in (head, body):
            step = len(part) // 4 + 1
            for i in range(0, len(part), step):
                s.sendall(part[i : i + step])
                time.sleep(0.15)
        s.settimeout(LATENCY_SECONDS + SLACK)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_keep_alive_outlasts_the_head_bound_and_pipelining_works(gw: GatewayProcess) -> None:
    def local_port(r: httpx.Response) -> int:
        assert r.status_code == 200
        return int(r.extensions["network_stream"].get_extra_info("client_addr")[1])

    with httpx.Client(base_url=gw.url, timeout=30) as http:
        first = local_port(http.get("/healthz"))
        # Idle between requests is keep-alive's business, not the head bound's.
        time.sleep(HEAD_SECONDS + 1)
        second = local_port(http.get("/healthz"))
    assert first == second, "the second request opened a new connection"

    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(gw) as s:
        s.sendall(request * 3)
        received = b""
        while received.count(b"HTTP/1.1 200 ") < 3:
            chunk = s.recv(65536)
            assert chunk, received
            received += chunk


def test_answers_and_streams_slower_than_the_bounds_are_not_cut_off(gw: GatewayProcess) -> None:
    sdk = client(gw)
    image = sdk.images.generate(prompt="takes a while", response_format="b64_json")
    assert image.data and image.data[0].b64_json
    events = list(sdk.images.generate(prompt="streams a while", stream=True))
    assert events and events[-1].type == "image_generation.completed"


def test_a_body_may_take_its_own_bound_past_the_heads(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The head's timer goes on timing the body (one timer per request): when it fires at
    the head's bound, it sets itself again for the rest of the body's, and a body still
    inside that bound is read whole."""
    config = CONFIG.replace(
        f"header_timeout_seconds = {HEAD_SECONDS}", "header_timeout_seconds = 1.0"
    ).replace(f"body_timeout_seconds = {BODY_SECONDS}", "body_timeout_seconds = 6.0")
    proc = GatewayProcess(tmp_path_factory.mktemp("long-body"), config)
    try:
        body = b'{"prompt": "a body slower than the head bound", "response_format": "b64_json"}'
        head = (
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        started = time.monotonic()
        with connect(proc) as s:
            s.sendall(head)
            step = len(body) // 5 + 1
            for i in range(0, len(body), step):
                time.sleep(0.5)  # the last piece about 2.5 s in: past the head's 1 s
                s.sendall(body[i : i + step])
            assert time.monotonic() - started > 2.0
            s.settimeout(LATENCY_SECONDS + SLACK)
            answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    finally:
        proc.stop()
