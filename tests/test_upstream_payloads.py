"""Table tests for the providers' JSON: request bodies, error classification, answers.

Inputs are the documented bodies from /work/shared/upstreams.md and the provider pages in
/work/shared/seeds/ (AceDataCloud / XHuoAPI share one schema; defapi.org is submit + poll).
"""

from __future__ import annotations

import email.utils
from typing import Any

import pytest

from gateway.types import Job
from gateway.upstreams import acedata, defapi
from gateway.upstreams._common import parse_retry_after
from gateway.upstreams.base import FailureKind, UpstreamError
from gateway.upstreams.forms import Field, needed

PROMPT = "a white siamese cat"
EDIT_PROMPT = "let this man wear on this T-shirt"
ACE_IMAGES = ("https://cdn.acedata.cloud/v8073y.png", "https://cdn.acedata.cloud/44xlah.png")
DEF_IMAGES = (
    "https://cdn.openai.com/API/docs/images/body-lotion.png",
    "https://cdn.openai.com/API/docs/images/soap.png",
)
DATA_URI = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAA+gAAAVGCAMAAAA6u2FyAAADAFBMVEXq6uwdHCEeHyMdHS"
)

# The documented synchronous success (seeds, AceDataCloud/XHuoAPI).
ACE_SUCCESS = {
    "success": True,
    "task_id": "056f0589-a3dd-4ec2-8440-ad61f5038dfa",
    "trace_id": "c48de83f-0077-426e-b02b-ff1d58179064",
    "data": [
        {
            "prompt": PROMPT,
            "image_url": "https://platform.cdn.acedata.cloud/nanobanana/"
            "69790adb-c85d-4362-ad9e-0c9ba4352cf4.png",
        }
    ],
}
TRACE_ID = "a9063166-26ed-4451-85b5-54e896817c69"


def ace_error(code: str, message: str = "failed") -> dict[str, Any]:
    """The documented AceDataCloud error body."""
    return {"success": False, "error": {"code": code, "message": message}, "trace_id": TRACE_ID}


# --------------------------------------------------------------------------- acedata.build_body

ALL = frozenset(Field)


@pytest.mark.parametrize(
    ("job", "model", "form", "body"),
    [
        pytest.param(
            Job("generate", PROMPT, "nano-banana"),
            "nano-banana",
            ALL,
            {"action": "generate", "prompt": PROMPT, "model": "nano-banana"},
            id="minimal-generate-is-the-documented-example",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana", 4, (), "16:9", "1K"),
            "nano-banana",
            ALL,
            {
                "action": "generate",
                "prompt": PROMPT,
                "model": "nano-banana",
                "count": 4,
                "aspect_ratio": "16:9",
            },
            id="flash-drops-resolution",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-pro", 2, (), "3:2", "2K"),
            "nano-banana-pro",
            ALL,
            {
                "action": "generate",
                "prompt": PROMPT,
                "model": "nano-banana-pro",
                "count": 2,
                "aspect_ratio": "3:2",
                "resolution": "2K",
            },
            id="pro-with-resolution",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-2", 1, (), "9:16", "4K"),
            "nano-banana-2",
            ALL,
            {
                "action": "generate",
                "prompt": PROMPT,
                "model": "nano-banana-2",
                "aspect_ratio": "9:16",
                "resolution": "4K",
            },
            id="nb2-with-resolution",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-pro:official", 1, (), "1:1", "4K"),
            "nano-banana-pro:official",
            ALL,
            {
                "action": "generate",
                "prompt": PROMPT,
                "model": "nano-banana-pro:official",
                "resolution": "4K",
            },
            id="official-variant-keeps-resolution-1-1-is-the-default",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-2-lite", 1, (), "4:3", "1K"),
            "nano-banana-2-lite",
            ALL,
            {
                "action": "generate",
                "prompt": PROMPT,
                "model": "nano-banana-2-lite",
                "aspect_ratio": "4:3",
            },
            id="lite-drops-resolution",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-pro"),
            "gemini-3-pro-image",
            ALL,
            {"action": "generate", "prompt": PROMPT, "model": "gemini-3-pro-image"},
            id="mapped-upstream-model-name",
        ),
        pytest.param(
            Job("edit", EDIT_PROMPT, "nano-banana", 1, ACE_IMAGES),
            "nano-banana",
            ALL,
            {
                "action": "edit",
                "prompt": EDIT_PROMPT,
                "model": "nano-banana",
                "image_urls": list(ACE_IMAGES),
            },
            id="documented-edit",
        ),
        pytest.param(
            Job("edit", EDIT_PROMPT, "nano-banana-2", 3, (DATA_URI,), "16:9", "2K"),
            "nano-banana-2",
            ALL,
            {
                "action": "edit",
                "prompt": EDIT_PROMPT,
                "model": "nano-banana-2",
                "count": 3,
                "image_urls": [DATA_URI],
            },
            id="edit-takes-ratio-and-resolution-from-its-image",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-pro", 2, (), "3:2", "2K"),
            "nano-banana-pro",
            frozenset({Field.MODEL}),
            {"action": "generate", "prompt": PROMPT, "model": "nano-banana-pro"},
            id="only-what-the-form-allows",
        ),
    ],
)
def test_acedata_build_body(
    job: Job, model: str, form: frozenset[Field], body: dict[str, Any]
) -> None:
    assert acedata.build_body(job, model, form & needed(job)) == body


