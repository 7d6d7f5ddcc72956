"""Output/error records and the File/Batch objects, checked against the official SDK."""

from __future__ import annotations

import json
import re

from openai.types import Batch, FileObject

from gateway.batch.objects import batch_object, file_object, list_object
from gateway.batch.records import (
    batch_id,
    failure_record,
    file_id,
    line_id,
    response_record,
    unrun_record,
)
from gateway.batch.store import BatchError, BatchRecord, FileRecord


def test_ids() -> None:
    assert re.fullmatch(r"batch_req_[0-9a-f]{32}", line_id())
    assert re.fullmatch(r"file-[A-Za-z0-9]{24}", file_id())
    assert re.fullmatch(r"batch_[0-9a-f]{24}", batch_id())
    assert line_id() != line_id()


def test_response_record() -> None:
    text = response_record("c1", "req_1", 200, {"created": 1, "data": [{"b64_json": "é"}]})
    assert "\n" not in text and " " not in text and "é" in text
    rec = json.loads(text)
    assert re.fullmatch(r"batch_req_[0-9a-f]{32}", rec.pop("id"))
    assert rec == {
        "custom_id": "c1",
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {"created": 1, "data": [{"b64_json": "é"}]},
        },
        "error": None,
    }


def test_failure_record_takes_object_or_body() -> None:
    err = {"message": "no", "type": "invalid_request_error", "param": "size", "code": "bad"}
    for given in (err, {"error": err}):
        rec = json.loads(failure_record("c2", "req_2", 400, given))
        assert rec["response"] == {
            "status_code": 400,
            "request_id": "req_2",
            "body": {"error": err},
        }
        assert rec["error"] is None and rec["custom_id"] == "c2"


def test_unrun_record() -> None:
    rec = json.loads(unrun_record("c3", "batch_expired", "expired"))
    assert rec["response"] is None
    assert rec["error"] == {"code": "batch_expired", "message": "expired"}


def test_file_object_validates() -> None:
    obj = file_object(FileRecord("file-x", "", "in.jsonl", "batch", 12, 100))
    parsed = FileObject.model_validate(obj)
    assert parsed.purpose == "batch" and parsed.bytes == 12 and obj["status"] == "processed"


def test_batch_object_validates() -> None:
    rec = BatchRecord(
        id="batch_1",
        owner="o",
        endpoint="/v1/images/edits",
        input_file_id="file-x",
        completion_window="24h",
        status="failed",
        created_at=1,
        expires_at=2,
        metadata={"k": "v"},
        errors=(BatchError("invalid_url", "m", 3, "url"),),
        total=5,
        completed=2,
        failed=1,
        failed_at=9,
    )
    obj = batch_object(rec)
    parsed = Batch.model_validate(obj)
    assert parsed.errors is not None and parsed.errors.data is not None
    assert parsed.errors.data[0].line == 3 and parsed.errors.data[0].param == "url"
    assert parsed.request_counts is not None and parsed.request_counts.total == 5
    assert parsed.failed_at == 9 and parsed.metadata == {"k": "v"}
    # Every field the SDK knows is sent, and nothing else.
    assert set(obj) == set(Batch.model_fields)
    plain = batch_object(
        BatchRecord("batch_2", "", "/v1/images/generations", "f", "24h", "validating", 1, 2)
    )
    assert plain["errors"] is None and Batch.model_validate(plain).status == "validating"


def test_list_object() -> None:
    assert list_object([{"id": "a"}, {"id": "b"}], True) == {
        "object": "list",
        "data": [{"id": "a"}, {"id": "b"}],
        "first_id": "a",
        "last_id": "b",
        "has_more": True,
    }
    assert list_object([], False)["first_id"] is None
