"""What went wrong, in the gateway's own words: the domain errors every layer raises.

Nothing here knows HTTP. Each error says what happened (a parameter that cannot be served,
no capacity until a given time, an upstream failure of a kind, a limit reached); the API
layer's one table (`api/errors.py`) turns each into an OpenAI error with its status, type,
code, param and headers.

Errors also travel between replicas (a replica waiting on another's identical request gets
its error through Redis), so every error can be written as plain JSON and read back:
`to_wire` / `from_wire`, by class name and fields, never by pickle.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Iterable
from typing import Any, TypeVar

# Class name -> class, for reading errors back from the wire.
_KINDS: dict[str, type[DomainError]] = {}
# Enum types whose members may appear as error fields on the wire.
_ENUMS: dict[str, type[enum.Enum]] = {}


class DomainError(Exception):
    """Base of every error the gateway reports to a caller."""

    message: str
    # Upstream attempts made before the error (for the usage record).
    attempts: tuple[Any, ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _KINDS[cls.__name__] = cls


_KINDS["DomainError"] = DomainError


E = TypeVar("E", bound=type[enum.Enum])


def wire_enum(cls: E) -> E:
    """Register an enum whose members may be fields of errors sent between replicas."""
    _ENUMS[cls.__name__] = cls
    return cls


# --------------------------------------------------------------------------- the caller's input


class InvalidParameter(DomainError):
    """A parameter that is malformed or cannot be honoured; `param` names it (None: the
    body as a whole)."""

    def __init__(self, param: str | None, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def invalid(param: str | None, message: str, code: str | None = None) -> InvalidParameter:
    """Bad input, naming the parameter at fault."""
    return InvalidParameter(param, message, code)


class BodyTooLarge(DomainError):
    """The request body is larger than the gateway accepts."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            f"The request body is larger than this gateway accepts ({max_bytes} bytes)."
        )
        self.max_bytes = max_bytes


class ClientGone(DomainError):
    """The caller hung up (or was cut off for stalling) before its request had arrived."""

    def __init__(self) -> None:
        super().__init__("The client closed the connection before its request was complete.")


class ModelNotFound(DomainError):
    """The requested model is neither a Nano Banana model nor an alias of one."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model


class ModelUnavailable(DomainError):
    """No configured upstream can do the request as asked; `param` names what stands in
    the way (the model, or e.g. the number of images)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# --------------------------------------------------------------------------- who is calling