def test_acedata_build_body_generate_never_sends_image_urls() -> None:
    job = Job("generate", PROMPT, "nano-banana", 1, ACE_IMAGES)
    assert "image_urls" not in acedata.build_body(job, "nano-banana", ALL)


@pytest.mark.parametrize(
    ("err", "kind", "param"),
    [
        (
            UpstreamError(FailureKind.BAD_REQUEST, "model is invalid.", status=400),
            "unsupported",
            "model",
        ),
        (
            UpstreamError(FailureKind.BAD_REQUEST, "aspect_ratio must be one of ...", status=400),
            "unsupported",
            "aspect_ratio",
        ),
        (
            UpstreamError(FailureKind.BAD_REQUEST, "prompt is required", status=400),
            "bad_request",
            None,
        ),
        (
            UpstreamError(FailureKind.BAD_REQUEST, "image too large", status=413, param="image"),
            "bad_request",
            "image",
        ),
        (
            UpstreamError(FailureKind.SERVER_ERROR, "model is invalid.", status=500),
            "server_error",
            None,
        ),
    ],
)
def test_acedata_refusal_of_translation(err: UpstreamError, kind: str, param: str | None) -> None:
    job = Job("generate", PROMPT, "nano-banana", 1, (), "16:9")
    out = acedata.refusal_of_translation(err, job)
    assert (out.kind.value, out.param) == (kind, param)


