"""The image pipeline: one request, from the calling client to its metered answer.

    admit      who is calling (admission/clients); refused if known to be over its rate
    translate  the parsed OpenAI request -> a Job (what to make) and an Output (its shape)
    reserve    every limit at once (admission/limits): rate, concurrency, and the day's
               images and budget for the n asked for (or a stored answer when those are
               used up)
    cache      an identical request stored or in flight?          (cache/layer.py)
    fan out    n -> upstream calls, one refill round              (fanout.py)
    pool       a token, retries elsewhere                         (pool/)
    upstream   the provider's API                                 (upstreams/)
    shape      links passed on, bytes downloaded / re-encoded     (shape/)
    meter      metrics, limits settled, usage log                 (metering/meter.py)

Nothing here knows HTTP: the API layer reads the wire into an ImageRequest, calls `run`,
and renders what comes back (or the domain error raised) as JSON, pieces or SSE. The batch
runner puts a line of a JSONL file through the same method.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .admission.clients import ClientAuth, check_model
from .admission.limits import Limiter
from .cache import CachePolicy, ImageCache
from .config import ClientConfig, ImagesConfig
from .errors import DomainError, LimitExceeded
from .metering.meter import Meter, Record
from .models import base_model
from .translate import build_job
from .types import ImageRequest, ImagesResult, Job, Output

_USE = CachePolicy("use")
_BYPASS = CachePolicy("bypass")


@dataclass(frozen=True)
class Caller:
    """Who is asking: a key the pipeline checks, or a client already known (the owner of a
    batch, say)."""

    key: str | None = None
    client: ClientConfig | None = None


@dataclass(frozen=True)
class Context:
    """How the request arrived: its endpoint and id, what the caller allows the cache to
    do, whether fewer images than asked are acceptable (None: the configured default), and
    the batch it is a line of (None: an interactive request)."""

    endpoint: str
    request_id: str | None = None
    policy: CachePolicy = _USE
    allow_partial: bool | None = None
    batch: str | None = None


def _metered_already(delivered: bool) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request came to: the job, the answer's shape, and its images.

    `result` holds the images, made already (and the request metered), except for a
    stream: then `images` is their future, still being made (cancel it when the caller
    goes away), and whoever delivers the stream calls `delivered(True)` once it has sent
    the last event, or `delivered(False)` when the caller went away first; the request is
    metered then, with the time to its last byte."""

    job: Job
    output: Output
    result: ImagesResult | None = None
    images: asyncio.Future[ImagesResult] | None = None
    delivered: Callable[[bool], None] = _metered_already


class ImagePipeline:
    """The stages of an image request, in order."""

    def __init__(
        self,
        *,
        auth: ClientAuth,
        limiter: Limiter,
        cache: ImageCache,
        meter: Meter,
        images: ImagesConfig,
    ) -> None:
        self._auth = auth
        self._limiter = limiter
        self._cache = cache
        self._meter = meter
        self._images = images

    async def run(
        self, caller: Caller, request: ImageRequest | Awaitable[ImageRequest], context: Context
    ) -> Answer:
        """Admit, translate and make the images of one request; raises a DomainError.

        `request` may still be on its way (the body not read yet): it is awaited only once
        the caller is admitted, so a caller over its rate costs little.
        """
        record = self._meter.begin(context.endpoint, context.request_id, context.batch)
        pending = request if not isinstance(request, ImageRequest) else None
        streaming = False
        try:
            client = self._admit(caller, record)
            if isinstance(request, ImageRequest):
                req = request
            else:
                pending, req = None, await request
            job, output = self._translate(req, client, record)
            policy = context.policy if client.cache else _BYPASS
            stored = await self._reserve(record, job, output, policy)
            allow_partial = self._images.allow_partial
            if context.allow_partial is not None:
                allow_partial = context.allow_partial
            if output.stream:
                streaming = True
                images = self._stream(record, job, output, stored, policy, allow_partial)
                return Answer(
                    job, output, images=images, delivered=lambda ok: self._delivered(record, ok)
                )
            record.result = stored or await self._cache.make(
                job, output, allow_partial=allow_partial, policy=policy
            )
            return Answer(job, output, record.result)
        except DomainError as err:
            record.error = err
            raise
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        finally:
            if pending is not None:
                _close(pending)  # refused before the body was read
            if not streaming:
                settling = self._meter.finish(record)
                if settling is not None:
                    # The shared limits hear of the end before the caller does (see settle).
                    await asyncio.shield(settling)

    def _admit(self, caller: Caller, record: Record) -> ClientConfig:
        client = caller.client or self._auth.identify(caller.key)
        record.client = client.name
        # Before the body is read: a client known to be over its rate costs little.
        record.lease = self._limiter.admit(client)
        return client

    def _translate(
        self, req: ImageRequest, client: ClientConfig, record: Record
    ) -> tuple[Job, Output]:
        record.model_requested = req.model
        job, output = build_job(
            req,
            default_model=self._images.default_model,
            aliases=self._images.aliases,
            strict_size=self._images.strict_size,
        )
        record.model, record.job = base_model(job.model), job
        record.size, record.stream = req.size, output.stream
        check_model(client, job.model)
        return job, output

    async def _reserve(
        self, record: Record, job: Job, output: Output, policy: CachePolicy
    ) -> ImagesResult | None:
        """Hold the day's limits for the job; a stored answer when they are used up, since
        a hit costs nothing (LimitExceeded when there is none)."""
        assert record.lease is not None
        stored = None
        try:
            await self._limiter.reserve(record.lease, job.count, self._meter.estimate(job))
        except LimitExceeded as err:
            if not err.daily:
                raise  # over its rate or concurrency: not even a stored answer
            stored = await self._cache.stored(job, output, policy)
            if stored is None:
                raise
        self._meter.admitted(record)
        return stored

    def _stream(
        self,
        record: Record,
        job: Job,
        output: Output,
        stored: ImagesResult | None,
        policy: CachePolicy,
        allow_partial: bool,
    ) -> asyncio.Future[ImagesResult]:
        """A stream's images, made in a task of their own so the answer can start (with
        keep-alives) before they exist."""
        images: asyncio.Future[ImagesResult]
        if stored is not None:
            images = asyncio.get_running_loop().create_future()
            images.set_result(stored)
        else:
            images = asyncio.ensure_future(
                self._cache.make(job, output, allow_partial=allow_partial, policy=policy)
            )
        images.add_done_callback(lambda done: self._settle(record, done))
        return images

    def _settle(self, record: Record, done: asyncio.Future[ImagesResult]) -> None:
        """A stream's images are done: note how, for when its delivery ends."""
        if done.cancelled():
            record.cancelled = True
        elif isinstance(done.exception(), DomainError):
            record.error = done.exception()  # type: ignore[assignment]
        elif done.exception() is None:
            record.result = done.result()

    def _delivered(self, record: Record, ok: bool) -> None:
        """A stream has ended: sent whole, or its caller gone (metered as such, with the
        images the upstreams made for it, which are paid for either way)."""
        if not ok:
            record.cancelled = True
        self._meter.finish(record)


def _close(pending: Awaitable[ImageRequest]) -> None:
    close = getattr(pending, "close", None)
    if close is not None:
        close()
