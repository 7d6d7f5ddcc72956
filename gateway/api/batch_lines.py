"""One line of a batch through the image pipeline, as its owner: the line's body parsed as
the endpoint parses a request body, the pipeline run with the owner's limits, cache, pool
and meter, and what came back written as the line's output or error record.

What is worth another try is not written: a rate or concurrency refusal (the line waits
its turn, as the owner's own interactive requests would), no capacity just now, or the
gateway shutting down. The runner (batch/runner.py) retries those (see Retry) and, after
a few tries of the capacity kind, writes the last error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..admission.clients import ANONYMOUS_CLIENT
from ..batch.records import failure_record, response_record
from ..batch.runner import Retry
from ..batch.store import BatchRecord, Line, Outcome
from ..config import ClientConfig
from ..errors import (
    CapacityTimeout,
    DomainError,
    LimitExceeded,
    LimitsUnavailable,
    NoCapacity,
    ShuttingDown,
    Unauthenticated,
    invalid,
)
from ..pipeline import Caller, Context, ImagePipeline
from ..shape.netguard import UrlPolicy
from ..shape.store import ImageStore
from ..types import ImageRequest
from . import parse
from .errors import openai_error
from .middleware import new_request_id
from .responses import images_body

ENDPOINTS: Mapping[str, str] = {
    "/v1/images/generations": "generations",
    "/v1/images/edits": "edits",
}


def parse_line(endpoint: str, body: str, *, max_bytes: int, policy: UrlPolicy) -> ImageRequest:
    """A line's body as the endpoint would read it (an InvalidParameter naming what is
    wrong). Edits take the JSON form, images as data URIs or links."""
    data: Any = json.loads(body)  # stored lines are JSON objects (checked at validation)
    if data.get("stream"):
        raise invalid("stream", "Streaming is not available in a batch: leave 'stream' out.")
    if ENDPOINTS[endpoint] == "generations":
        return parse.parse_generation(data)
    return parse.parse_edit_json(data, max_bytes=max_bytes, policy=policy)


def retry_for(err: DomainError) -> tuple[float, bool] | None:
    """(seconds to wait, whether the try counts) for an error worth another try; None for
    one that is the line's answer. Pure; table-tested."""
    if isinstance(err, LimitExceeded):
        # A daily limit will not lift within the batch's tries: that is the line's answer.
        return None if err.daily else (max(0.05, err.retry_after), False)
    if isinstance(err, NoCapacity):
        return float(max(1, err.retry_after)), True
    if isinstance(err, CapacityTimeout | LimitsUnavailable):
        return 1.0, True
    if isinstance(err, ShuttingDown):
        return 0.0, False
    return None


class LineRunner:
    """Runs one line of a batch; see the module's doc."""

    def __init__(
        self,
        pipeline: ImagePipeline,
        clients: Iterable[ClientConfig],
        store: ImageStore,
        *,
        url_policy: UrlPolicy,
        upload_max_bytes: int,
        base_url: Callable[[], str],
        secrets: Iterable[str],
    ) -> None:
        self._pipeline = pipeline
        self._clients = {c.name: c for c in clients}
        self._store = store
        self._policy = url_policy
        self._max_bytes = upload_max_bytes
        self._base_url = base_url
        self._secrets = tuple(secrets)

    async def __call__(self, batch: BatchRecord, line: Line) -> Outcome | Retry:
        request_id = new_request_id()
        try:
            request = await asyncio.to_thread(
                parse_line,
                batch.endpoint,
                line.body,
                max_bytes=self._max_bytes,
                policy=self._policy,
            )
            caller = Caller(client=self._owner(batch.owner))
            context = Context(batch.endpoint, request_id=request_id, batch=batch.id)
            answer = await self._pipeline.run(caller, request, context)
            result = answer.result
            assert result is not None  # a line is never a stream
            body = images_body(result, answer.output, self._store, self._base_url)
            return Outcome(line.index, True, response_record(line.custom_id, request_id, 200, body))
        except DomainError as err:
            shown = openai_error(err, self._secrets)
            record = failure_record(line.custom_id, request_id, shown.status, shown.body())
            failed = Outcome(line.index, False, record)
            again = retry_for(err)
            if again is None:
                return failed
            return Retry(again[0], again[1], failed, stop=isinstance(err, ShuttingDown))

    def _owner(self, name: str) -> ClientConfig:
        """The batch's owner as configured now (its limits and models as they are today)."""
        if not self._clients:  # an open gateway: every batch is the anonymous client's
            return ANONYMOUS_CLIENT
        client = self._clients.get(name)
        if client is None:
            raise Unauthenticated(
                f"The batch's owner '{name}' is no longer a configured client of this gateway."
            )
        return client
