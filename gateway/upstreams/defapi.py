"""defapi.org: submit with `POST /api/image/gen`, then poll `GET /api/task/query`.

The task may be unknown for a few seconds right after submit (observed), so 404 "task not
found" is tolerated for a grace period; polling backs off up to a ceiling and gives up at
a deadline. A `result` holding text instead of an image is a failure, not a success.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

from ..http import make_client
from ..models import takes_resolution
from ..types import Job
from ._common import call, check_count, clean_id, is_image_link, json_loads, parse_retry_after
from .base import FailureKind, Upstream, UpstreamError, UpstreamResult

DEFAULT_MODELS = {
    "nano-banana": "google/gemini-2.5-flash-image",
    "nano-banana-2": "google/nano-banana-2",
    "nano-banana-pro": "google/nano-banana-pro",
}
_SAFETY_WORDS = re.compile(r"safety|policy|prohibit|blocked|sensitive|inappropriate|refus", re.I)
_BALANCE_WORDS = re.compile(r"balance|credit|insufficient|quota|recharge", re.I)


def build_body(job: Job, model: str) -> dict[str, Any]:
    """The provider's submit JSON for a job (one image per task). Pure; table-tested."""
    body: dict[str, Any] = {"model": model, "prompt": job.prompt}
    if job.images:
        body["images"] = list(job.images)
    if job.aspect_ratio is not None:
        body["aspect_ratio"] = job.aspect_ratio
    if job.resolution is not None and takes_resolution(job.model):
        body["image_size"] = job.resolution.lower()
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
        if re.search(r"api key|unauthori[sz]ed|token", message, re.I):
            return FailureKind.AUTH
        return FailureKind.SERVER_ERROR
    return FailureKind.SERVER_ERROR


def read_task(data: Any, upstream: str, task_id: str) -> UpstreamResult | None:
    """A finished task's result, None while it runs, or raise for a failed one. Pure."""
    if not isinstance(data, dict):
        raise UpstreamError(
            FailureKind.MALFORMED, f"{upstream}: task answer without data", task_id=task_id
        )
    status = data.get("status")
    if status in ("pending", "submitted", "in_progress"):
        return None
    if status == "success":
        return _succeeded(data.get("result"), upstream, task_id)
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


class DefApiUpstream(Upstream):
    """`type = "defapi"`."""

    kind = "defapi"
    max_count_per_call = 1  # one task, one image: n is made with parallel tasks
    max_images = 4  # documented: reference images, at most 4

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
    ) -> None:
        super().__init__(name, {**DEFAULT_MODELS, **models})
        self.base_url = base_url
        self._timeout = timeout
        self._client = make_client(base_url, timeout=timeout, on_stale=self.count_stale_retry)
        self._poll_interval = poll_interval
        self._poll_max_interval = poll_max_interval
        self._poll_deadline = poll_deadline
        self._not_found_grace = not_found_grace

    async def run(self, job: Job, token: str) -> UpstreamResult:
        """Submit one task per image asked for and wait for all of them."""
        if job.count == 1:
            return await self._one(job, token)
        results = await asyncio.gather(*(self._one(job, token) for _ in range(job.count)))
        return UpstreamResult(
            images=[i for r in results for i in r.images], task_id=results[0].task_id
        )

    async def _one(self, job: Job, token: str) -> UpstreamResult:
        headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
        body = build_body(job, self.upstream_model(job.model))
        resp = await call(
            self._client,
            "POST",
            "/api/image/gen",
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
            message = str(payload.get("detail") or payload.get("message") or f"HTTP {resp.status}")
            if resp.status == 200 and payload.get("code") == 0:
                raise UpstreamError(
                    FailureKind.MALFORMED, f"{self.name}: submit without a usable task_id"
                )
            raise UpstreamError(
                classify_submit(resp.status, message),
                message,
                status=resp.status,
                code=str(payload.get("code")) if payload.get("code") is not None else None,
                retry_after=parse_retry_after(resp.headers.get("retry-after")),
            )
        result = await self._poll(task_id, headers)
        check_count(result.images, 1, self.name)  # one task makes one image
        return result

    async def _poll(self, task_id: str, headers: Mapping[str, str]) -> UpstreamResult:
        started = time.monotonic()
        interval = self._poll_interval
        while True:
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self._poll_max_interval)
            elapsed = time.monotonic() - started
            try:
                resp = await call(
                    self._client,
                    "GET",
                    "/api/task/query",
                    upstream=self.name,
                    timeout=self._timeout,
                    params={"task_id": task_id},
                    headers=headers,
                )
            except UpstreamError as exc:
                # A hiccup while polling does not lose the task: try again until the deadline.
                if exc.kind == FailureKind.MALFORMED or elapsed > self._poll_deadline:
                    exc.task_id = task_id
                    raise
                continue
            payload = json_loads(resp.body)
            if resp.status == 404:
                if elapsed <= self._not_found_grace and elapsed <= self._poll_deadline:
                    continue
                raise UpstreamError(
                    FailureKind.SERVER_ERROR,
                    f"{self.name}: task {task_id} not found",
                    status=404,
                    task_id=task_id,
                )
            if resp.status == 401:
                raise UpstreamError(
                    FailureKind.AUTH, "Invalid API key", status=401, task_id=task_id
                )
            if resp.status >= 500 or not isinstance(payload, dict):
                if elapsed > self._poll_deadline:
                    raise UpstreamError(
                        FailureKind.SERVER_ERROR,
                        f"{self.name}: task query keeps failing",
                        task_id=task_id,
                    )
                continue
            result = read_task(payload.get("data"), self.name, task_id)
            if result is not None:
                return result
            if time.monotonic() - started > self._poll_deadline:
                raise UpstreamError(
                    FailureKind.TIMEOUT,
                    f"{self.name}: task {task_id} not finished in time",
                    task_id=task_id,
                )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
