"""OpenAI's Batches API for the image endpoints: a JSONL file of image requests run in the
background (gateway/batch/runner.py), its answers collected in an output file.

    POST /v1/batches                  input_file_id, endpoint, completion_window, metadata
    GET  /v1/batches                  ?after=&limit=
    GET  /v1/batches/{batch_id}
    POST /v1/batches/{batch_id}/cancel

A batch is created `validating` and its input is read by a runner, as OpenAI does: a file
that does not validate fails the batch, with errors naming its lines. A client sees only
its own batches; the admin key sees (and may cancel) every client's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..admission.clients import ClientAuth
from ..batch.objects import batch_object, list_object
from ..batch.open import StoreKeeper
from ..batch.records import batch_id
from ..batch.store import BatchRecord, BatchStore, Update
from ..errors import Conflict, Forbidden, NotFound, invalid
from .batch_lines import ENDPOINTS
from .files import query_limit, ready, visible
from .parse import read_json

WINDOWS = {"24h": 24 * 3600}  # completion_window -> seconds (OpenAI offers 24h only)
_FIELDS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)
_CANCELLABLE = ("validating", "in_progress")
MAX_METADATA = 16


def check_metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's metadata rules: at most 16 pairs, keys up to 64 and values up to 512
    characters, strings only. Pure."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise invalid("metadata", f"'metadata' must be an object of at most {MAX_METADATA} pairs.")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise invalid(
                "metadata",
                "'metadata' keys are strings of at most 64 characters and its values strings "
                "of at most 512.",
            )
    return dict(value)


def check_create(data: Mapping[str, Any]) -> tuple[str, str, str, dict[str, str] | None]:
    """(input_file_id, endpoint, completion_window, metadata) of a create body, or a 400
    naming the parameter. Pure."""
    for name in data:
        if name not in _FIELDS:
            raise invalid(name, f"Unrecognized request argument supplied: {name}")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise invalid(name, f"Missing required parameter: '{name}' (a string).")
    endpoint = data["endpoint"]
    if endpoint not in ENDPOINTS:
        raise invalid(
            "endpoint",
            f"This gateway runs batches of {' and '.join(ENDPOINTS)} only; got {endpoint[:80]!r}.",
        )
    window = data["completion_window"]
    if window not in WINDOWS:
        raise invalid("completion_window", "'completion_window' must be '24h'.")
    return data["input_file_id"], endpoint, window, check_metadata(data.get("metadata"))


class BatchEndpoints:
    """/v1/batches over the batch store (no keeper: the Batch API is off). `wake` tells the
    runner there is news (a batch created or cancelled)."""

    def __init__(
        self,
        keeper: StoreKeeper | None,
        auth: ClientAuth,
        admin_key: str | None,
        wake: Callable[[], None],
    ) -> None:
        self._keeper = keeper
        self._auth = auth
        self._admin_key = admin_key
        self._wake = wake
        # The address the last batch was created through: hosted images in its answers
        # are linked there when no [server] public_base_url is set.
        self.base_url = "http://127.0.0.1"

    def _ready(self, request: Request) -> tuple[BatchStore, str | None]:
        return ready(self._keeper, request, self._auth, self._admin_key)

    async def _owned(self, store: BatchStore, request: Request, owner: str | None) -> BatchRecord:
        found_id = str(request.path_params["batch_id"])
        record = await store.get_batch(found_id)
        if not visible(record, owner):
            raise NotFound(f"No batch found with id '{found_id}'.")
        assert record is not None
        return record

    async def create(self, request: Request) -> Response:
        """POST /v1/batches"""
        store, owner = self._ready(request)
        if owner is None:
            raise Forbidden("Batches belong to a client: create them with a client key.")
        input_id, endpoint, window, metadata = check_create(await read_json(request))
        source = await store.get_file(input_id)
        if not visible(source, owner):
            raise invalid("input_file_id", f"No such File object: {input_id}")
        assert source is not None
        if source.purpose != "batch":
            raise invalid(
                "input_file_id", f"File {input_id} was not uploaded with purpose 'batch'."
            )
        now = int(time.time())
        record = BatchRecord(
            id=batch_id(),
            owner=owner,
            endpoint=endpoint,
            input_file_id=input_id,
            completion_window=window,
            status="validating",
            created_at=now,
            expires_at=now + WINDOWS[window],
            metadata=metadata,
        )
        await store.create_batch(record)
        self.base_url = str(request.base_url).rstrip("/")
        self._wake()
        return JSONResponse(batch_object(record))

    async def list(self, request: Request) -> Response:
        """GET /v1/batches: newest first."""
        store, owner = self._ready(request)
        after = request.query_params.get("after") or None
        page = await store.list_batches(owner, after=after, limit=query_limit(request, 20, 100))
        return JSONResponse(list_object([batch_object(r) for r in page.items], page.has_more))

    async def retrieve(self, request: Request) -> Response:
        """GET /v1/batches/{batch_id}"""
        store, owner = self._ready(request)
        return JSONResponse(batch_object(await self._owned(store, request, owner)))

    async def cancel(self, request: Request) -> Response:
        """POST /v1/batches/{batch_id}/cancel: `cancelling` now (lines running finish; no
        new line starts), `cancelled` once the runner has written what was done."""
        store, owner = self._ready(request)
        record = await self._owned(store, request, owner)
        update = Update(
            status="cancelling",
            from_status=_CANCELLABLE,
            times={"cancelling_at": int(time.time())},
        )
        moved = await store.update_batch(record.id, update)
        if moved is None:
            now = await store.get_batch(record.id)
            if now is None or now.status not in ("cancelling", "cancelled"):
                status = now.status if now else "deleted"
                raise Conflict(f"Cannot cancel a batch that is {status}.")
            moved = now  # cancelled already: the same answer again
        self._wake()
        return JSONResponse(batch_object(moved))