class Unauthenticated(DomainError):
    """No key, or a key nobody configured. `challenge`: the scheme the answer names in its
    WWW-Authenticate header (the metrics endpoint and the admin page name one)."""

    def __init__(self, message: str, *, challenge: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge


class ModelNotAllowed(DomainError):
    """The model exists, but this client may not use it."""

    def __init__(self, client: str, model: str, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        super().__init__(
            f"Client '{client}' is not allowed to use model '{model}'. "
            f"Allowed: {', '.join(allowed)}."
        )
        self.client = client
        self.model = model
        self.allowed = list(allowed)


class LimitExceeded(DomainError):
    """A client is over one of its limits; `limit` names which (a metric label). A daily
    limit cannot be helped by retrying within seconds."""

    def __init__(self, limit: str, message: str, retry_after: float, *, daily: bool) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after
        self.daily = daily


class LimitsUnavailable(DomainError):
    """The shared store holding a client's daily limits cannot be reached, and the gateway
    is set to refuse rather than count on what one replica knows
    ([redis] daily_limits_when_down = "refuse")."""

    def __init__(self, client: str) -> None:
        super().__init__(
            f"Client '{client}' has daily limits kept in the gateway's shared store, which "
            "cannot be reached just now; retry in a few seconds."
        )
        self.client = client


class NotFound(DomainError):
    """A thing the caller named does not exist (an expired image link, a disabled
    endpoint, another client's file or batch)."""


class Forbidden(DomainError):
    """The caller is known but may not do this (the admin key creating a batch, which
    belongs to a client)."""


class StoreUnavailable(DomainError):
    """The Batch API's store (a PostgreSQL server) cannot be reached just now."""

    def __init__(self) -> None:
        super().__init__(
            "The batch store cannot be reached just now; retry in a few seconds (image "
            "requests are not affected)."
        )


class Conflict(DomainError):
    """The thing named is not in a state that allows this (cancelling a finished batch)."""


# --------------------------------------------------------------------------- capacity


class NoCapacity(DomainError):
    """Nothing usable is left for this request; `retry_after` (whole seconds) says when
    the first token returns. `rate_limited`: every token is only cooling down."""

    def __init__(self, message: str, *, retry_after: int, rate_limited: bool) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class CapacityTimeout(DomainError):
    """The request's deadline passed while every token was at its concurrency cap."""

    def __init__(self) -> None:
        super().__init__("Timed out waiting for a free upstream token.")


class ShuttingDown(DomainError):
    """The gateway is shutting down and could not finish the request in time."""

    def __init__(self) -> None:
        super().__init__(
            "The gateway is shutting down and could not finish this request in time; "
            "retry it (another instance will take it)."
        )


# --------------------------------------------------------------------------- making the images


class PartialResult(DomainError):
    """The upstreams made fewer images than asked for, and the caller did not accept
    fewer."""

    def __init__(self, made: int, asked: int, cause: DomainError | None = None) -> None:
        super().__init__(self.text(made, asked, cause.message if cause else None))
        self.made = made
        self.asked = asked
        self.cause = cause

    @staticmethod
    def text(made: int, asked: int, cause: str | None) -> str:
        """The message, with the first failure's own words as its cause."""
        reason = f" Cause: {cause}" if cause else ""
        return (
            f"The upstreams made {made} of the {asked} images asked for; send the header "
            f"'x-gateway-allow-partial: true' to accept fewer.{reason}"
        )


class DownloadFailed(DomainError):
    """An upstream's image link could not be downloaded (or did not hold an image)."""


class DownloadRefused(DomainError):
    """An upstream's image link points where the network policy does not allow."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"The upstream's image link was refused: {reason}.")
        self.reason = reason


class DownloadTimeout(DomainError):
    """An upstream's image link did not deliver in time."""

    def __init__(self) -> None:
        super().__init__("Timed out downloading the generated image from the upstream.")


class ImageTooLargeToHost(DomainError):
    """An image made as bytes is too large for the gateway to host behind a link."""

    def __init__(self) -> None:
        super().__init__(
            "The image is too large for the gateway to host as a link; "
            "ask for response_format 'b64_json'."
        )


class SharedFlightFailed(DomainError):
    """An identical request on another replica, which this one waited for, failed in a
    way that could not be read back."""

    def __init__(self) -> None:
        super().__init__("An identical request this one waited for failed upstream.")


# --------------------------------------------------------------------------- helpers


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove any secret from text that may come from an upstream before it reaches anyone."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "[redacted]")
    return text


def to_wire(err: DomainError) -> dict[str, Any]:
    """An error as plain JSON-able data: its class name and fields."""
    fields: dict[str, Any] = {}
    for name, value in vars(err).items():
        if name == "attempts" or name.startswith("_"):
            continue
        if isinstance(value, enum.Enum):
            value = {"enum": type(value).__name__, "value": value.value}
        elif isinstance(value, DomainError):
            value = {"error": to_wire(value)}
        elif not isinstance(value, str | int | float | bool | list | type(None)):
            continue
        fields[name] = value
    return {"kind": type(err).__name__, "fields": fields}


def from_wire(data: Any) -> DomainError:
    """An error read back from `to_wire`'s form, built by its class's own constructor from
    the fields it takes (every error keeps its constructor's arguments as attributes), so
    it is whole or not at all: SharedFlightFailed for anything else, and a bad value in a
    shared store can never fail in a new way."""
    try:
        cls = _KINDS[data["kind"]]
        fields = dict(data["fields"])
        for name, value in fields.items():
            if isinstance(value, dict) and "error" in value:
                fields[name] = from_wire(value["error"])
            elif isinstance(value, dict):
                fields[name] = _ENUMS[value["enum"]](value["value"])
        taken = inspect.signature(cls).parameters
        return cls(**{name: fields[name] for name in taken if name in fields})
    except (KeyError, TypeError, ValueError):
        return SharedFlightFailed()
