"""The one interface every upstream implements, and the failures it may report.

Like an httpx transport: the pool holds an Upstream and calls `run(job, token)`; it never
knows which provider's JSON is behind it. Each provider module classifies its own errors
into a FailureKind, which is all the pool needs to decide between retry and give up.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import DomainError, wire_enum
from ..types import Job


@wire_enum
class FailureKind(enum.Enum):
    """Why an upstream call failed, as far as the pool and the caller are concerned."""

    BAD_REQUEST = "bad_request"  # the caller's input: not retried
    SAFETY = "safety"  # the model refused the content: not retried, not billed
    AUTH = "auth"  # token invalid/expired: bench the token, retry elsewhere
    BALANCE = "balance"  # token out of credit: bench the token, retry elsewhere
    RATE_LIMITED = "rate_limited"  # cool the token down, retry elsewhere
    SERVER_ERROR = "server_error"  # 5xx or the upstream can't serve this: breaker, retry
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    MALFORMED = "malformed"  # an answer we cannot read

    @property
    def callers_fault(self) -> bool:
        """True when another token or upstream would fail the same way."""
        return self in (FailureKind.BAD_REQUEST, FailureKind.SAFETY)

    @property
    def providers_fault(self) -> bool:
        """True for what the provider (or the network) explains, not one token: 5xx,
        timeouts, refused or reset connections, unreadable answers."""
        return self in (
            FailureKind.SERVER_ERROR,
            FailureKind.TIMEOUT,
            FailureKind.CONNECTION,
            FailureKind.MALFORMED,
        )


class UpstreamError(DomainError):
    """A failed upstream call, classified. `status` and `code` are the provider's own."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        task_id: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.param = param
        self.task_id = task_id
        self.trace_id = trace_id


@dataclass
class UpstreamResult:
    """A successful call: image links (or data: URIs) and the provider's ids."""

    images: list[str]
    task_id: str | None = None
    trace_id: str | None = None


class Upstream(ABC):
    """One provider endpoint. Implementations are small and hold one HTTP client."""

    name: str
    kind: str
    #: how many images one call may ask for; n above it is split into several calls
    max_count_per_call: int = 1
    #: most reference images one edit may carry
    max_images: int = 16

    def __init__(self, name: str, model_map: Mapping[str, str]) -> None:
        self.name = name
        self._model_map = dict(model_map)
        #: calls sent again after meeting a stale keep-alive connection (not failures)
        self.stale_retries = 0

    def count_stale_retry(self) -> None:
        """One call was silently re-sent after a stale pooled connection."""
        self.stale_retries += 1

    def models(self) -> tuple[str, ...]:
        """The gateway model names this upstream serves."""
        return tuple(self._model_map)

    def upstream_model(self, model: str) -> str:
        """The provider's own name for a gateway model name."""
        return self._model_map[model]

    def cannot_serve(self, job: Job) -> tuple[str, str] | None:
        """(param, reason) when this upstream can't honour the job as asked, else None."""
        if job.model not in self._model_map:
            return "model", f"{self.name} does not serve model {job.model}"
        if len(job.images) > self.max_images:
            return "image", f"{self.name} accepts at most {self.max_images} images per edit"
        return None

    @abstractmethod
    async def run(self, job: Job, token: str) -> UpstreamResult:
        """Make the job's images with this token, or raise UpstreamError."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release network resources."""
