"""OpenAI's Files API, as far as batches need it: upload a batch's JSONL input, list, read,
download and delete files; a batch's output and error files are read here too.

    POST   /v1/files                 multipart: purpose=batch, file=<JSONL>
    GET    /v1/files                 ?purpose=&limit=&after=&order=desc
    GET    /v1/files/{file_id}
    GET    /v1/files/{file_id}/content
    DELETE /v1/files/{file_id}

A client sees only its own files (another's id is a 404, as an id nobody has); the admin
key sees every client's. Bytes stream both ways: an upload is spooled and stored a chunk at
a time, a download is read from the store a chunk at a time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..admission.clients import ClientAuth
from ..batch.objects import file_object, list_object
from ..batch.open import StoreKeeper
from ..batch.records import file_id
from ..batch.store import BatchRecord, BatchStore, FileRecord
from ..config.state import BatchConfig
from ..errors import ClientGone, DomainError, Forbidden, NotFound, invalid
from ..http import declared_too_large
from .auth import owner_of
from .upload import StreamedForm

Handler = Callable[[Request], Awaitable[Response]]
_FORM_FIELDS = frozenset({"purpose", "file"})
# Room for the multipart framing and the purpose field around the file itself.
_FRAMING = 64 * 1024


def batch_api_off() -> NotFound:
    return NotFound(
        "The Batch API needs durable state: set [state] dir (or GATEWAY_STATE_DIR) or "
        "[state] database_url."
    )


def ready(
    keeper: StoreKeeper | None, request: Request, auth: ClientAuth, admin_key: str | None
) -> tuple[BatchStore, str | None]:
    """The store and whom the call acts for (None: the admin key); 401 for a bad key, then
    404 when the Batch API is off, 503 while its store has not been reached."""
    owner = owner_of(request, auth, admin_key)
    if keeper is None:
        raise batch_api_off()
    return keeper.available(), owner


def visible(record: FileRecord | BatchRecord | None, owner: str | None) -> bool:
    """Whether the caller sees this file or batch: its owner does, the admin key (owner
    None) sees every one; another client's is as an id nobody has."""
    return record is not None and (owner is None or record.owner == owner)


def guarded(handler: Handler, keeper: StoreKeeper | None) -> Handler:
    """The handler, with its store's outage errors answered as a 503 (not a 500)."""
    if keeper is None:
        return handler
    reached = keeper.reached

    async def call(request: Request) -> Response:
        with reached():
            return await handler(request)

    return call


def query_limit(request: Request, default: int, most: int) -> int:
    """The `limit` query parameter, 1..most (a 400 naming it otherwise)."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise invalid("limit", f"'limit' must be a whole number from 1 to {most}.")
    return value


class FileEndpoints:
    """/v1/files over the batch store (no keeper: the Batch API is off)."""

    def __init__(
        self,
        keeper: StoreKeeper | None,
        auth: ClientAuth,
        admin_key: str | None,
        config: BatchConfig,
    ) -> None:
        self._keeper = keeper
        self._auth = auth
        self._admin_key = admin_key
        self._config = config

    def _ready(self, request: Request) -> tuple[BatchStore, str | None]:
        return ready(self._keeper, request, self._auth, self._admin_key)

    async def owned(self, store: BatchStore, file_id: str, owner: str | None) -> FileRecord:
        """The file if the caller may see it; NotFound as for an id nobody has otherwise."""
        record = await store.get_file(file_id)
        if not visible(record, owner):
            raise NotFound(f"No such File object: {file_id}")
        assert record is not None
        return record

    async def create(self, request: Request) -> Response:
        """POST /v1/files"""
        store, owner = self._ready(request)
        if owner is None:
            raise Forbidden(
                "Files belong to a client: upload with a client key, not the admin key."
            )
        limit = self._config.max_file_bytes
        if declared_too_large(request.headers.get("content-length"), limit + _FRAMING):
            raise _too_large(limit)
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise invalid(None, "Upload files as multipart/form-data with 'purpose' and 'file'.")
        form = StreamedForm(
            content_type,
            file_field="file",
            max_file_bytes=limit,
            too_large=lambda: _too_large(limit),
            on_field=_check_field,
        )
        try:
            await form.start(aiter(request.stream()))
            record = FileRecord(
                id=file_id(),
                owner=owner,
                filename=(form.filename or "upload.jsonl")[:255],
                purpose="batch",
                bytes=0,
                created_at=int(time.time()),
            )
            stored = await store.put_file(record, form.file_chunks())
        except ClientDisconnect:
            raise ClientGone() from None
        missing = [name for name in ("purpose", "file") if not _given(form, name)]
        if missing:  # the body ended without them: what was stored goes again
            await store.delete_file(stored.id)
            raise invalid(missing[0], f"Missing required parameter: '{missing[0]}'.")
        return JSONResponse(file_object(stored))

    async def list(self, request: Request) -> Response:
        """GET /v1/files"""
        store, owner = self._ready(request)
        params = request.query_params
        if params.get("order", "desc") != "desc":
            raise invalid("order", "Files are listed newest first: 'order' can only be 'desc'.")
        page = await store.list_files(
            owner,
            purpose=params.get("purpose") or None,
            after=params.get("after") or None,
            limit=query_limit(request, 10_000, 10_000),
        )
        return JSONResponse(list_object([file_object(r) for r in page.items], page.has_more))

    async def retrieve(self, request: Request) -> Response:
        """GET /v1/files/{file_id}"""
        store, owner = self._ready(request)
        return JSONResponse(file_object(await self.owned(store, _path_id(request), owner)))

    async def content(self, request: Request) -> Response:
        """GET /v1/files/{file_id}/content: streamed, never held whole."""
        store, owner = self._ready(request)
        record = await self.owned(store, _path_id(request), owner)
        chunks = store.read_file(record.id)
        first = await anext(chunks, b"")  # a file deleted meanwhile fails here, as a 404

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in chunks:
                yield chunk

        headers = {
            "content-length": str(record.bytes),
            "content-disposition": f'attachment; filename="{record.filename}"',
        }
        return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)

    async def delete(self, request: Request) -> Response:
        """DELETE /v1/files/{file_id}"""
        store, owner = self._ready(request)
        record = await self.owned(store, _path_id(request), owner)
        deleted = await store.delete_file(record.id)
        return JSONResponse({"id": record.id, "object": "file", "deleted": deleted})


def _path_id(request: Request) -> str:
    return str(request.path_params["file_id"])


def _too_large(limit: int) -> DomainError:
    return invalid(
        "file",
        f"The file is larger than this gateway accepts for a batch ({limit} bytes).",
        code="file_too_large",
    )


def _check_field(name: str, value: str) -> None:
    """A text field of the upload, as soon as it has arrived (before the file is stored)."""
    if name not in _FORM_FIELDS or name == "file":
        raise invalid(name, f"Unrecognized request argument supplied: {name}")
    if value != "batch":
        raise invalid(
            "purpose",
            "This gateway stores files for batches only: 'purpose' must be 'batch', got "
            f"{value[:40]!r}.",
        )


def _given(form: StreamedForm, name: str) -> bool:
    return form.saw_file if name == "file" else name in form.fields
