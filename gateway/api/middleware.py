"""ASGI middleware: request ids on every answer, and the shutdown deadline for image calls.

Both are pure ASGI (no body buffering), so streams stay streams.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ShuttingDown
from ..shutdown import Shutdown
from .errors import openai_error
from .responses import error_event, error_response

_REQUEST_ID = b"x-request-id"
_CONTENT_TYPE = b"content-type"


def new_request_id() -> str:
    """A fresh id for one request, as the answer's `x-request-id` carries it."""
    return "req_" + secrets.token_hex(12)


def stamp(message: Message, request_id: bytes) -> None:
    """Set `x-request-id` on an `http.response.start` message (replacing one already there)."""
    headers = message.get("headers")
    if headers is None:
        message["headers"] = [(_REQUEST_ID, request_id)]
        return
    if not isinstance(headers, list):
        headers = message["headers"] = list(headers)
    for i, (name, _value) in enumerate(headers):
        if name == _REQUEST_ID:
            headers[i] = (_REQUEST_ID, request_id)
            return
    headers.append((_REQUEST_ID, request_id))


def _stamping(send: Send, request_id: bytes) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            stamp(message, request_id)
        await send(message)

    return send_with_id


class RequestIdMiddleware:
    """Every answer carries `x-request-id`, errors and streams included.

    When the next layer is the shutdown middleware (as app.py stacks them), that one
    stamps the id: each message of an answer then passes one send wrapper, not two (a
    wrapper is a closure and an await per message, on every request).

    Both middlewares hand back the next layer's coroutine rather than awaiting it in one
    of their own: a coroutine frame less that every waiting request holds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._delegated = isinstance(app, ShutdownMiddleware)
        if isinstance(app, ShutdownMiddleware):
            app.request_ids = True

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if self._delegated or scope["type"] != "http":
            return self.app(scope, receive, send)
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        return self.app(scope, receive, _stamping(send, request_id.encode()))


_SHUTTING_DOWN = openai_error(ShuttingDown())


class ShutdownMiddleware:
    """Image requests during shutdown: new ones are refused with 503; ones still running
    when the grace period ends are cancelled and answered with 503 (or, when their SSE
    stream has already begun, with an SSE error event), never with silence."""

    def __init__(
        self, app: ASGIApp, shutdown: Shutdown, paths: Sequence[str], *, request_ids: bool = False
    ) -> None:
        self.app = app
        self.shutdown = shutdown
        self.paths = tuple(paths)
        #: also give every answer its `x-request-id` (RequestIdMiddleware's job, handed
        #: over when it sits right outside this one)
        self.request_ids = request_ids

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        request_id = b""
        if self.request_ids:
            text = new_request_id()
            scope.setdefault("state", {})["request_id"] = text
            request_id = text.encode()
        if not scope["path"].startswith(self.paths):
            return self.app(scope, receive, _stamping(send, request_id) if request_id else send)
        if self.shutdown.begun:
            reply = _stamping(send, request_id) if request_id else send
            return error_response(_SHUTTING_DOWN)(scope, receive, reply)
        return self._image_call(scope, receive, send, request_id)

    async def _image_call(
        self, scope: Scope, receive: Receive, send: Send, request_id: bytes
    ) -> None:
        started = finished = cut = False
        streaming = False

        async def tracked_send(message: Message) -> None:
            nonlocal started, finished, streaming
            if cut:
                return  # the answer now belongs to the cut-off path below
            if message["type"] == "http.response.start":
                started = True
                if request_id:
                    stamp(message, request_id)
                streaming = _content_type(message).startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        # No task of its own per request: the serving task is cancelled at the cutoff
        # (Shutdown.track) and, if that is why it was cancelled, answers the 503 itself.
        task = asyncio.current_task()
        assert task is not None
        self.shutdown.track(task)
        try:
            await self.app(scope, receive, tracked_send)
            return
        except asyncio.CancelledError:
            if not self.shutdown.cut_off:
                raise
            task.uncancel()
        finally:
            self.shutdown.untrack(task)

        cut = True
        if finished:
            return
        err = _SHUTTING_DOWN
        if not started:
            reply = _stamping(send, request_id) if request_id else send
            await error_response(err)(scope, receive, reply)
        elif streaming:
            await send(
                {"type": "http.response.body", "body": error_event(err).encode(), "more_body": True}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _content_type(message: Message) -> bytes:
    for name, value in message.get("headers", ()):
        if name == _CONTENT_TYPE:
            return bytes(value)
    return b""
