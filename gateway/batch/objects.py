"""Stored records rendered as OpenAI's JSON objects (File, Batch, list pages). Pure; the
field lists follow the official SDK's types (openai.types.Batch, FileObject), and
tests/test_batch_records.py parses our output with them."""

from __future__ import annotations

from typing import Any

from .store import BatchRecord, FileRecord


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        # Deprecated by OpenAI but still sent: a stored file is ready as soon as it exists.
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def batch_object(record: BatchRecord) -> dict[str, Any]:
    errors = (
        {
            "object": "list",
            "data": [
                {"code": e.code, "message": e.message, "param": e.param, "line": e.line}
                for e in record.errors
            ],
        }
        if record.errors
        else None
    )
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        # The model is chosen per line (each body names its own), so the batch has none.
        "model": None,
        "errors": errors,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "created_at": record.created_at,
        "in_progress_at": record.in_progress_at,
        "expires_at": record.expires_at,
        "finalizing_at": record.finalizing_at,
        "completed_at": record.completed_at,
        "failed_at": record.failed_at,
        "expired_at": record.expired_at,
        "cancelling_at": record.cancelling_at,
        "cancelled_at": record.cancelled_at,
        "request_counts": {
            "total": record.total,
            "completed": record.completed,
            "failed": record.failed,
        },
        # Token usage is a language-model notion; image batches carry none.
        "usage": None,
        "metadata": record.metadata,
    }


def list_object(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }
