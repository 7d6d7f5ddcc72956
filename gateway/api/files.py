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
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..admission.clients import ClientAuth
from ..batch.objects import file_object, list_object
from ..batch.records import file_id
from ..batch.store import BatchStore, FileRecord
from ..config.state import BatchConfig
from ..errors import BodyTooLarge, ClientGone, Forbidden, NotFound, invalid
from ..http import declared_too_large
from .auth import owner_of
from .parse import capped

_FORM_FIELDS = frozenset({"purpose", "file"})
# Room for the multipart framing and the purpose field around the file itself.
_FRAMING = 64 * 1024
_READ = 1 << 16


def batch_api_off() -> NotFound:
    return NotFound(
        "The Batch API needs durable state: set [state] dir (or GATEWAY_STATE_DIR) or "
        "[state] database_url."
    )


def ready(
    store: BatchStore | None, request: Request, auth: ClientAuth, admin_key: str | None
) -> tuple[BatchStore, str | None]:
    """The store and whom the call acts for (None: the admin key); 401 for a bad key, then
    404 when the Batch API is off."""
    owner = owner_of(request, auth, admin_key)
    if store is None:
        raise batch_api_off()
    return store, owner


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
    """/v1/files over the batch store (None: the Batch API is off)."""

    def __init__(
        self, store: BatchStore | None, auth: ClientAuth, admin_key: str | None, config: BatchConfig
    ) -> None:
        self._store = store
        self._auth = auth
        self._admin_key = admin_key
        self._config = config

    def _ready(self, request: Request) -> tuple[BatchStore, str | None]:
        return ready(self._store, request, self._auth, self._admin_key)

    async def owned(self, store: BatchStore, file_id: str, owner: str | None) -> FileRecord:
        """The file if the caller may see it; NotFound as for an id nobody has otherwise."""
        record = await store.get_file(file_id)
        if record is None or (owner is not None and record.owner != owner):
            raise NotFound(f"No such File object: {file_id}")
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
        form = await _read_form(request, limit)
        try:
            upload = _checked_form(form)
            record = FileRecord(
                id=file_id(),
                owner=owner,
                filename=(upload.filename or "upload.jsonl")[:255],
                purpose="batch",
                bytes=0,
                created_at=int(time.time()),
            )
            stored = await store.put_file(record, _chunks(upload, limit))
        finally:
            await form.close()
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


def _too_large(limit: int) -> Exception:
    return invalid(
        "file",
        f"The file is larger than this gateway accepts for a batch ({limit} bytes).",
        code="file_too_large",
    )


async def _read_form(request: Request, limit: int) -> Any:
    try:
        # Counted as it streams in (a chunked body has no Content-Length); the file part is
        # spooled to a temporary file by the parser, not held in memory.
        return await capped(request, limit + _FRAMING).form(
            max_files=1, max_fields=10, max_part_size=1024 * 1024
        )
    except BodyTooLarge:
        raise _too_large(limit) from None
    except ClientDisconnect:
        raise ClientGone() from None
    except Exception as exc:  # malformed multipart: python-multipart raises several types
        detail = str(getattr(exc, "detail", "") or exc)
        raise invalid(None, f"Could not read the multipart body: {detail}") from None


def _checked_form(form: Any) -> UploadFile:
    """The uploaded file, after the form's fields are checked (400s naming them)."""
    for name in form:
        if name not in _FORM_FIELDS:
            raise invalid(name, f"Unrecognized request argument supplied: {name}")
    purpose = form.get("purpose")
    if purpose is None:
        raise invalid("purpose", "Missing required parameter: 'purpose'.")
    if purpose != "batch":
        raise invalid(
            "purpose",
            "This gateway stores files for batches only: 'purpose' must be 'batch', got "
            f"{str(purpose)[:40]!r}.",
        )
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise invalid("file", "Missing required parameter: 'file' (a file part).")
    return upload


async def _chunks(upload: UploadFile, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    while chunk := await upload.read(_READ):
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)  # the store keeps nothing of a failed put
        yield chunk