# --------------------------------------------------------------------------- acedata.classify


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        pytest.param(400, "token_mismatched", FailureKind.BAD_REQUEST, id="400-token_mismatched"),
        pytest.param(
            400, "api_not_implemented", FailureKind.SERVER_ERROR, id="400-api_not_implemented"
        ),
        pytest.param(400, "bad_request", FailureKind.BAD_REQUEST, id="400-bad_request"),
        pytest.param(400, "no_token", FailureKind.AUTH, id="400-no_token"),
        pytest.param(400, "disabled", FailureKind.AUTH, id="400-disabled"),
        pytest.param(400, None, FailureKind.BAD_REQUEST, id="400-no-code"),
        pytest.param(401, "invalid_token", FailureKind.AUTH, id="401-invalid_token"),
        pytest.param(401, "token_expired", FailureKind.AUTH, id="401-token_expired"),
        pytest.param(401, "token_mismatched", FailureKind.AUTH, id="401-token_mismatched"),
        pytest.param(401, None, FailureKind.AUTH, id="401-no-code"),
        pytest.param(403, "used_up", FailureKind.BALANCE, id="403-used_up"),
        pytest.param(403, "forbidden", FailureKind.SAFETY, id="403-forbidden"),
        pytest.param(403, None, FailureKind.AUTH, id="403-no-code"),
        pytest.param(404, "no_api", FailureKind.SERVER_ERROR, id="404-no_api"),
        pytest.param(413, "request_too_large", FailureKind.BAD_REQUEST, id="413-too-large"),
        pytest.param(429, "too_many_requests", FailureKind.RATE_LIMITED, id="429"),
        pytest.param(500, "api_error", FailureKind.SERVER_ERROR, id="500-api_error"),
        pytest.param(502, None, FailureKind.SERVER_ERROR, id="502"),
        pytest.param(503, None, FailureKind.SERVER_ERROR, id="503"),
        pytest.param(422, None, FailureKind.BAD_REQUEST, id="422-other-4xx"),
        pytest.param(302, None, FailureKind.MALFORMED, id="302-redirect"),
    ],
)
def test_acedata_classify(status: int, code: str | None, kind: FailureKind) -> None:
    assert acedata.classify(status, code) is kind


# --------------------------------------------------------------------------- acedata.parse_answer


def test_acedata_parse_answer_documented_success() -> None:
    result = acedata.parse_answer(200, ACE_SUCCESS, None, "ace")
    assert result.images == [ACE_SUCCESS["data"][0]["image_url"]]
    assert result.task_id == "056f0589-a3dd-4ec2-8440-ad61f5038dfa"
    assert result.trace_id == "c48de83f-0077-426e-b02b-ff1d58179064"


def test_acedata_parse_answer_keeps_every_image_in_order() -> None:
    payload = {
        "success": True,
        "task_id": "t",
        "data": [
            {"prompt": PROMPT, "image_url": "https://platform.cdn.xhuoapi.ai/nanobanana/1.png"},
            {"prompt": PROMPT},
            "junk",
            {"prompt": PROMPT, "image_url": "https://platform.cdn.xhuoapi.ai/nanobanana/2.png"},
        ],
    }
    result = acedata.parse_answer(200, payload, None, "xhuo")
    assert result.images == [
        "https://platform.cdn.xhuoapi.ai/nanobanana/1.png",
        "https://platform.cdn.xhuoapi.ai/nanobanana/2.png",
    ]
    assert result.trace_id is None


