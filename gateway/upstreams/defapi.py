"""defapi.org: submit with `POST /api/image/gen`, then poll `GET /api/task/query`.

What is sent rests on the provider's own document (seeds/003): `model` (one of the two ids
it lists), `prompt`, `images`. `aspect_ratio` and `image_size` are not in it; they are sent
only where an upstream's `fields` asks for them. A 400 about a field the gateway chose is
reported as UNSUPPORTED (the pool learns it and moves on), not as the caller's fault.

A submitted task is paid for: once one exists, nothing is made elsewhere until its fate is
known or the poll deadline passes. The task may be unknown for a few seconds right after
submit (observed), so 404 "task not found" is first polled through a grace period; after it,
and while the query refuses a token the submit just accepted, the task is polled on at the
slowest pace until the deadline. A `result` holding text instead of an image is a refusal.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from ..http import MAX_CONNECTIONS, resolved
from ..models import takes_resolution
from ..types import Job
from ._common import (
    call,
    clean_id,
    is_image_link,
    json_loads,
    keep_asked,
    parse_retry_after,
    translation_refused,
)
from .base import FailureKind, Upstream, UpstreamError, UpstreamResult
from .forms import Field

log = logging.getLogger("gateway.upstreams")

# The document's "Supported models" list: google/gempix2 (on the page titled "Nano Banana
# Pro API", in every example) and google/gemini-2.5-flash-image. It names no id for
# nano-banana-2; an upstream that has one configures it (`models = {...}`).
DEFAULT_MODELS = {
    "nano-banana": "google/gemini-2.5-flash-image",
    "nano-banana-pro": "google/gempix2",
}
_SAFETY_WORDS = re.compile(r"safety|policy|prohibit|blocked|sensitive|inappropriate|refus", re.I)
_BALANCE_WORDS = re.compile(r"balance|credit|insufficient|quota|recharge", re.I)
_AUTH_WORDS = re.compile(r"api key|unauthori[sz]ed|token", re.I)
# Words of a refused request inside a 200 answer with code != 0 (there is no code table).
_REQUEST_WORDS = re.compile(
    r"required|invalid|unknown|unsupported|not supported|not allowed|must be|parameter|field",
    re.I,
)
# The document's `consumed` is a decimal string ("0.500000"); anything else is not repeated.
_CONSUMED = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")
_RUNNING = ("pending", "submitted", "in_progress")


def build_body(job: Job, model: str, form: frozenset[Field]) -> dict[str, Any]:
    """The provider's submit JSON for a job (one image per task), carrying the optional
    fields in `form` (what the job needs and this upstream may be sent: Upstream.form).
    Pure; table-tested.

    Reference images go as given: a job with data: URIs only reaches an upstream whose
    form may carry them (Upstream.cannot_serve)."""
    body: dict[str, Any] = {"model": model, "prompt": job.prompt}
    if job.images:
        body["images"] = list(job.images)
    if Field.ASPECT_RATIO in form and job.aspect_ratio is not None:
        body["aspect_ratio"] = job.aspect_ratio
    if Field.RESOLUTION in form and job.resolution is not None and takes_resolution(job.model):
        body["image_size"] = job.resolution.lower()  # observed values are lower-case
    return body


def classify_submit(status: int, message: str) -> FailureKind:
    """Map a failed submit to a FailureKind. Pure; table-tested."""
    if status == 401:
        return FailureKind.AUTH
    if status in (402, 403):
        return (
            FailureKind.BALANCE
            if _BALANCE_WORDS.search(message) or status == 402
            else FailureKind.AUTH
        )
    if status == 429:
        return FailureKind.RATE_LIMITED
    if 400 <= status < 500:
        if _BALANCE_WORDS.search(message):
            return FailureKind.BALANCE
        return FailureKind.BAD_REQUEST
    if status == 200:
        # code != 0 inside a 200: read the words, since there is no documented code table.
        if _BALANCE_WORDS.search(message):
            return FailureKind.BALANCE
        if _AUTH_WORDS.search(message):
            return FailureKind.AUTH
        if _REQUEST_WORDS.search(message):
            return FailureKind.BAD_REQUEST
        return FailureKind.SERVER_ERROR
    return FailureKind.SERVER_ERROR


def refusal(status: int, message: str, job: Job) -> tuple[FailureKind, str | None]:
    """A failed submit's kind and, for UNSUPPORTED, the Field value it refused. A refused
    request is the caller's (BAD_REQUEST) only when it is about the caller's own input;
    about a field the gateway chose, it is the translation that was refused. Pure."""
    return translation_refused(classify_submit(status, message), message, job)


def task_answer(payload: Any) -> dict[str, Any] | None:
    """The task object of a query answer: inside `data` (`{"code": 0, "data": {...}}`), or
    the answer itself in the callback payload's documented shape; None when neither."""
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    if isinstance(data, dict):
        return data
    if "status" in payload and "task_id" in payload:
        return payload
    return None


