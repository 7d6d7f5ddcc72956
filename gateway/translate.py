"""OpenAI request -> Job: model aliases, size -> aspect ratio and resolution, n, formats.

Pure functions only; every rule here has a table test in tests/test_translate.py.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping

from .errors import ModelNotFound, invalid
from .fields import MAX_N as _MAX_N
from .fields import OUTPUT_FORMATS as _OUTPUT_FORMATS
from .models import MODELS, base_model, nearest_aspect_ratio, produced_size, tier_for
from .types import Action, Composite, ImageRequest, Job, Output

# OpenAI's GPT image models always answer with b64_json; apps built on them read it blindly.
_B64_FAMILIES = ("gpt-image-*", "chatgpt-image-*")
_MAX_SIDE = 8192
_DIGITS = re.compile(r"[0-9]{1,6}")
# Added to a masked edit's prompt: the model never sees the mask (the gateway composites).
MASK_NOTE = "Change only the region described; keep everything else exactly as in the first image."


def resolve_model(requested: str | None, default: str, aliases: Mapping[str, str]) -> str:
    """The Nano Banana model for a requested name: itself, an alias target, or the default."""
    if requested is None or requested == "":
        return default
    if base_model(requested) in MODELS:
        return requested
    for pattern, target in aliases.items():
        if fnmatch.fnmatchcase(requested, pattern):
            return target
    raise ModelNotFound(
        requested,
        f"The model '{requested}' does not exist or you do not have access to it. "
        f"Available: {', '.join(MODELS)}, or an alias listed by GET /v1/models.",
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


def resolution_for(
    model: str, width: int, height: int, *, strict: bool = False
) -> tuple[str, bool]:
    """(tier, adjusted) for a requested size: the smallest tier whose picture covers 80% of
    the long side asked (models.tier_for); a model that cannot make it makes its largest
    instead (adjusted), or with `strict` the request is a 400 on size."""
    tier = tier_for(model, nearest_aspect_ratio(width, height), width, height)
    spec = MODELS[base_model(model)]
    if tier in spec.resolutions:
        return tier, False
    if strict:
        raise invalid(
            "size",
            f"Model {model} makes {'/'.join(spec.resolutions)} images only; size "
            f"'{width}x{height}' needs {tier}. Ask for a smaller size, size 'auto', or model "
            "nano-banana-2 / nano-banana-pro.",
        )
    return spec.resolutions[-1], True


def build_job(
    req: ImageRequest,
    *,
    default_model: str,
    aliases: Mapping[str, str],
    strict_size: bool = False,
) -> tuple[Job, Output]:
    """Translate a parsed OpenAI request into the upstream job and the answer's shape.

    Raises InvalidParameter naming the parameter for anything that would change the picture
    and cannot be honoured, ModelNotFound for a model nobody serves. Checks run in a fixed
    order (model, n, unsupported features, size, formats, images), so one request always
    gets the same error.
    """
    model = resolve_model(req.model, default_model, aliases)
    n = 1 if req.n is None else req.n
    if not 1 <= n <= _MAX_N:
        raise invalid("n", f"Invalid n {n}: must be between 1 and {_MAX_N}.")
    _refuse_unsupported(req)
    aspect_ratio, resolution, adjusted = _geometry(req, model, strict_size)
    response_format, output_format = _formats(req)
    if req.endpoint == "edits" and not req.images:
        raise invalid("image", "An edit needs at least one image.")
    action: Action = "edit" if req.endpoint == "edits" else "generate"
    job = Job(
        action=action,
        prompt=req.prompt if req.mask is None else f"{req.prompt}\n\n{MASK_NOTE}",
        model=model,
        count=n,
        images=req.images,
        aspect_ratio=aspect_ratio,
        resolution=resolution,
    )
    output = Output(
        response_format=response_format,  # type: ignore[arg-type]
        output_format=output_format,
        output_compression=req.output_compression,
        stream=req.stream,
        expected_size=_expected_size(req, job),
        quality=_quality(req.quality),
        size_adjusted=req.size if adjusted else None,
        measure_links=job.resolution not in (None, "1K"),
        composite=_composite(req),
    )
    return job, output


def _refuse_unsupported(req: ImageRequest) -> None:
    """What the Nano Banana models cannot do at all: refused rather than silently dropped."""
    if req.mask is not None and req.endpoint != "edits":
        raise invalid("mask", "A mask applies to edits only (/v1/images/edits).")
    if req.background == "transparent":
        raise invalid(
            "background",
            "Transparent backgrounds are not supported by the Nano Banana models; "
            "use background 'auto' or 'opaque'.",
        )


def _composite(req: ImageRequest) -> Composite | None:
    """A masked edit's answer is composited by the gateway; the mask applies to the first
    image, as OpenAI's does."""
    if req.mask is None or not req.images:
        return None
    return Composite(base=req.images[0], mask=req.mask)


def _geometry(req: ImageRequest, model: str, strict: bool) -> tuple[str | None, str | None, bool]:
    """(aspect ratio, resolution, adjusted) for the requested size; (None, None, False)
    for 'auto'. `adjusted`: the model makes a smaller picture than the size asks."""
    dims = parse_size(req.size)
    if dims is None:
        return None, None, False
    aspect_ratio = nearest_aspect_ratio(*dims)
    resolution, adjusted = resolution_for(model, *dims, strict=strict)
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
    return aspect_ratio, resolution, adjusted


def _quality(quality: str | None) -> str:
    """The quality the answer reports, in the words of OpenAI's answer (low, medium, high):
    the Nano Banana models have one quality, so this is what was asked, named as OpenAI
    names it ('auto' when nothing was)."""
    if quality in ("low", "medium", "high"):
        return quality
    return {"standard": "medium", "hd": "high", "xhigh": "high", "max": "high"}.get(
        quality or "", "auto"
    )


def _formats(req: ImageRequest) -> tuple[str, str | None]:
    """(response_format, output_format) of the answer; 'jpg' is read as 'jpeg'."""
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
    return response_format, output_format


def _expected_size(req: ImageRequest, job: Job) -> tuple[int, int] | None:
    """The pixel size the model will make, from Google's tables: an edit takes its first
    image's ratio (unknown when that image is a link)."""
    if job.action != "edit":
        return produced_size(job.model, job.aspect_ratio, job.resolution)
    if req.first_image_size is None:
        return None
    ratio = nearest_aspect_ratio(*req.first_image_size)
    return produced_size(job.model, ratio, job.resolution)