@pytest.mark.parametrize(
    ("status", "payload", "retry_after", "expected"),
    [
        pytest.param(
            400,
            ace_error("token_mismatched", "prompt is required"),
            None,
            {"kind": FailureKind.BAD_REQUEST, "code": "token_mismatched", "param": None},
            id="400-token_mismatched",
        ),
        pytest.param(
            400,
            ace_error("bad_request", "model is invalid."),
            None,
            {"kind": FailureKind.BAD_REQUEST, "message": "model is invalid."},
            id="400-bad_request",
        ),
        pytest.param(
            400,
            ace_error("api_not_implemented"),
            None,
            {"kind": FailureKind.SERVER_ERROR},
            id="400-api_not_implemented",
        ),
        pytest.param(
            400, ace_error("no_token"), None, {"kind": FailureKind.AUTH}, id="400-no_token"
        ),
        pytest.param(
            400, ace_error("disabled"), None, {"kind": FailureKind.AUTH}, id="400-disabled"
        ),
        pytest.param(
            401,
            ace_error("invalid_token"),
            None,
            {"kind": FailureKind.AUTH, "code": "invalid_token", "status": 401},
            id="401-invalid_token",
        ),
        pytest.param(
            401, ace_error("token_expired"), None, {"kind": FailureKind.AUTH}, id="401-expired"
        ),
        pytest.param(
            403, ace_error("used_up"), None, {"kind": FailureKind.BALANCE}, id="403-used_up"
        ),
        pytest.param(
            403,
            ace_error("forbidden", "The request was blocked for safety reasons."),
            None,
            {"kind": FailureKind.SAFETY, "message": "The request was blocked for safety reasons."},
            id="403-forbidden",
        ),
        pytest.param(
            404, ace_error("no_api"), None, {"kind": FailureKind.SERVER_ERROR}, id="404-no_api"
        ),
        pytest.param(
            413,
            ace_error("request_too_large"),
            None,
            {"kind": FailureKind.BAD_REQUEST, "param": "image", "code": "request_too_large"},
            id="413-names-image",
        ),
        pytest.param(
            429,
            ace_error("too_many_requests"),
            "7",
            {"kind": FailureKind.RATE_LIMITED, "retry_after": 7.0},
            id="429-retry-after",
        ),
        pytest.param(
            429,
            ace_error("too_many_requests"),
            None,
            {"kind": FailureKind.RATE_LIMITED, "retry_after": None},
            id="429-no-retry-after",
        ),
        pytest.param(
            500,
            ace_error("api_error", "internal error"),
            None,
            {"kind": FailureKind.SERVER_ERROR, "code": "api_error", "trace_id": TRACE_ID},
            id="500-api_error",
        ),
        pytest.param(
            500,
            {"success": False},
            None,
            {"kind": FailureKind.SERVER_ERROR, "code": None, "message": "HTTP 500"},
            id="500-without-error-object",
        ),
        pytest.param(
            502,
            None,
            None,
            {"kind": FailureKind.SERVER_ERROR, "status": 502},
            id="502-not-json",
        ),
        pytest.param(
            200, None, None, {"kind": FailureKind.MALFORMED, "status": 200}, id="200-not-json"
        ),
        pytest.param(
            200, ["not", "an", "object"], None, {"kind": FailureKind.MALFORMED}, id="200-a-list"
        ),
        pytest.param(
            200,
            {"success": True, "task_id": "t-1", "trace_id": "r-1", "data": []},
            None,
            {"kind": FailureKind.MALFORMED, "task_id": "t-1", "trace_id": "r-1"},
            id="200-success-without-images",
        ),
        pytest.param(
            200,
            {"success": True, "data": None},
            None,
            {"kind": FailureKind.MALFORMED},
            id="200-success-data-null",
        ),
        pytest.param(
            200,
            {"success": True, "data": [{"prompt": PROMPT, "image_url": None}]},
            None,
            {"kind": FailureKind.MALFORMED},
            id="200-success-url-null",
        ),
        pytest.param(
            200,
            {"success": False, "error": {"code": "api_error", "message": "boom"}},
            None,
            {"kind": FailureKind.SERVER_ERROR, "message": "boom"},
            id="200-success-false",
        ),
        pytest.param(
            200,
            {"task_id": "t-2", "data": [{"image_url": "https://x/1.png"}]},
            None,
            {"kind": FailureKind.SERVER_ERROR, "task_id": "t-2"},
            id="200-without-success-flag",
        ),
    ],
)
def test_acedata_parse_answer_errors(
    status: int, payload: Any, retry_after: str | None, expected: dict[str, Any]
) -> None:
    with pytest.raises(UpstreamError) as caught:
        acedata.parse_answer(status, payload, retry_after, "ace")
    err = caught.value
    for field, value in expected.items():
        assert getattr(err, field) == value, field


def test_acedata_parse_answer_error_keeps_trace_id() -> None:
    with pytest.raises(UpstreamError) as caught:
        acedata.parse_answer(401, ace_error("invalid_token"), None, "ace")
    assert caught.value.trace_id == TRACE_ID
    assert caught.value.task_id is None


# --------------------------------------------------------------------------- defapi.build_body


