"""The lines of a batch's output and error files, and the ids of batch objects, as OpenAI
writes them: one compact JSON object per line, so an SDK app's parser reads ours unchanged.
Pure (apart from the randomness of the ids)."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping
from typing import Any

_ALNUM = string.ascii_letters + string.digits


def _dumps(value: Any) -> str:
    # Compact and UTF-8 as is: one record is one physical line of the JSONL file.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def line_id() -> str:
    """The id of one output/error line: "batch_req_" + 32 hex digits."""
    return "batch_req_" + secrets.token_hex(16)


def file_id() -> str:
    """A File's id: "file-" + 24 alphanumerics (URL-safe without escaping)."""
    return "file-" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def batch_id() -> str:
    """A Batch's id: "batch_" + 24 hex digits."""
    return "batch_" + secrets.token_hex(12)


def response_record(
    custom_id: str, request_id: str, status_code: int, body: Mapping[str, Any]
) -> str:
    """A request that ran and was answered (the answer's body as the endpoint gave it)."""
    return _dumps(
        {
            "id": line_id(),
            "custom_id": custom_id,
            "response": {
                "status_code": status_code,
                "request_id": request_id,
                "body": dict(body),
            },
            "error": None,
        }
    )


def failure_record(
    custom_id: str, request_id: str, status_code: int, error: Mapping[str, Any]
) -> str:
    """A request that ran and was answered with an error: OpenAI puts the error body in the
    response (the request did run), leaving the record's own "error" for lines that never
    ran. `error` is the OpenAI error object (message, type, param, code) or a whole error
    body ({"error": {...}})."""
    inner = error.get("error", error) if isinstance(error.get("error"), Mapping) else error
    return _dumps(
        {
            "id": line_id(),
            "custom_id": custom_id,
            "response": {
                "status_code": status_code,
                "request_id": request_id,
                "body": {
                    "error": {
                        "message": inner.get("message", ""),
                        "type": inner.get("type", "invalid_request_error"),
                        "param": inner.get("param"),
                        "code": inner.get("code"),
                    }
                },
            },
            "error": None,
        }
    )


def unrun_record(custom_id: str, code: str, message: str) -> str:
    """A line that never ran ("batch_expired" / "batch_cancelled"): no response at all."""
    return _dumps(
        {
            "id": line_id(),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )
