"""The one error table: every domain error, as the OpenAI SDK app hears about it; and every
domain error written to the wire between replicas and read back unchanged."""

from __future__ import annotations

import json

import pytest

from gateway.api.errors import INTERNAL, OpenAIError, openai_error, status_of
from gateway.errors import (
    BodyTooLarge,
    CapacityTimeout,
    ClientGone,
    Conflict,
    DomainError,
    DownloadFailed,
    DownloadRefused,
    DownloadTimeout,
    Forbidden,
    ImageTooLargeToHost,
    InvalidParameter,
    LimitExceeded,
    LimitsUnavailable,
    ModelNotAllowed,
    ModelNotFound,
    ModelUnavailable,
    NoCapacity,
    NotFound,
    PartialResult,
    SharedFlightFailed,
    ShuttingDown,
    StoreUnavailable,
    Unauthenticated,
    from_wire,
    to_wire,
)
from gateway.upstreams.base import FailureKind, UpstreamError

# (error, status, type, code, param, headers)
ROWS: list[tuple[DomainError, int, str, str | None, str | None, dict[str, str]]] = [
    (InvalidParameter("size", "bad size"), 400, "invalid_request_error", None, "size", {}),
    (
        InvalidParameter("image", "bad", "invalid_image_format"),
        400,
        "invalid_request_error",
        "invalid_image_format",
        "image",
        {},
    ),
    (BodyTooLarge(10), 413, "invalid_request_error", "request_too_large", None, {}),
    (ClientGone(), 499, "invalid_request_error", "client_closed_request", None, {}),
    (ModelNotFound("x", "no x"), 404, "invalid_request_error", "model_not_found", "model", {}),
    (
        ModelUnavailable("model", "nobody"),
        400,
        "invalid_request_error",
        "model_not_available",
        "model",
        {},
    ),
    (
        ModelUnavailable("image", "too many"),
        400,
        "invalid_request_error",
        "unsupported_value",
        "image",
        {},
    ),
    (Unauthenticated("who?"), 401, "invalid_request_error", "invalid_api_key", None, {}),
    (
        Unauthenticated("metrics", challenge="Bearer"),
        401,
        "invalid_request_error",
        "invalid_api_key",
        None,
        {"www-authenticate": "Bearer"},
    ),
    (
        ModelNotAllowed("team-a", "nano-banana-pro", ["nano-banana"]),
        403,
        "invalid_request_error",
        "model_not_allowed",
        "model",
        {},
    ),
    (
        LimitExceeded("requests_per_minute", "slow", 29.2, daily=False),
        429,
        "requests",
        "rate_limit_exceeded",
        None,
        {"retry-after": "30"},
    ),
    (
        LimitsUnavailable("team-a"),
        503,
        "server_error",
        "limits_unavailable",
        None,
        {"retry-after": "5"},
    ),
    (
        LimitExceeded("images_per_day", "done", 3600, daily=True),
        429,
        "insufficient_quota",
        "insufficient_quota",
        None,
        {"retry-after": "3600", "x-should-retry": "false"},
    ),
    (NotFound("gone"), 404, "invalid_request_error", "not_found", None, {}),
    (Forbidden("not yours"), 403, "invalid_request_error", "forbidden", None, {}),
    (Conflict("done already"), 409, "invalid_request_error", "conflict", None, {}),
    (
        StoreUnavailable(),
        503,
        "server_error",
        "batch_store_unavailable",
        None,
        {"retry-after": "5"},
    ),
    (
        NoCapacity("cooling", retry_after=7, rate_limited=True),
        429,
        "requests",
        "rate_limit_exceeded",
        None,
        {"retry-after": "7"},
    ),
    (
        NoCapacity("down", retry_after=30, rate_limited=False),
        503,
        "server_error",
        "upstreams_unavailable",
        None,
        {"retry-after": "30"},
    ),
    (
        NoCapacity("benched", retry_after=3600, rate_limited=False),
        503,
        "server_error",
        "upstreams_unavailable",
        None,
        {"retry-after": "3600", "x-should-retry": "false"},
    ),
    (
        CapacityTimeout(),
        504,
        "server_error",
        "upstream_timeout",
        None,
        {"x-should-retry": "false"},
    ),
    (
        ShuttingDown(),
        503,
        "server_error",
        "server_shutting_down",
        None,
        {"retry-after": "1", "connection": "close"},
    ),
    (
        PartialResult(1, 3),
        502,
        "server_error",
        "partial_result",
        None,
        {"x-should-retry": "false"},
    ),
    (DownloadFailed("nope"), 502, "server_error", "image_download_failed", None, {}),
    (DownloadRefused("internal"), 502, "server_error", "image_download_refused", None, {}),
    (DownloadTimeout(), 504, "server_error", "image_download_timeout", None, {}),
    (ImageTooLargeToHost(), 502, "server_error", "image_too_large", None, {}),
    (SharedFlightFailed(), 502, "server_error", "upstream_error", None, {}),
]


@pytest.mark.parametrize(
    ("err", "status", "type_", "code", "param", "headers"),
    ROWS,
    ids=[f"{type(r[0]).__name__}-{r[1]}" for r in ROWS],
)
def test_table(
    err: DomainError,
    status: int,
    type_: str,
    code: str | None,
    param: str | None,
    headers: dict[str, str],
) -> None:
    answer = openai_error(err)
    assert (answer.status, answer.type, answer.code, answer.param) == (status, type_, code, param)
    assert dict(answer.headers) == headers
    assert answer.message
    assert status_of(err) == status
    assert answer.body() == {
        "error": {"message": answer.message, "type": type_, "param": param, "code": code}
    }