def read_consumed(value: object) -> str | None:
    """The task's `consumed` credits if it is a short decimal string, else None. Pure."""
    return value if isinstance(value, str) and _CONSUMED.fullmatch(value) else None


def read_task(data: Any, upstream: str, task_id: str) -> UpstreamResult | None:
    """A finished task's result, None while it runs, or raise for a failed one. Pure."""
    if not isinstance(data, dict):
        raise UpstreamError(
            FailureKind.MALFORMED, f"{upstream}: task answer without data", task_id=task_id
        )
    answered = data.get("task_id")
    if isinstance(answered, str) and answered != task_id:
        # Another task's images are never handed to this caller.
        raise UpstreamError(
            FailureKind.MALFORMED, f"{upstream}: the answer is for another task", task_id=task_id
        )
    status = data.get("status")
    if status in _RUNNING:
        return None
    if status == "success":
        result = _succeeded(data.get("result"), upstream, task_id)
        result.consumed = read_consumed(data.get("consumed"))
        return result
    if status == "failed":
        reason = data.get("status_reason")
        message = reason.get("message") if isinstance(reason, dict) else None
        message = message if isinstance(message, str) and message else "the task failed"
        kind = FailureKind.SAFETY if _SAFETY_WORDS.search(message) else FailureKind.SERVER_ERROR
        raise UpstreamError(kind, message, task_id=task_id)
    raise UpstreamError(
        FailureKind.MALFORMED, f"{upstream}: unknown task status {status!r}", task_id=task_id
    )


def _succeeded(result: Any, upstream: str, task_id: str) -> UpstreamResult:
    """A successful task's images; text instead of an image is the model refusing."""
    items = [r for r in result if isinstance(r, dict)] if isinstance(result, list) else []
    images = [r["image"] for r in items if is_image_link(r.get("image"))]
    if images:
        return UpstreamResult(images=images, task_id=task_id)
    texts = [r.get("text") for r in items if r.get("text")]
    if texts:
        raise UpstreamError(
            FailureKind.SAFETY,
            f"The model answered with text instead of an image: {str(texts[0])[:300]}",
            task_id=task_id,
        )
    raise UpstreamError(
        FailureKind.MALFORMED, f"{upstream}: task succeeded without an image", task_id=task_id
    )


class Waiting(enum.Enum):
    """Why a poll brought no result yet."""

    RUNNING = "running"
    NOT_FOUND = "not_found"  # 404: not visible yet, or lost; it may still finish
    REFUSED = "refused"  # 401/403 for a task this very token submitted
    UNREADABLE = "unreadable"  # 5xx, 429, an answer without a task in it
    UNREACHABLE = "unreachable"  # the query call itself failed (timeout, connection)


