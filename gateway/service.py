"""Making a caller's images: split n into upstream calls, run them through the pool, and
bring the results into the form the caller asked for.

This is where the request's pieces meet; it knows neither the OpenAI wire format (api/)
nor any provider's JSON (upstreams/).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from .errors import GatewayError
from .fetch import Fetcher
from .media import reencode
from .pool import Pool
from .translate import error_for, split_count
from .types import ImagesResult, Job, Output, ProducedImage
from .upstreams.base import UpstreamError, UpstreamResult

T = TypeVar("T")


class ImageService:
    """Runs jobs on the pool and shapes their images."""

    def __init__(
        self, pool: Pool, fetcher: Fetcher, *, deadline_seconds: float, secrets: Iterable[str]
    ) -> None:
        self.pool = pool
        self.fetcher = fetcher
        self._deadline_seconds = deadline_seconds
        self._secrets = tuple(secrets)

    async def make(self, job: Job, output: Output, *, allow_partial: bool) -> ImagesResult:
        """All n images, or (only if allowed) the ones that could be made.

        Images an upstream call did not return (a provider may return fewer than asked)
        are asked for once more before the request counts as short.
        """
        deadline = time.monotonic() + self._deadline_seconds
        per_call = self.pool.max_count_per_call(job)
        result = ImagesResult(images=[])
        made: list[tuple[str, str]] = []  # (image link, upstream name)
        errors: list[BaseException] = []
        for _round in range(2):
            missing = job.count - len(made)
            if missing <= 0 or time.monotonic() >= deadline:
                break
            calls = [job.with_count(c) for c in split_count(missing, per_call)]
            outcomes = await _outcomes([self.pool.run(c, deadline) for c in calls])
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    if isinstance(outcome, asyncio.CancelledError):
                        raise outcome
                    errors.append(outcome)
                    continue
                upstream_result, slot = outcome
                self._note_ids(result, upstream_result)
                made += [(link, slot.upstream.name) for link in upstream_result.images]
            if any(_callers_fault(e) for e in errors):
                break
        made = made[: job.count]

        if len(made) < job.count and (not made or not allow_partial):
            first = self._as_gateway_error(errors[0]) if errors else None
            if first is not None and (not made or _callers_fault(errors[0])):
                raise first
            cause = f" Cause: {first.message}" if first is not None else ""
            raise GatewayError(
                502,
                f"The upstreams made {len(made)} of the {job.count} images asked for; send the "
                f"header 'x-gateway-allow-partial: true' to accept fewer.{cause}",
                type="server_error",
                code="partial_result",
            )

        result.upstreams = [name for _, name in made]
        if len(made) == 1:  # the common case, without a task per image
            result.images = [await self.shape(made[0][0], output)]
        else:
            result.images = list(
                await asyncio.gather(*(self.shape(link, output) for link, _ in made))
            )
        return result

    async def shape(self, link: str, output: Output) -> ProducedImage:
        """Download / re-encode one image as the answer needs it."""
        needs_bytes = (
            output.response_format == "b64_json"
            or output.stream
            or output.output_format not in (None, "png")
            or link.startswith("data:")
        )
        if not needs_bytes:
            return ProducedImage(url=link, size=output.expected_size)
        target = output.output_format
        # Decode every pixel only where a re-encode may follow (see Fetcher.get).
        data, info = await self.fetcher.get(link, decode=target is not None)
        mime = info.mime
        wanted_mime = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}.get(
            target or ""
        )
        if target is not None and (mime != wanted_mime or output.output_compression is not None):
            data = await asyncio.to_thread(reencode, data, target, output.output_compression)
            mime = wanted_mime or mime
        return ProducedImage(
            url=link if not link.startswith("data:") else None,
            data=data,
            mime=mime,
            size=info.size,  # a re-encode keeps the pixels, so the size read on download
        )

    @staticmethod
    def _note_ids(result: ImagesResult, upstream_result: UpstreamResult) -> None:
        if upstream_result.task_id:
            result.task_ids.append(upstream_result.task_id)
        if upstream_result.trace_id:
            result.trace_ids.append(upstream_result.trace_id)

    def _as_gateway_error(self, exc: BaseException) -> GatewayError:
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, UpstreamError):
            return error_for(exc, self._secrets)
        raise exc


def _callers_fault(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamError):
        return exc.kind.callers_fault
    return isinstance(exc, GatewayError) and 400 <= exc.status < 500 and exc.status != 429


async def _outcomes(calls: list[Coroutine[Any, Any, T]]) -> list[T | BaseException]:
    """Each call's result or exception, as gather(return_exceptions=True) gives them; one
    call is awaited in place, since a task per call is most of the cost of a fast request."""
    if len(calls) == 1:
        try:
            return [await calls[0]]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return [exc]
    return list(await asyncio.gather(*calls, return_exceptions=True))
