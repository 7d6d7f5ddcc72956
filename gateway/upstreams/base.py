"""The one interface every upstream implements, and the failures it may report.

Like an httpx transport: the pool holds an Upstream and calls `run(job, token)`; it never
knows which provider's JSON is behind it. Each provider module classifies its own errors
into a FailureKind, which is all the pool needs to decide between retry and give up.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import DomainError, wire_enum
from ..http import Client, make_client
from ..types import Job
from .forms import Capacity, Field, Refusals, needed


@wire_enum
class FailureKind(enum.Enum):
    """Why an upstream call failed, as far as the pool and the caller are concerned."""

    BAD_REQUEST = "bad_request"  # the caller's input: not retried
    SAFETY = "safety"  # the model refused the content: not retried, not billed
    UNSUPPORTED = "unsupported"  # refused a field the gateway chose (`param`): remembered,
    # and the request goes to an upstream that takes it
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
    consumed: str | None = None  # the provider's own charge, where it reports one (defapi)


class Upstream(ABC):
    """One provider endpoint. Implementations are small and hold one HTTP client."""

    name: str
    kind: str
    #: how many images one call may ask for; n above it is split into several calls
    max_count_per_call: int = 1
    #: most reference images one edit may carry
    max_images: int = 16

    #: fields sent whenever a job needs them: what the provider's document promises, plus
    #: what is observed to work widely enough to be a safe default (see the README)
    default_fields: frozenset[Field] = frozenset({Field.MODEL})

    #: the longest one run() can take when the upstream bounds it whole itself (a single
    #: HTTP call under its timeout), else None; the pool adds no timer of its own for a
    #: run this bound ends before the request's deadline
    run_seconds: float | None = None

    def __init__(
        self, name: str, model_map: Mapping[str, str], *, fields: Iterable[Field] = ()
    ) -> None:
        self.name = name
        self._model_map = dict(model_map)
        # Fields configured on top of the defaults (`fields = [...]` in the upstream's table).
        self._fields = self.default_fields | frozenset(fields)
        #: what this upstream refused, per model and field, and how many images per call
        self.refusals = Refusals()
        self.capacity = Capacity(self.max_count_per_call)
        #: data: URI -> a short-lived public link to the same image, where the gateway can
        #: host uploads ([server] public_base_url); for providers that take only links
        self.host_upload: Callable[[str], str] | None = None
        #: calls sent again after meeting a stale keep-alive connection (not failures)
        self.stale_retries = 0

    def count_stale_retry(self) -> None:
        """One call was silently re-sent after a stale pooled connection."""
        self.stale_retries += 1

    def http_client(self, base_url: str, timeout: float, max_connections: int) -> Client:
        """The provider's client, bounded to `max_connections`, its stale-connection
        re-sends counted here."""
        self.max_connections = max_connections
        return make_client(
            base_url,
            timeout=timeout,
            max_connections=max_connections,
            on_stale=self.count_stale_retry,
        )

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
        missing = set(needed(job) - self.sendable(job.model))
        if self.host_upload is not None:
            missing.discard(Field.INLINE_IMAGES)  # sent as links to hosted copies instead
        missing.discard(Field.COUNT)  # n is split into more calls instead
        if missing:
            field = min(missing, key=lambda f: f.value)
            return field.param, f"{self.name} does not take {field.value} for {job.model}"
        return None

    def sendable(self, model: str) -> frozenset[Field]:
        """The fields this upstream may be sent for a model: its defaults and configured
        ones, less what it has refused lately."""
        if not self.refusals:  # nothing refused: the configured set (asked for on every call)
            return self._fields
        now = time.monotonic()
        return frozenset(f for f in self._fields if not self.refusals.refuses(model, f, now))

    def form(self, job: Job) -> frozenset[Field]:
        """The optional fields one call for this job carries: those it needs and may send.
        (Fields whose value is the provider's default are left out.)"""
        return needed(job) & self.sendable(job.model)

    def linked(self, job: Job) -> Job:
        """The job as this upstream may be sent it: uploads it will not take inline are
        replaced by links to copies the gateway hosts (see host_upload)."""
        host = self.host_upload
        if host is None or Field.INLINE_IMAGES not in needed(job) - self.sendable(job.model):
            return job
        images = tuple(host(i) if i.startswith("data:") else i for i in job.images)
        return dataclasses.replace(job, images=images)

    def per_call(self, model: str) -> int:
        """Images one call may ask for: declared, lowered by short answers, one where
        `count` is not to be sent."""
        if Field.COUNT not in self.sendable(model):
            return 1
        return self.capacity.per_call(model)

    @abstractmethod
    async def run(self, job: Job, token: str) -> UpstreamResult:
        """Make the job's images with this token, or raise UpstreamError."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release network resources."""
