"""The one place domain errors become OpenAI errors: status, type, code, param, headers.

Everything below the API layer raises what happened (`gateway/errors.py`); this table says
how an OpenAI SDK app hears about it. Pure; table-tested in tests/test_api_errors.py.

Token trouble upstream is the gateway's problem, never the caller's key: it is a 502, not
a 401/403 that would make an SDK app think its own key is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
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
    scrub,
)
from ..upstreams.base import FailureKind, UpstreamError
from ..upstreams.forms import Field


@dataclass(frozen=True)
class OpenAIError:
    """An error as the caller sees it."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


# The OpenAI SDKs retry 408, 409, 429 and 5xx twice by themselves, waiting `retry-after`
# when it is at most a minute. Where the gateway has already retried on its own slots, a
# retry from the SDK only multiplies upstream calls (3 x max_attempts for one request):
# `x-should-retry: false` tells the SDK so, unless a `retry-after` says when it is worth it.
_SDK_RETRY_AFTER_MAX = 60
_NO_RETRY = {"x-should-retry": "false"}


# OpenAI's codes are lower-case words; a provider's own code ("1", "E_42") says nothing to an
# SDK app and is not passed on.
_OPENAI_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _openai_code(code: str | None) -> str:
    return code if code is not None and _OPENAI_CODE.fullmatch(code) else "invalid_request"


