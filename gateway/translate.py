"""OpenAI request -> Job: model aliases, size -> aspect ratio and resolution, n, formats.

Pure functions only; every rule here has a table test in tests/test_translate.py.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping

from .errors import GatewayError, invalid, scrub
from .models import MODELS, base_model, nearest_aspect_ratio, produced_size
from .types import Action, ImageRequest, Job, Output
from .upstreams.base import FailureKind, UpstreamError

# OpenAI's GPT image models always answer with b64_json; apps built on them read it blindly.
_B64_FAMILIES = ("gpt-image-*", "chatgpt-image-*")
_OUTPUT_FORMATS = ("png", "jpeg", "webp")
_MAX_N = 10
_MAX_SIDE = 8192
_DIGITS = re.compile(r"[0-9]{1,6}")


def resolve_model(requested: str | None, default: str, aliases: Mapping[str, str]) -> str:
    """The Nano Banana model for a requested name: itself, an alias target, or the default."""
    if requested is None or requested == "":
        return default
    if base_model(requested) in MODELS:
        return requested
    for pattern, target in aliases.items():
        if fnmatch.fnmatchcase(requested, pattern):
            return target
    raise GatewayError(
        404,
        f"The model '{requested}' does not exist or you do not have access to it. "
        f"Available: {', '.join(MODELS)}, or an alias listed by GET /v1/models.",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def default_response_format(requested_model: str | None) -> str:
    """b64_json for GPT image model names (as OpenAI does), url otherwise."""
    if requested_model and any(fnmatch.fnmatchcase(requested_model, p) for p in _B64_FAMILIES):
        return "b64_json"
    return "url"


def parse_size(size: str | None) -> tuple[int, int] | None:
    """'1536x1024' -> (1536, 1024); 'auto' or None -> None; anything else -> 400 on size."""
    if size is None or size == "auto":
        return None
    parts = size.lower().split("x")
    # ASCII digits only: str.isdigit() also accepts superscripts that int() refuses.
    if len(parts) != 2 or not all(_DIGITS.fullmatch(p) for p in parts):
        raise invalid("size", f"Invalid size '{size}': use 'auto' or WIDTHxHEIGHT, e.g. 1024x1024.")
    w, h = int(parts[0]), int(parts[1])
    if w <= 0 or h <= 0 or max(w, h) > _MAX_SIDE:
        raise invalid("size", f"Invalid size '{size}': each side must be 1 to {_MAX_SIDE} pixels.")
    if max(w, h) > 3 * min(w, h):
        raise invalid(
            "size", f"Invalid size '{size}': the aspect ratio must be between 1:3 and 3:1."
        )
    return w, h


def resolution_for(width: int, height: int) -> str:
    """Resolution bucket from the long side: <=1024 -> 1K, <=2048 -> 2K, larger -> 4K."""
    long_side = max(width, height)
    if long_side <= 1024:
        return "1K"
    if long_side <= 2048:
        return "2K"
    return "4K"


def build_job(
    req: ImageRequest, *, default_model: str, aliases: Mapping[str, str]
) -> tuple[Job, Output]:
    """Translate a parsed OpenAI request into the upstream job and the answer's shape.

    Raises GatewayError (400/404) naming the parameter for anything that would change the
    picture and cannot be honoured.
    """
    model = resolve_model(req.model, default_model, aliases)
    spec = MODELS[base_model(model)]

    n = 1 if req.n is None else req.n
    if not 1 <= n <= _MAX_N:
        raise invalid("n", f"Invalid n {n}: must be between 1 and {_MAX_N}.")

    if req.mask:
        raise invalid(
            "mask",
            "Masks are not supported by the Nano Banana models: describe the region to change "
            "in the prompt instead, and send the edit without a mask.",
        )
    if req.background == "transparent":
        raise invalid(
            "background",
            "Transparent backgrounds are not supported by the Nano Banana models; "
            "use background 'auto' or 'opaque'.",
        )

    dims = parse_size(req.size)
    aspect_ratio: str | None = None
    resolution: str | None = None
    if dims is not None:
        aspect_ratio = nearest_aspect_ratio(*dims)
        resolution = resolution_for(*dims)
        if resolution not in spec.resolutions:
            raise invalid(
                "size",
                f"Model {model} makes {'/'.join(spec.resolutions)} images only; size "
                f"'{req.size}' needs {resolution}. Ask for a size up to 1024 on the long side, "
                "size 'auto', or model nano-banana-2 / nano-banana-pro.",
            )
        if req.endpoint == "edits" and req.first_image_size is not None:
            # The upstream edit keeps the first image's ratio; a different one would be a
            # silent change of the picture the caller asked for.
            first_ratio = nearest_aspect_ratio(*req.first_image_size)
            if first_ratio != aspect_ratio:
                raise invalid(
                    "size",
                    f"Edits keep the first image's aspect ratio ({first_ratio}); size "
                    f"'{req.size}' asks for {aspect_ratio}. "
                    f"Send size 'auto' or a {first_ratio} size.",
                )

    response_format = req.response_format or default_response_format(req.model)
    if response_format not in ("url", "b64_json"):
        raise invalid(
            "response_format",
            f"Invalid response_format '{response_format}': use 'url' or 'b64_json'.",
        )
    output_format = req.output_format
    if output_format == "jpg":
        output_format = "jpeg"
    if output_format is not None and output_format not in _OUTPUT_FORMATS:
        raise invalid(
            "output_format",
            f"Invalid output_format '{req.output_format}': use png, jpeg or webp.",
        )
    if req.output_compression is not None and not 0 <= req.output_compression <= 100:
        raise invalid("output_compression", "output_compression must be between 0 and 100.")
    if output_format not in (None, "png") and response_format == "url":
        raise invalid(
            "output_format",
            f"output_format '{output_format}' needs response_format 'b64_json': upstream links "
            "point at the provider's PNG and cannot be re-encoded.",
        )

    if req.endpoint == "edits":
        if not req.images:
            raise invalid("image", "An edit needs at least one image.")
        action: Action = "edit"
    else:
        action = "generate"

    job = Job(
        action=action,
        prompt=req.prompt,
        model=model,
        count=n,
        images=req.images,
        aspect_ratio=aspect_ratio,
        resolution=resolution,
    )
    expected: tuple[int, int] | None
    if action == "edit" and req.first_image_size is not None:
        expected = produced_size(model, nearest_aspect_ratio(*req.first_image_size), resolution)
    elif action == "edit":
        expected = None
    else:
        expected = produced_size(model, aspect_ratio, resolution)
    output = Output(
        response_format=response_format,  # type: ignore[arg-type]
        output_format=output_format,
        output_compression=req.output_compression,
        stream=req.stream,
        model_label=model,
        expected_size=expected,
    )
    return job, output


def split_count(n: int, per_call: int) -> list[int]:
    """How many images to ask of each upstream call: 10 with a cap of 4 -> [4, 4, 2]."""
    calls = [per_call] * (n // per_call)
    if n % per_call:
        calls.append(n % per_call)
    return calls


def error_for(err: UpstreamError, secrets: tuple[str, ...] = ()) -> GatewayError:
    """Upstream failure in, caller's OpenAI error out. Pure; table-tested.

    The caller's key is fine when the gateway's tokens are not, so token trouble is a 502,
    never a 401/403 that would make an SDK app think its own key is wrong.
    """
    message = scrub(err.message, secrets)
    headers: dict[str, str] = {}
    if err.task_id:
        headers["x-upstream-task-id"] = err.task_id
    if err.trace_id:
        headers["x-upstream-trace-id"] = err.trace_id
    kind = err.kind
    if kind is FailureKind.BAD_REQUEST:
        return GatewayError(
            400,
            f"The upstream rejected the request: {message}",
            param=err.param,
            code=err.code or "invalid_request",
            headers=headers,
        )
    if kind is FailureKind.SAFETY:
        return GatewayError(
            400,
            f"Your request was rejected by the safety system: {message}",
            code="content_policy_violation",
            headers=headers,
        )
    if kind is FailureKind.RATE_LIMITED:
        if err.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
        return GatewayError(
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
        return GatewayError(
            502,
            f"The upstream {what}; this is the gateway's problem, not your key's.",
            type="server_error",
            code="upstream_token_unusable",
            headers=headers,
        )
    if kind is FailureKind.TIMEOUT:
        return GatewayError(
            504,
            "The upstream did not finish the image in time.",
            type="server_error",
            code="upstream_timeout",
            headers=headers,
        )
    return GatewayError(
        502,
        f"The upstream failed: {message}",
        type="server_error",
        code="upstream_error",
        headers=headers,
    )