# Why a task's fate is unknown, for the log.
_UNKNOWN_WHY = {
    Waiting.NOT_FOUND: "is still not found past the grace period",
    Waiting.REFUSED: "is refused to the token that submitted it",
}


def read_poll(status: int, payload: Any, upstream: str, task_id: str) -> UpstreamResult | Waiting:
    """One query answer: the result, why there is none yet, or raise for a task that
    failed. Pure; table-tested."""
    if status == 404:
        return Waiting.NOT_FOUND
    if status in (401, 403):
        return Waiting.REFUSED
    task = task_answer(payload) if 200 <= status < 300 else None
    if task is None:
        return Waiting.UNREADABLE
    result = read_task(task, upstream, task_id)
    return Waiting.RUNNING if result is None else result


def gave_up(waiting: Waiting, upstream: str, task_id: str) -> UpstreamError:
    """The failure of a task whose poll deadline passed, by what the last poll saw. Pure.

    Not AUTH for a refused query: the submit with this very token was accepted, so the
    token is not known to be bad, and AUTH would bench it. TIMEOUT says what is known: the
    task's fate did not become known in time."""
    if waiting is Waiting.UNREADABLE:
        return UpstreamError(
            FailureKind.SERVER_ERROR, f"{upstream}: task query keeps failing", task_id=task_id
        )
    why = {
        Waiting.RUNNING: "not finished in time",
        Waiting.NOT_FOUND: "still not found at the poll deadline",
        Waiting.REFUSED: "unknown: the task query kept refusing the token that submitted it",
    }.get(waiting, "not finished in time")
    return UpstreamError(FailureKind.TIMEOUT, f"{upstream}: task {task_id} {why}", task_id=task_id)


def merged(outcomes: Sequence[UpstreamResult | BaseException]) -> UpstreamResult:
    """One result of parallel tasks: every image made (fewer than asked is legal, and what
    was made is paid for, so it is not thrown away for a sibling's failure); the first
    failure only when nothing was made. Pure."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, UpstreamError):
            raise outcome  # a bug or a cancellation, not the provider's answer
    results = [o for o in outcomes if isinstance(o, UpstreamResult)]
    if not results:
        raise next(o for o in outcomes if isinstance(o, UpstreamError))
    return UpstreamResult(
        images=[i for r in results for i in r.images],
        task_id=results[0].task_id,
        consumed=total_consumed([r.consumed for r in results]),
    )


def total_consumed(charges: Sequence[str | None]) -> str | None:
    """The sum of tasks' charges; None when any is unknown (a part is not the whole)."""
    known = [Decimal(c) for c in charges if c is not None]
    return format(sum(known, Decimal(0)), "f") if len(known) == len(charges) else None