NO_RETRY = {"x-should-retry": "false"}


@pytest.mark.parametrize(
    ("err", "status", "code", "headers"),
    [
        (UpstreamError(FailureKind.BAD_REQUEST, "no"), 400, "invalid_request", {}),
        # A provider's own numeric code means nothing to an SDK app.
        (UpstreamError(FailureKind.BAD_REQUEST, "no", code="1"), 400, "invalid_request", {}),
        (UpstreamError(FailureKind.BAD_REQUEST, "no", code="bad_request"), 400, "bad_request", {}),
        (
            UpstreamError(FailureKind.UNSUPPORTED, "unknown field", param="aspect_ratio"),
            400,
            "unsupported_value",
            {},
        ),
        (UpstreamError(FailureKind.SAFETY, "no"), 400, "content_policy_violation", {}),
        # After the pool's own retries: the SDK is told not to add its own...
        (UpstreamError(FailureKind.SERVER_ERROR, "500"), 502, "upstream_error", NO_RETRY),
        (UpstreamError(FailureKind.CONNECTION, "reset"), 502, "upstream_error", NO_RETRY),
        (UpstreamError(FailureKind.MALFORMED, "?"), 502, "upstream_error", NO_RETRY),
        (UpstreamError(FailureKind.TIMEOUT, "late"), 504, "upstream_timeout", NO_RETRY),
        (UpstreamError(FailureKind.AUTH, "401"), 502, "upstream_token_unusable", NO_RETRY),
        (UpstreamError(FailureKind.BALANCE, "0"), 502, "upstream_token_unusable", NO_RETRY),
        (UpstreamError(FailureKind.RATE_LIMITED, "429"), 429, "rate_limit_exceeded", NO_RETRY),
        # ...unless a retry-after says when one is worth it.
        (
            UpstreamError(FailureKind.RATE_LIMITED, "429", retry_after=2.2),
            429,
            "rate_limit_exceeded",
            {"retry-after": "3"},
        ),
        (
            UpstreamError(FailureKind.SERVER_ERROR, "500", task_id="t-9"),
            502,
            "upstream_error",
            {"x-upstream-task-id": "t-9", **NO_RETRY},
        ),
    ],
    ids=lambda v: v.kind.value if isinstance(v, UpstreamError) else None,
)
def test_upstream_errors_and_the_sdks_own_retries(
    err: UpstreamError, status: int, code: str, headers: dict[str, str]
) -> None:
    answer = openai_error(err)
    assert (answer.status, answer.code) == (status, code)
    assert dict(answer.headers) == headers


def test_every_domain_error_has_a_row() -> None:
    """A new domain error without a row would reach callers as a 500."""
    covered = {type(row[0]) for row in ROWS} | {UpstreamError}

    def subclasses(cls: type[DomainError]) -> set[type[DomainError]]:
        found = set(cls.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    missing = {c.__name__ for c in subclasses(DomainError)} - {c.__name__ for c in covered}
    assert not missing, missing


def test_an_unknown_domain_error_is_an_internal_error() -> None:
    assert openai_error(DomainError("?")) == INTERNAL
    assert isinstance(INTERNAL, OpenAIError) and INTERNAL.status == 500


def test_partial_result_gives_its_cause_in_the_callers_words() -> None:
    cause = UpstreamError(FailureKind.SERVER_ERROR, "boom with sk-secret-123", status=500)
    answer = openai_error(PartialResult(1, 3, cause), secrets=("sk-secret-123",))
    assert answer.status == 502 and answer.code == "partial_result"
    assert "made 1 of the 3 images" in answer.message
    assert "Cause: The upstream failed: boom with [redacted]" in answer.message


WIRE_CASES: list[DomainError] = [
    *(row[0] for row in ROWS),
    UpstreamError(
        FailureKind.RATE_LIMITED,
        "slow down",
        status=429,
        code="too_many_requests",
        retry_after=2.5,
        task_id="task-1",
        trace_id="trace-1",
    ),
    PartialResult(2, 4, UpstreamError(FailureKind.TIMEOUT, "late")),
]


@pytest.mark.parametrize("err", WIRE_CASES, ids=lambda e: type(e).__name__)
def test_wire_round_trip(err: DomainError) -> None:
    back = from_wire(json.loads(json.dumps(to_wire(err))))
    assert type(back) is type(err)
    assert back.message == err.message and str(back) == str(err)
    assert openai_error(back) == openai_error(err)


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"kind": "Nonexistent", "fields": {"message": "x"}},
        {"kind": "UpstreamError", "fields": {"message": "x", "kind": {"enum": "Nope", "value": 1}}},
        {"kind": "NoCapacity", "fields": {}},
        {"kind": "NoCapacity", "fields": {"message": "half an error"}},
        {"kind": "LimitExceeded", "fields": {"message": "x", "limit": "rpm", "bogus": 1}},
        "garbage",
    ],
)
def test_wire_garbage_is_a_plain_shared_failure(data: object) -> None:
    assert type(from_wire(data)) is SharedFlightFailed


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("model", "model"),
        ("aspect_ratio", "size"),
        ("resolution", "size"),
        ("count", "n"),
        ("inline_images", "image"),
        (None, None),
    ],
)
def test_a_refused_translation_names_the_openai_parameter(
    field: str | None, param: str | None
) -> None:
    answer = openai_error(UpstreamError(FailureKind.UNSUPPORTED, "refused", param=field))
    assert (answer.status, answer.param, answer.code) == (400, param, "unsupported_value")