# What an upstream configured with `fields = ["aspect_ratio", "resolution"]` may send.
SIZED = frozenset({Field.MODEL, Field.INLINE_IMAGES, Field.ASPECT_RATIO, Field.RESOLUTION})
DOCUMENTED = defapi.DefApiUpstream.default_fields


@pytest.mark.parametrize(
    ("job", "model", "form", "body"),
    [
        pytest.param(
            Job("generate", "A beautiful landscape", "nano-banana-pro"),
            "google/gempix2",
            DOCUMENTED,
            {"model": "google/gempix2", "prompt": "A beautiful landscape"},
            id="documented-minimal",
        ),
        pytest.param(
            Job("edit", "Put them in a basket", "nano-banana-pro", 1, DEF_IMAGES),
            "google/gempix2",
            DOCUMENTED,
            {
                "model": "google/gempix2",
                "prompt": "Put them in a basket",
                "images": list(DEF_IMAGES),
            },
            id="documented-reference-images",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana", 1, (), "3:2", "1K"),
            "google/gemini-2.5-flash-image",
            DOCUMENTED | {Field.ASPECT_RATIO},
            {"model": "google/gemini-2.5-flash-image", "prompt": PROMPT, "aspect_ratio": "3:2"},
            id="flash-no-image-size",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana", 1, (), "3:2", "1K"),
            "google/gemini-2.5-flash-image",
            DOCUMENTED,
            {"model": "google/gemini-2.5-flash-image", "prompt": PROMPT},
            id="ratio-not-in-form-not-sent",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-pro", 1, (), "16:9", "2K"),
            "google/gempix2",
            SIZED,
            {
                "model": "google/gempix2",
                "prompt": PROMPT,
                "aspect_ratio": "16:9",
                "image_size": "2k",
            },
            id="pro-image-size-lowercase",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-pro", 1, (), "16:9", "2K"),
            "google/gempix2",
            DOCUMENTED | {Field.ASPECT_RATIO},
            {"model": "google/gempix2", "prompt": PROMPT, "aspect_ratio": "16:9"},
            id="resolution-not-in-form-not-sent",
        ),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-2", 1, (), "1:1", "4K"),
            "google/nano-banana-2",
            DOCUMENTED | {Field.RESOLUTION},
            {"model": "google/nano-banana-2", "prompt": PROMPT, "image_size": "4k"},
            id="nb2-4k-square",
        ),
        pytest.param(
            Job("edit", EDIT_PROMPT, "nano-banana-2", 1, (DATA_URI,)),
            "google/nano-banana-2",
            DOCUMENTED | {Field.INLINE_IMAGES},
            {"model": "google/nano-banana-2", "prompt": EDIT_PROMPT, "images": [DATA_URI]},
            id="edit-data-uri",
        ),
    ],
)
def test_defapi_build_body(
    job: Job, model: str, form: frozenset[Field], body: dict[str, Any]
) -> None:
    assert defapi.build_body(job, model, form) == body


def test_defapi_build_body_follows_the_upstreams_form() -> None:
    """Upstream.form decides: a 1:1 1K job carries neither field even where both may go."""
    up = defapi.DefApiUpstream(
        "def",
        "http://127.0.0.1:9",
        timeout=1,
        models={},
        poll_interval=1,
        poll_max_interval=1,
        poll_deadline=1,
        not_found_grace=1,
        fields=(Field.ASPECT_RATIO, Field.RESOLUTION),
    )
    square = Job("generate", PROMPT, "nano-banana-pro", 1, (), "1:1", "1K")
    wide = Job("generate", PROMPT, "nano-banana-pro", 1, (), "16:9", "2K")
    assert defapi.build_body(square, "m", up.form(square)) == {"model": "m", "prompt": PROMPT}
    assert defapi.build_body(wide, "m", up.form(wide)) == {
        "model": "m",
        "prompt": PROMPT,
        "aspect_ratio": "16:9",
        "image_size": "2k",
    }