class DefApiUpstream(Upstream):
    """`type = "defapi"`."""

    kind = "defapi"
    max_count_per_call = 1  # one task, one image: n is made with parallel tasks
    max_images = 4  # documented: reference images, at most 4
    # `model` is documented; data: URIs in `images` are not (it says URLs) but public
    # clients send them, and a refusal of them is learned (UNSUPPORTED inline_images).
    default_fields = frozenset({Field.MODEL, Field.INLINE_IMAGES})

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout: float,
        models: Mapping[str, str],
        poll_interval: float,
        poll_max_interval: float,
        poll_deadline: float,
        not_found_grace: float,
        fields: Iterable[Field] = (),
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(name, {**DEFAULT_MODELS, **models}, fields=fields)
        self.base_url = base_url
        self._timeout = timeout
        self._client = self.http_client(base_url, timeout, max_connections)
        self._submit_url = resolved(self._client, "/api/image/gen")
        self._query_url = resolved(self._client, "/api/task/query")
        self._poll_interval = poll_interval
        self._poll_max_interval = poll_max_interval
        self._poll_deadline = poll_deadline
        self._not_found_grace = not_found_grace

    async def run(self, job: Job, token: str) -> UpstreamResult:
        """Submit one task per image asked for and wait for all of them."""
        job = self.linked(job)
        if job.count == 1:
            return await self._one(job, token)
        one = job.with_count(1)
        outcomes = await asyncio.gather(
            *(self._one(one, token) for _ in range(job.count)), return_exceptions=True
        )
        return merged(outcomes)

    async def _one(self, job: Job, token: str) -> UpstreamResult:
        headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
        body = build_body(job, self.upstream_model(job.model), self.form(job))
        resp = await call(
            self._client,
            "POST",
            self._submit_url,
            upstream=self.name,
            timeout=self._timeout,
            json=body,
            headers=headers,
        )
        payload = json_loads(resp.body)
        if not isinstance(payload, dict):
            raise UpstreamError(
                FailureKind.SERVER_ERROR if resp.status >= 500 else FailureKind.MALFORMED,
                f"{self.name}: submit answered HTTP {resp.status} with a non-JSON body",
                status=resp.status,
            )
        raw_data = payload.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        task_id = clean_id(data.get("task_id"), token)
        if resp.status != 200 or payload.get("code") != 0 or task_id is None:
            if resp.status == 200 and payload.get("code") == 0:
                raise UpstreamError(
                    FailureKind.MALFORMED, f"{self.name}: submit without a usable task_id"
                )
            message = str(payload.get("detail") or payload.get("message") or f"HTTP {resp.status}")
            kind, param = refusal(resp.status, message, job)
            # The provider's numeric `code` ("1" for every error) is not an OpenAI code and
            # is not passed on.
            raise UpstreamError(
                kind,
                message,
                status=resp.status,
                param=param,
                retry_after=parse_retry_after(resp.headers.get("retry-after")),
            )
        result = await self._poll(task_id, headers)
        # One task makes one image; should it hand back more, the one asked for is kept
        # rather than the paid-for task thrown away and made again elsewhere.
        result.images = keep_asked(result.images, 1)
        return result

    async def _poll(self, task_id: str, headers: Mapping[str, str]) -> UpstreamResult:
        started = time.monotonic()
        interval = wait = self._poll_interval
        unknown = False
        while True:
            await asyncio.sleep(wait)
            try:
                resp = await call(
                    self._client,
                    "GET",
                    self._query_url,
                    upstream=self.name,
                    timeout=self._timeout,
                    params={"task_id": task_id},
                    headers=headers,
                )
            except UpstreamError as exc:
                # A hiccup while polling does not lose the task: try again until the deadline.
                exc.task_id = task_id
                if exc.kind == FailureKind.MALFORMED or self._late(started):
                    raise
                outcome: UpstreamResult | Waiting = Waiting.UNREACHABLE
            else:
                outcome = read_poll(resp.status, json_loads(resp.body), self.name, task_id)
            if isinstance(outcome, UpstreamResult):
                return outcome
            if self._late(started):
                raise gave_up(outcome, self.name, task_id)
            was_unknown = unknown
            unknown = self._unknown(outcome, time.monotonic() - started)
            if unknown and not was_unknown:
                log.warning(
                    "upstream %s: task %s %s; polling it on until the deadline rather than "
                    "making it again elsewhere",
                    self.name, task_id, _UNKNOWN_WHY[outcome],
                )  # fmt: skip
            # A task in an unknown state is polled at the slowest pace: it is being waited
            # out, not expected any second.
            wait = self._poll_max_interval if unknown else interval
            interval = min(interval * 1.5, self._poll_max_interval)

    def _late(self, started: float) -> bool:
        return time.monotonic() - started > self._poll_deadline

    def _unknown(self, waiting: Waiting, elapsed: float) -> bool:
        """True when the task's fate is unknown, not merely pending: 404 past the grace
        period, or the query refusing the token that submitted it."""
        if waiting is Waiting.NOT_FOUND:
            return elapsed > self._not_found_grace
        return waiting is Waiting.REFUSED

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
