"""The gateway's one ASGI middleware: request ids on every answer, image calls straight to
their endpoints, and the shutdown deadline for them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ShuttingDown
from ..shutdown import Shutdown
from .errors import INTERNAL, openai_error
from .responses import error_event, error_response

_REQUEST_ID = b"x-request-id"
_CONTENT_TYPE = b"content-type"


def new_request_id() -> str:
    """A fresh id for one request, as the answer's `x-request-id` carries it. Unique, not
    secret (it is in logs and answers): drawn from `random`, seeded once per process from
    the OS, rather than a system call per request as `secrets` makes."""
    return f"req_{random.getrandbits(96):024x}"


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


_SHUTTING_DOWN = openai_error(ShuttingDown())


class Front:
    """The gateway's one middleware, outside all of Starlette's own layers.

    - Every HTTP answer carries `x-request-id` (errors and streams included), and
      `request.state.request_id` holds it.
    - `POST` to an image endpoint goes straight to that endpoint's app: Starlette's error
      layer, exception layer, router and route would add five calls to every image
      request and three send wrappers to each message of its answer (about a tenth of a
      cache hit's CPU), for nothing an image endpoint needs (it answers its own domain
      errors). Anything unexpected is answered here as Starlette's error layer would: a
      500 when the answer has not begun, and raised on for the server to log.
    - Image calls during shutdown: new ones are refused with 503; ones still running when
      the grace period ends are cancelled and answered with 503 (or, when their SSE
      stream has already begun, with an SSE error event), never with silence.
    - Everything else goes on to the Starlette app.

    Pure ASGI (no body buffering), so streams stay streams. It hands back the next layer's
    coroutine rather than awaiting it in one of its own: a coroutine frame less that every
    waiting request holds."""

    def __init__(self, app: ASGIApp, shutdown: Shutdown, images: Mapping[str, ASGIApp]) -> None:
        self.app = app
        self.shutdown = shutdown
        #: path -> the app answering `POST` to it
        self.images = dict(images)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        text = new_request_id()
        scope.setdefault("state", {})["request_id"] = text
        request_id = text.encode()
        endpoint = self.images.get(scope["path"]) if scope["method"] == "POST" else None
        if endpoint is None:
            return self.app(scope, receive, _stamping(send, request_id))
        if self.shutdown.begun:
            return error_response(_SHUTTING_DOWN)(scope, receive, _stamping(send, request_id))
        return self._image_call(endpoint, scope, receive, send, request_id)

    async def _image_call(
        self, endpoint: ASGIApp, scope: Scope, receive: Receive, send: Send, request_id: bytes
    ) -> None:
        started = finished = cut = False
        streaming = False

        async def tracked_send(message: Message) -> None:
            nonlocal started, finished, streaming
            if cut:
                return  # the answer now belongs to the cut-off path below
            if message["type"] == "http.response.start":
                started = True
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
            await endpoint(scope, receive, tracked_send)
            return
        except asyncio.CancelledError:
            if not self.shutdown.cut_off:
                raise
            task.uncancel()
        except Exception:
            if not started:
                reply = _stamping(send, request_id)
                await error_response(INTERNAL)(scope, receive, reply)
            raise
        finally:
            self.shutdown.untrack(task)

        cut = True
        if finished:
            return
        err = _SHUTTING_DOWN
        if not started:
            await error_response(err)(scope, receive, _stamping(send, request_id))
        elif streaming:
            await send(
                {"type": "http.response.body", "body": error_event(err).encode(), "more_body": True}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class FrontedStarlette(Starlette):
    """Starlette with a Front outside its own layers (`front` makes it from them)."""

    def __init__(self, *, front: Callable[[ASGIApp], ASGIApp], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._front = front

    def build_middleware_stack(self) -> ASGIApp:
        """Starlette's layers (built on the first call), behind the front."""
        return self._front(super().build_middleware_stack())


def _content_type(message: Message) -> bytes:
    for name, value in message.get("headers", ()):
        if name == _CONTENT_TYPE:
            return bytes(value)
    return b""
