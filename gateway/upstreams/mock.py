"""The offline mock: draws a real placeholder PNG of the size the job asks for.

For trying the gateway without any token. It answers with data: URIs; the service turns
those into links served by the gateway itself when the caller wants URLs.
"""

from __future__ import annotations

import asyncio
import uuid

from ..models import MODELS, nearest_aspect_ratio, produced_size
from ..shape.media import placeholder_png, to_data_uri
from ..types import Job
from .base import Upstream, UpstreamResult
from .forms import Field


class MockUpstream(Upstream):
    """`type = "mock"`."""

    kind = "mock"
    max_count_per_call = 10
    default_fields = frozenset(Field)  # it draws whatever it is asked for

    def __init__(self, name: str, *, latency: float = 0.0) -> None:
        super().__init__(name, {m: m for m in MODELS})
        self._latency = latency

    async def run(self, job: Job, token: str) -> UpstreamResult:
        """Draw job.count placeholders off the event loop."""
        if self._latency:
            await asyncio.sleep(self._latency)
        ratio = job.aspect_ratio
        if ratio is None and job.action == "edit":
            ratio = _first_image_ratio(job.images)
        width, height = produced_size(job.model, ratio, job.resolution)
        png = await asyncio.to_thread(placeholder_png, width, height, job.prompt)
        uri = to_data_uri(png, "image/png")
        return UpstreamResult(images=[uri] * job.count, task_id=f"mock-{uuid.uuid4()}")


def _first_image_ratio(images: tuple[str, ...]) -> str | None:
    from ..shape.media import decode_data_uri, image_size

    if not images:
        return None
    try:
        decoded = decode_data_uri(images[0])
    except ValueError:
        return None
    if decoded is None:
        return None
    size = image_size(decoded[0])
    return nearest_aspect_ratio(*size) if size else None