@pytest.mark.parametrize("count", [1, 3], ids=["count-1", "count-3"])
def test_defapi_build_body_never_sends_count(count: int) -> None:
    """One defapi task makes one image; n is made with parallel tasks."""
    job = Job("generate", PROMPT, "nano-banana", count)
    body = defapi.build_body(job, "google/gempix2", SIZED | {Field.COUNT})
    assert "count" not in body
    assert "n" not in body


# --------------------------------------------------------------------------- defapi.classify_submit


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        pytest.param(400, "prompt is required", FailureKind.BAD_REQUEST, id="400-documented"),
        pytest.param(400, "failed", FailureKind.BAD_REQUEST, id="400-failed"),
        pytest.param(400, "insufficient balance", FailureKind.BALANCE, id="400-balance-words"),
        pytest.param(401, "Invalid API key", FailureKind.AUTH, id="401-documented"),
        pytest.param(402, "payment required", FailureKind.BALANCE, id="402"),
        pytest.param(403, "Insufficient credits", FailureKind.BALANCE, id="403-credits"),
        pytest.param(403, "account disabled", FailureKind.AUTH, id="403-disabled"),
        pytest.param(429, "too many requests", FailureKind.RATE_LIMITED, id="429"),
        pytest.param(500, "HTTP 500", FailureKind.SERVER_ERROR, id="500"),
        pytest.param(503, "maintenance", FailureKind.SERVER_ERROR, id="503"),
        pytest.param(200, "Invalid API key", FailureKind.AUTH, id="200-code-1-api-key"),
        pytest.param(200, "token expired", FailureKind.AUTH, id="200-code-1-token"),
        pytest.param(200, "quota exceeded", FailureKind.BALANCE, id="200-code-1-quota"),
        pytest.param(200, "please recharge", FailureKind.BALANCE, id="200-code-1-recharge"),
        pytest.param(200, "failed", FailureKind.SERVER_ERROR, id="200-code-1-other"),
        pytest.param(200, "prompt is required", FailureKind.BAD_REQUEST, id="200-code-1-request"),
        pytest.param(
            200, "unknown field: aspect_ratio", FailureKind.BAD_REQUEST, id="200-code-1-field"
        ),
    ],
)
def test_defapi_classify_submit(status: int, message: str, kind: FailureKind) -> None:
    assert defapi.classify_submit(status, message) is kind


# --------------------------------------------------------------------------- defapi.read_task


@pytest.mark.parametrize(
    "status", ["pending", "submitted", "in_progress"], ids=lambda s: f"still-{s}"
)
def test_defapi_read_task_running(status: str) -> None:
    data = {"task_id": "ta1", "status": status, "result": None, "consumed": "0.000000"}
    assert defapi.read_task(data, "def", "ta1") is None


@pytest.mark.parametrize(
    ("result", "images"),
    [
        pytest.param(
            [
                {
                    "image": "https://google.datas.systems/fileSystem/response_images/287/2025/"
                    "08/29/1756432513771985292_2989.png"
                }
            ],
            [
                "https://google.datas.systems/fileSystem/response_images/287/2025/"
                "08/29/1756432513771985292_2989.png"
            ],
            id="documented-url",
        ),
        pytest.param([{"image": DATA_URI}], [DATA_URI], id="data-uri"),
        pytest.param(
            [
                {"image": "https://a/1.png"},
                {"image": ""},
                {"text": "here"},
                {"image": "https://a/2.png"},
            ],
            ["https://a/1.png", "https://a/2.png"],
            id="images-win-over-text-and-blanks",
        ),
    ],
)
def test_defapi_read_task_success(result: list[dict[str, Any]], images: list[str]) -> None:
    data = {
        "task_id": "ta5c9705-b8ae-4cb9-aa6f-97c4fee88c8d",
        "status": "success",
        "result": result,
        "consumed": "0.500000",
        "status_reason": {"message": None},
    }
    got = defapi.read_task(data, "def", "ta5c9705-b8ae-4cb9-aa6f-97c4fee88c8d")
    assert got is not None
    assert got.images == images
    assert got.task_id == "ta5c9705-b8ae-4cb9-aa6f-97c4fee88c8d"


