"""AceDataCloud and XHuoAPI: one synchronous `POST {base}/nano-banana/images` call.

XHuoAPI serves the very same API (its docs are the same text) under /v1, so one module
serves both types; only the default base URL differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..http import MAX_CONNECTIONS, resolved
from ..models import base_model, takes_resolution
from ..types import Job
from ._common import (
    call,
    clean_id,
    is_image_link,
    json_loads,
    keep_asked,
    parse_retry_after,
    translation_refused,
    without_token_ids,
)
from .base import FailureKind, Upstream, UpstreamError, UpstreamResult
from .forms import Field

DEFAULT_MODELS = {
    m: m for m in ("nano-banana", "nano-banana-2", "nano-banana-pro", "nano-banana-2-lite")
}


def build_body(job: Job, model: str, form: frozenset[Field]) -> dict[str, Any]:
    """The provider's JSON for a job, carrying the optional fields in `form` (what the job
    needs and this upstream may be sent: Upstream.form). Pure; table-tested.

    Per the reference (seeds/004): `aspect_ratio` and `resolution` work only for generate
    (an edit takes the first image's), `resolution` only for the models that have tiers;
    `count` is in the examples, not the reference, so it is sent only when n > 1."""
    body: dict[str, Any] = {"action": job.action, "prompt": job.prompt, "model": model}
    if Field.COUNT in form:
        body["count"] = job.count
    if job.action == "edit":
        body["image_urls"] = list(job.images)
    elif Field.ASPECT_RATIO in form and job.aspect_ratio is not None:
        body["aspect_ratio"] = job.aspect_ratio
    if (
        job.action == "generate"
        and Field.RESOLUTION in form
        and job.resolution is not None
        and takes_resolution(job.model)
    ):
        body["resolution"] = job.resolution
    return body


def classify(status: int, code: str | None) -> FailureKind:
    """Map the provider's status and error code to a FailureKind. Pure; table-tested."""
    code = code or ""
    if status == 401:
        return FailureKind.AUTH
    if status == 403:
        if code == "used_up":
            return FailureKind.BALANCE
        if code == "forbidden":
            return FailureKind.SAFETY
        return FailureKind.AUTH
    if status == 429:
        return FailureKind.RATE_LIMITED
    if status == 400:
        # 'no_token' and 'disabled' are about the gateway's credentials, not the caller's
        # request; 'api_not_implemented' means this provider can't, another may.
        if code in ("no_token", "disabled"):
            return FailureKind.AUTH
        if code == "api_not_implemented":
            return FailureKind.SERVER_ERROR
        return FailureKind.BAD_REQUEST
    if status == 413:
        return FailureKind.BAD_REQUEST
    if status == 404 or status >= 500:
        return FailureKind.SERVER_ERROR
    if 400 <= status < 500:
        return FailureKind.BAD_REQUEST
    return FailureKind.MALFORMED


def _image_links(data: Any) -> list[str]:
    """The image links of a successful answer's `data`; anything else in it is ignored."""
    if not isinstance(data, list):
        return []
    return [
        d["image_url"] for d in data if isinstance(d, dict) and is_image_link(d.get("image_url"))
    ]


def parse_answer(
    status: int, payload: Any, retry_after: str | None, upstream: str
) -> UpstreamResult:
    """Read the provider's answer: a result, or raise a classified UpstreamError."""
    if not isinstance(payload, dict):
        raise UpstreamError(
            FailureKind.MALFORMED if status < 500 else FailureKind.SERVER_ERROR,
            f"{upstream}: answered HTTP {status} with a body that is not JSON",
            status=status,
        )
    task_id = clean_id(payload.get("task_id"))
    trace_id = clean_id(payload.get("trace_id"))
    if status == 200 and payload.get("success") is True:
        urls = _image_links(payload.get("data"))
        if not urls:
            raise UpstreamError(
                FailureKind.MALFORMED,
                f"{upstream}: success without any image",
                status=status,
                task_id=task_id,
                trace_id=trace_id,
            )
        return UpstreamResult(images=urls, task_id=task_id, trace_id=trace_id)
    raw_err = payload.get("error")
    err: dict[str, Any] = raw_err if isinstance(raw_err, dict) else {}
    code = err.get("code") if isinstance(err.get("code"), str) else None
    message = str(err["message"]) if isinstance(err.get("message"), str) else f"HTTP {status}"
    kind = classify(status if status != 200 else 500, code)
    raise UpstreamError(
        kind,
        message,
        status=status,
        code=code,
        retry_after=parse_retry_after(retry_after),
        param="image" if status == 413 else None,
        task_id=task_id,
        trace_id=trace_id,
    )


def refusal_of_translation(err: UpstreamError, job: Job) -> UpstreamError:
    """A 400 about a field the gateway chose (the model id, aspect ratio, resolution,
    count, inline images) is the gateway's translation refused, not the caller's fault:
    UNSUPPORTED naming the field. Pure; table-tested."""
    if err.status == 413:
        return err  # the caller's image is too large, as the reference says
    kind, param = translation_refused(err.kind, err.message, job)
    if kind is err.kind:
        return err
    return UpstreamError(
        kind,
        err.message,
        status=err.status,
        code=err.code,
        param=param,
        task_id=err.task_id,
        trace_id=err.trace_id,
    )


class AceDataUpstream(Upstream):
    """`type = "acedata"` and `type = "xhuoapi"`."""

    max_count_per_call = 4  # the provider's guide: count 1-4 (lowered when answers fall short)
    # The reference documents model, aspect_ratio, resolution and image_urls (links or
    # data: URIs); count is in its examples and guide. All are sent by default; a refusal of
    # any is learned per model.
    default_fields = frozenset(Field)

    def __init__(
        self,
        name: str,
        kind: str,
        base_url: str,
        *,
        timeout: float,
        models: Mapping[str, str],
        fields: Iterable[Field] = (),
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(name, {**DEFAULT_MODELS, **models}, fields=fields)
        self.kind = kind
        self.base_url = base_url
        self._timeout = timeout
        self.run_seconds = timeout  # run() is one call under this timeout
        self._client = self.http_client(base_url, timeout, max_connections)
        self._images_url = resolved(self._client, "/nano-banana/images")

    def upstream_model(self, model: str) -> str:
        """Variants like 'nano-banana-pro:official' pass through when the base is served."""
        if model in self._model_map:
            return self._model_map[model]
        return self._model_map[base_model(model)] + model[len(base_model(model)) :]

    def cannot_serve(self, job: Job) -> tuple[str, str] | None:
        """As the base, but a ':variant' of a served model is served too."""
        if job.model not in self._model_map and base_model(job.model) in self._model_map:
            return None if len(job.images) <= self.max_images else ("image", "too many images")
        return super().cannot_serve(job)

    async def run(self, job: Job, token: str) -> UpstreamResult:
        """One synchronous call; the provider answers when the images exist."""
        job = self.linked(job)
        body = build_body(job, self.upstream_model(job.model), self.form(job))
        answer = await call(
            self._client,
            "POST",
            self._images_url,
            upstream=self.name,
            timeout=self._timeout,
            json=body,
            headers={"authorization": f"Bearer {token}", "accept": "application/json"},
        )
        try:
            result = parse_answer(
                answer.status, json_loads(answer.body), answer.headers.get("retry-after"), self.name
            )
        except UpstreamError as exc:
            raise without_token_ids(refusal_of_translation(exc, job), token) from None
        result.images = keep_asked(result.images, job.count)
        result.task_id = clean_id(result.task_id, token)
        result.trace_id = clean_id(result.trace_id, token)
        return result

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
