"""The OpenAPI paths and schemas of the Files and Batches endpoints (api/files.py,
api/batches.py), merged into /openapi.json by api/openapi.py. Written by hand, as the rest
of the document: a contract that schemathesis checks the answers against."""

from __future__ import annotations

from typing import Any

from ..batch.store import STATUSES, TIME_COLUMNS
from .batch_lines import ENDPOINTS

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_REQUEST_ID = {
    "x-request-id": {
        "description": "The gateway's id for this request; quote it when reporting a problem.",
        "schema": {"type": "string"},
    }
}
_TEXT = {
    400: "Invalid input; `param` names the field at fault.",
    401: "Missing or wrong key.",
    403: "The admin key cannot own files or batches: use a client key.",
    404: "No such file or batch for this key, or the Batch API is off (no durable state).",
    409: "The batch is past the point where it can be cancelled.",
    413: "The request body is too large.",
    503: "The batch store (PostgreSQL) cannot be reached just now; see `retry-after`.",
}
_STATUSES = list(STATUSES)
_ENDPOINTS = list(ENDPOINTS)
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_TEXT = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": _TEXT[s],
            "headers": _REQUEST_ID,
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
        for s in statuses
    }


def _op(
    summary: str, ok: dict[str, Any], errors: tuple[int, ...], security: dict[str, Any], **more: Any
) -> dict[str, Any]:
    unauthorized = (401,) if security else ()
    return {
        "summary": summary,
        **security,
        **more,
        "responses": {
            "200": {"description": "OK", "headers": _REQUEST_ID, "content": ok},
            **_errors(*sorted({*errors, *unauthorized, 404, 503})),
        },
    }


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def batch_paths(secured: bool) -> dict[str, Any]:
    """The paths; `secured`: client keys are configured (every call then needs one; the
    admin key reads and cancels every client's)."""
    security: dict[str, Any] = {"security": [{"clientKey": []}]} if secured else {}
    after = _query("after", {"type": "string"}, "the id of the last item of the previous page")
    file_id, batch_id = [_path("file_id")], [_path("batch_id")]
    upload = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["purpose", "file"],
                    "properties": {
                        "purpose": {"type": "string", "enum": ["batch"]},
                        "file": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
    create = {"required": True, "content": _json("BatchCreate")}
    file_list = [
        _query("purpose", {"type": "string"}, "only files of this purpose"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "page size"),
        after,
        _query("order", {"type": "string", "enum": ["desc"]}, "newest first"),
    ]
    batch_list = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "page size")]
    content = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "/v1/files": {
            "post": _op("Upload a batch's JSONL input.", _json("File"), (400, 403, 413), security,
                        requestBody=upload),
            "get": _op("List files, newest first.", _json("FileList"), (400,), security,
                       parameters=file_list),
        },
        "/v1/files/{file_id}": {
            "get": _op("A file.", _json("File"), (), security, parameters=file_id),
            "delete": _op("Delete a file.", _json("FileDeleted"), (), security,
                          parameters=file_id),
        },
        "/v1/files/{file_id}/content": {
            "get": _op("A file's bytes (an output file: one JSON object a line).", content, (),
                       security, parameters=file_id),
        },
        "/v1/batches": {
            "post": _op("Create a batch of image requests.", _json("Batch"), (400, 403, 413),
                        security, requestBody=create),
            "get": _op("List batches, newest first.", _json("BatchList"), (400,), security,
                       parameters=[after, *batch_list]),
        },
        "/v1/batches/{batch_id}": {
            "get": _op("A batch.", _json("Batch"), (), security, parameters=batch_id),
        },
        "/admin/batches": {
            "get": _op("The batches still at work, every client's.", {"application/json": {
                "schema": {"type": "object", "required": ["batches"], "properties": {
                    "batches": {"type": "array", "items": _ref("Batch")}}}}}, (),
                {"security": [{"adminKey": []}, {"adminKeyHeader": []}]}),
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": _op("Cancel a batch.", _json("Batch"), (409,), security,
                        parameters=batch_id),
        },
    }  # fmt: skip


def _list_of(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref(item)},
            "first_id": _NULLABLE_TEXT,
            "last_id": _NULLABLE_TEXT,
            "has_more": {"type": "boolean"},
        },
    }


BATCH_SCHEMAS: dict[str, Any] = {
    "File": {
        "type": "object",
        "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "file"},
            "bytes": {"type": "integer"},
            "created_at": {"type": "integer"},
            "filename": {"type": "string"},
            "purpose": {"type": "string", "enum": ["batch", "batch_output"]},
            "status": {"type": "string"},
            "status_details": _NULLABLE_TEXT,
            "expires_at": _NULLABLE_INT,
        },
    },
    "FileList": _list_of("File"),
    "FileDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "file"},
            "deleted": {"type": "boolean"},
        },
    },
    "BatchCreate": {
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "additionalProperties": False,
        "properties": {
            "input_file_id": {"type": "string"},
            "endpoint": {"type": "string", "enum": _ENDPOINTS},
            "completion_window": {"type": "string", "enum": ["24h"]},
            "metadata": {
                "type": ["object", "null"],
                "maxProperties": 16,
                "propertyNames": {"maxLength": 64},
                "additionalProperties": {"type": "string", "maxLength": 512},
            },
            "output_expires_after": {"type": "object"},
        },
    },
    "Batch": {
        "type": "object",
        "required": [
            "id",
            "object",
            "endpoint",
            "input_file_id",
            "completion_window",
            "status",
            "created_at",
            "request_counts",
        ],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "batch"},
            "endpoint": {"type": "string"},
            "model": _NULLABLE_TEXT,
            "errors": {"type": ["object", "null"]},
            "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"},
            "status": {"type": "string", "enum": _STATUSES},
            "output_file_id": _NULLABLE_TEXT,
            "error_file_id": _NULLABLE_TEXT,
            "created_at": {"type": "integer"},
            **{name: _NULLABLE_INT for name in ("expires_at", *TIME_COLUMNS)},
            "request_counts": {
                "type": "object",
                "required": ["total", "completed", "failed"],
                "properties": {
                    "total": {"type": "integer"},
                    "completed": {"type": "integer"},
                    "failed": {"type": "integer"},
                },
            },
            "usage": {"type": ["object", "null"]},
            "metadata": {"type": ["object", "null"]},
        },
    },
    "BatchList": _list_of("Batch"),
}
