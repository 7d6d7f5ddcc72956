"""POST /v1/images/generations and /v1/images/edits: read the wire, run the pipeline,
render its answer as JSON, as JSON pieces (b64_json) or as server-sent events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import DomainError
from ..pipeline import Answer, Caller, Context, ImagePipeline
from ..shape.netguard import UrlPolicy
from ..shape.store import ImageStore
from ..types import ImageRequest
from . import parse
from .auth import bearer
from .errors import openai_error
from .headers import allow_partial, policy_for
from .responses import (
    DONE,
    KEEPALIVE,
    ImagesJSONResponse,
    PartsResponse,
    completed_event,
    error_event,
    error_response,
    images_b64_parts,
    images_body,
    result_headers,
)

_EVENT_KIND = {"generations": "image_generation", "edits": "image_edit"}


class _MeteredStream(StreamingResponse):
    """A stream whose images are given up on if its body never started (the caller hung
    up before the first byte), so the request is metered and its limits released."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None], **kw: Any):
        super().__init__(events, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class _Endpoint:
    """One image endpoint as a bare ASGI app. Starlette wraps a function endpoint in two
    more layers (a closure each, and one per message sent, to look up exception handlers):
    three coroutine frames that every waiting request would hold, and a little CPU for
    every request. A domain error is answered here; anything else is answered by the
    middleware that calls it (api/middleware.py `Front`), which also stamps the request id."""

    __slots__ = ("endpoint", "endpoints")

    def __init__(self, endpoints: ImageEndpoints, endpoint: str) -> None:
        self.endpoints = endpoints
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await self.endpoints.answer(request, self.endpoint)
        except DomainError as err:
            response = error_response(openai_error(err, self.endpoints.secrets))
        await response(scope, receive, send)


class ImageEndpoints:
    """The two image endpoints, over one pipeline."""

    def __init__(
        self,
        pipeline: ImagePipeline,
        store: ImageStore,
        *,
        url_policy: UrlPolicy,
        upload_max_bytes: int,
        keepalive_seconds: float,
        secrets: Iterable[str],
    ) -> None:
        self._pipeline = pipeline
        self._store = store
        self._url_policy = url_policy
        self._upload_max_bytes = upload_max_bytes
        self._keepalive = keepalive_seconds
        self.secrets = tuple(secrets)

    def route(self, endpoint: str) -> ASGIApp:
        """POST /v1/images/{endpoint} (`generations` or `edits`) as its route's app."""
        return _Endpoint(self, endpoint)

    async def answer(self, request: Request, endpoint: str) -> Response:
        """The answer to POST /v1/images/{endpoint}; raises a DomainError."""
        body: Any
        if endpoint == "generations":
            body = _read_generation(request)  # awaited once the caller is admitted
        else:
            body = parse.parse_edit(
                request, max_bytes=self._upload_max_bytes, policy=self._url_policy
            )
        context = Context(
            endpoint,
            request_id=getattr(request.state, "request_id", None),
            policy=policy_for(request.headers, client_allows=True),
            allow_partial=allow_partial(request.headers),
        )
        answer = await self._pipeline.run(Caller(key=bearer(request)), body, context)
        if answer.output.stream:
            return await self._stream(request, answer, _EVENT_KIND[endpoint])
        result = answer.result
        assert result is not None  # not a stream: made already
        if answer.output.response_format == "b64_json":
            return PartsResponse(
                images_b64_parts(result, answer.output),
                headers=result_headers(result, answer.output),
            )
        return ImagesJSONResponse(
            # The base URL is only built when the gateway hosts an image.
            images_body(result, answer.output, self._store, lambda: str(request.base_url)),
            headers=result_headers(result, answer.output),
        )

    async def _stream(self, request: Request, answer: Answer, kind: str) -> Response:
        """SSE answer. A request that fails before the first keep-alive is due still gets a
        plain error status, so SDK apps see the same exception class as without stream."""
        make, output = answer.images, answer.output
        assert make is not None  # a stream: its images are still being made
        try:
            await asyncio.wait_for(asyncio.shield(make), timeout=self._keepalive)
        except TimeoutError:
            pass  # still working: the stream starts with keep-alives
        except asyncio.CancelledError:
            make.cancel()
            answer.delivered(False)
            raise
        except Exception:
            answer.delivered(True)  # answered as a plain error, as without stream
            raise
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        if output.size_adjusted is not None:  # known before the images are
            headers["x-gateway-size-adjusted"] = output.size_adjusted
        if make.done():
            headers.update(result_headers(make.result(), output))
        keepalive = self._keepalive
        secrets = self.secrets

        async def events() -> AsyncIterator[str]:
            sent = False
            try:
                while not make.done():
                    done, _ = await asyncio.wait({make}, timeout=keepalive)
                    if not done:
                        yield KEEPALIVE
                try:
                    result = make.result()
                except DomainError as err:
                    sent = True  # the error is the answer
                    yield error_event(openai_error(err, secrets))
                    return
                created = int(time.time())
                for image in result.images:
                    yield completed_event(kind, image, output, created)
                sent = True
                yield DONE
            finally:
                if not make.done():
                    make.cancel()  # the caller hung up: stop waiting on the upstream
                answer.delivered(sent)

        def closed() -> None:
            # A no-op when events() got to its end; otherwise the body never ran.
            if not make.done():
                make.cancel()
            answer.delivered(False)

        return _MeteredStream(events(), closed, media_type="text/event-stream", headers=headers)


async def _read_generation(request: Request) -> ImageRequest:
    return parse.parse_generation(await parse.read_json(request))