def _upstream(err: UpstreamError, secrets: tuple[str, ...]) -> OpenAIError:
    message = scrub(err.message, secrets)
    headers: dict[str, str] = {}
    if err.task_id:
        headers["x-upstream-task-id"] = err.task_id
    if err.trace_id:
        headers["x-upstream-trace-id"] = err.trace_id
    kind = err.kind
    if kind is FailureKind.BAD_REQUEST:
        return OpenAIError(
            400,
            f"The upstream rejected the request: {message}",
            param=err.param,
            code=_openai_code(err.code),
            headers=headers,
        )
    if kind is FailureKind.UNSUPPORTED:
        field = Field.named(err.param)
        return OpenAIError(
            400,
            "No configured upstream takes this request as translated "
            f"({field.value if field else 'its form'} refused): {message}",
            param=field.param if field else None,
            code="unsupported_value",
            headers=headers,
        )
    if kind is FailureKind.SAFETY:
        return OpenAIError(
            400,
            f"Your request was rejected by the safety system: {message}",
            code="content_policy_violation",
            headers=headers,
        )
    # Past here the pool has given up after its own retries.
    if kind is FailureKind.RATE_LIMITED and err.retry_after is not None:
        headers["retry-after"] = _retry_after(err.retry_after)
    else:
        headers.update(_NO_RETRY)
    if kind is FailureKind.RATE_LIMITED:
        return OpenAIError(
            429,
            "The upstream is rate-limiting the gateway; please retry shortly.",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if kind in (FailureKind.AUTH, FailureKind.BALANCE):
        what = (
            "rejected the gateway's token"
            if kind is FailureKind.AUTH
            else "reports no balance left"
        )
        return OpenAIError(
            502,
            f"The upstream {what}; this is the gateway's problem, not your key's.",
            type="server_error",
            code="upstream_token_unusable",
            headers=headers,
        )
    if kind is FailureKind.TIMEOUT:
        return OpenAIError(
            504,
            "The upstream did not finish the image in time.",
            type="server_error",
            code="upstream_timeout",
            headers=headers,
        )
    return OpenAIError(
        502,
        f"The upstream failed: {message}",
        type="server_error",
        code="upstream_error",
        headers=headers,
    )


def _limit(err: LimitExceeded) -> OpenAIError:
    headers = {"retry-after": _retry_after(err.retry_after)}
    if err.daily:
        # Retrying within seconds cannot help until the day turns: tell the OpenAI SDK
        # not to spend its automatic retries on it.
        headers["x-should-retry"] = "false"
    kind = "insufficient_quota" if err.daily else "requests"
    code = "insufficient_quota" if err.daily else "rate_limit_exceeded"
    return OpenAIError(429, err.message, type=kind, code=code, headers=headers)


def _no_capacity(err: NoCapacity) -> OpenAIError:
    headers = {"retry-after": str(err.retry_after)}
    if err.retry_after > _SDK_RETRY_AFTER_MAX:
        # The SDK would not wait that long, but retry at once: pointless.
        headers.update(_NO_RETRY)
    if err.rate_limited:
        return OpenAIError(
            429, err.message, type="requests", code="rate_limit_exceeded", headers=headers
        )
    return OpenAIError(
        503, err.message, type="server_error", code="upstreams_unavailable", headers=headers
    )


def _partial(err: PartialResult, secrets: tuple[str, ...]) -> OpenAIError:
    cause = openai_error(err.cause, secrets).message if err.cause is not None else None
    message = PartialResult.text(err.made, err.asked, cause)
    return OpenAIError(502, message, type="server_error", code="partial_result", headers=_NO_RETRY)


def _server(
    status: int, code: str, headers: Mapping[str, str] | None = None
) -> Callable[[DomainError], OpenAIError]:
    return lambda err: OpenAIError(
        status, err.message, type="server_error", code=code, headers=dict(headers or {})
    )


# Domain error class -> its OpenAI form. Looked up along the class's MRO, so a subclass
# answers like its parent unless it has a row of its own.
_TABLE: dict[type[DomainError], Callable[[Any], OpenAIError]] = {
    InvalidParameter: lambda e: OpenAIError(400, e.message, param=e.param, code=e.code),
    BodyTooLarge: lambda e: OpenAIError(413, e.message, code="request_too_large"),
    # Nobody reads this answer; 499 (as nginx logs it) is what metering and the usage log
    # record, so a hang-up is neither a 4xx the caller caused nor the gateway's 500.
    ClientGone: lambda e: OpenAIError(499, e.message, code="client_closed_request"),
    ModelNotFound: lambda e: OpenAIError(404, e.message, param="model", code="model_not_found"),
    ModelUnavailable: lambda e: OpenAIError(
        400,
        e.message,
        param=e.param,
        code="model_not_available" if e.param == "model" else "unsupported_value",
    ),
    Unauthenticated: lambda e: OpenAIError(
        401,
        e.message,
        code="invalid_api_key",
        headers={"www-authenticate": e.challenge} if e.challenge else {},
    ),
    ModelNotAllowed: lambda e: OpenAIError(403, e.message, param="model", code="model_not_allowed"),
    LimitExceeded: _limit,
    LimitsUnavailable: _server(503, "limits_unavailable", {"retry-after": "5"}),
    NotFound: lambda e: OpenAIError(404, e.message, code="not_found"),
    Forbidden: lambda e: OpenAIError(403, e.message, code="forbidden"),
    Conflict: lambda e: OpenAIError(409, e.message, code="conflict"),
    StoreUnavailable: _server(503, "batch_store_unavailable", {"retry-after": "5"}),
    NoCapacity: _no_capacity,
    CapacityTimeout: _server(504, "upstream_timeout", _NO_RETRY),
    ShuttingDown: lambda e: OpenAIError(
        503,
        e.message,
        type="server_error",
        code="server_shutting_down",
        headers={"retry-after": "1", "connection": "close"},
    ),
    DownloadFailed: _server(502, "image_download_failed"),
    DownloadRefused: _server(502, "image_download_refused"),
    DownloadTimeout: _server(504, "image_download_timeout"),
    ImageTooLargeToHost: _server(502, "image_too_large"),
    SharedFlightFailed: _server(502, "upstream_error"),
}

INTERNAL = OpenAIError(
    500,
    "The gateway hit an unexpected error. Quote the x-request-id when reporting it.",
    type="server_error",
    code="internal_error",
)


def openai_error(err: DomainError, secrets: Iterable[str] = ()) -> OpenAIError:
    """The OpenAI error for a domain error. `secrets` are scrubbed from text that came
    from an upstream."""
    if isinstance(err, UpstreamError):
        return _upstream(err, tuple(secrets))
    if isinstance(err, PartialResult):
        return _partial(err, tuple(secrets))
    for cls in type(err).__mro__:
        render = _TABLE.get(cls)
        if render is not None:
            return render(err)
    return INTERNAL


def status_of(err: DomainError) -> int:
    """The HTTP status a domain error is answered with (for metering)."""
    return openai_error(err).status
