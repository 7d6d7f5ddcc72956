"""The one error type the gateway answers with, already in OpenAI's shape.

Every layer raises GatewayError (or a subclass); the API layer turns it into
`{"error": {"message", "type", "param", "code"}}` with the status and headers it carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class GatewayError(Exception):
    """An error the caller will see, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

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


def invalid(param: str | None, message: str, code: str | None = None) -> GatewayError:
    """A 400 for bad input, naming the parameter at fault."""
    return GatewayError(400, message, type="invalid_request_error", param=param, code=code)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove any secret from text that may come from an upstream before it reaches anyone."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "[redacted]")
    return text
