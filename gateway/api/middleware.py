"""ASGI middleware: request ids on every answer, and the shutdown deadline for image calls.

Both are pure ASGI (no body buffering), so streams stay streams.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ShuttingDown
from ..shutdown import Shutdown
from .errors import openai_error
from .responses import error_event, error_response


class RequestIdMiddleware:
    """Every answer carries `x-request-id`, errors and streams included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


_SHUTTING_DOWN = openai_error(ShuttingDown())


class ShutdownMiddleware:
    """Image requests during shutdown: new ones are refused with 503; ones still running
    when the grace period ends are cancelled and answered with 503 (or, when their SSE
    stream has already begun, with an SSE error event), never with silence."""

    def __init__(self, app: ASGIApp, shutdown: Shutdown, paths: Sequence[str]) -> None:
        self.app = app
        self.shutdown = shutdown
        self.paths = tuple(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        if self.shutdown.begun:
            await error_response(_SHUTTING_DOWN)(scope, receive, send)
            return

        started = finished = cut = False
        streaming = False

        async def tracked_send(message: Message) -> None:
            nonlocal started, finished, streaming
            if cut:
                return  # the answer now belongs to the cut-off path below
            if message["type"] == "http.response.start":
                started = True
                content_type = MutableHeaders(scope=message).get("content-type", "")
                streaming = content_type.startswith("text/event-stream")
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
            await error_response(err)(scope, receive, send)
        elif streaming:
            await send(
                {"type": "http.response.body", "body": error_event(err).encode(), "more_body": True}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