@pytest.mark.parametrize(
    ("data", "kind", "message_part"),
    [
        pytest.param(
            {"status": "success", "result": [{"text": "I can't draw that."}]},
            FailureKind.SAFETY,
            "I can't draw that.",
            id="text-result-is-failure",
        ),
        pytest.param(
            {"status": "success", "result": [{"image": None, "text": "Here is a story"}]},
            FailureKind.SAFETY,
            "Here is a story",
            id="null-image-with-text",
        ),
        pytest.param(
            {"status": "success", "result": None},
            FailureKind.MALFORMED,
            "without an image",
            id="success-result-null",
        ),
        pytest.param(
            {"status": "success", "result": []},
            FailureKind.MALFORMED,
            "without an image",
            id="success-result-empty",
        ),
        pytest.param(
            {"status": "success", "result": {"image": "https://a/1.png"}},
            FailureKind.MALFORMED,
            "without an image",
            id="success-result-not-list",
        ),
        pytest.param(
            {"status": "failed", "status_reason": {"message": "internal error"}},
            FailureKind.SERVER_ERROR,
            "internal error",
            id="failed-internal",
        ),
        pytest.param(
            {
                "status": "failed",
                "status_reason": {"message": "Prompt blocked by safety filters"},
            },
            FailureKind.SAFETY,
            "Prompt blocked by safety filters",
            id="failed-safety",
        ),
        pytest.param(
            {"status": "failed", "status_reason": {"message": "content policy violation"}},
            FailureKind.SAFETY,
            "content policy violation",
            id="failed-policy",
        ),
        pytest.param(
            {"status": "failed", "status_reason": {"message": None}},
            FailureKind.SERVER_ERROR,
            "the task failed",
            id="failed-null-reason",
        ),
        pytest.param(
            {"status": "failed"}, FailureKind.SERVER_ERROR, "the task failed", id="failed-no-reason"
        ),
        pytest.param(
            {"status": "cancelled"}, FailureKind.MALFORMED, "cancelled", id="unknown-status"
        ),
        pytest.param({}, FailureKind.MALFORMED, "None", id="no-status"),
        pytest.param(None, FailureKind.MALFORMED, "without data", id="data-null"),
        pytest.param("success", FailureKind.MALFORMED, "without data", id="data-string"),
    ],
)
def test_defapi_read_task_failures(data: Any, kind: FailureKind, message_part: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        defapi.read_task(data, "def", "ta-xyz")
    err = caught.value
    assert err.kind is kind
    assert message_part in err.message
    assert err.task_id == "ta-xyz"


def test_defapi_text_result_is_not_retried_elsewhere() -> None:
    with pytest.raises(UpstreamError) as caught:
        defapi.read_task({"status": "success", "result": [{"text": "no"}]}, "def", "ta")
    assert caught.value.kind.callers_fault is True


# --------------------------------------------------------------------------- parse_retry_after

NOW = 1_445_412_450.0  # 2015-10-21 07:27:30 UTC


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("5", 5.0, id="integer"),
        pytest.param(" 12 ", 12.0, id="padded"),
        pytest.param("1.5", 1.5, id="fraction"),
        pytest.param("-3", 0.0, id="negative-clamped"),
        pytest.param("soon", None, id="word"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 30.0, id="http-date-future"),
        pytest.param(email.utils.formatdate(NOW + 120, usegmt=True), 120.0, id="formatdate"),
        pytest.param("Wed, 21 Oct 2015 07:20:00 GMT", 0.0, id="http-date-past"),
        pytest.param(
            "inf",
            None,
            id="inf",
        ),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds
