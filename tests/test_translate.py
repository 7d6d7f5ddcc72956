"""Table tests for the OpenAI request -> Job translation (gateway/translate.py, gateway/models.py).

Expected values come from the OpenAI Images API rules and Google's published size tables
(/work/shared/openai-images.md, /work/shared/upstreams.md §4), typed out here independently
of gateway/models.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.api.errors import openai_error as error_for
from gateway.config import DEFAULT_ALIASES
from gateway.errors import InvalidParameter
from gateway.fanout import split_count
from gateway.models import nearest_aspect_ratio, produced_size
from gateway.translate import (
    build_job,
    default_response_format,
    parse_size,
    resolution_for,
    resolve_model,
)
from gateway.types import ImageRequest, Job, Output
from gateway.upstreams.base import FailureKind, UpstreamError
from tests.support.errors import raises_openai_error

PNG_URI = "data:image/png;base64,iVBORw0KGgo="
IMAGE_URL = "https://cdn.example.com/in.png"

# Google's tables (upstreams.md §4), at 1K.
FLASH_25_1K = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
GEMINI_3_1K = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}


def request(**fields: Any) -> ImageRequest:
    """An ImageRequest with a prompt; generations unless endpoint says otherwise."""
    fields.setdefault("endpoint", "generations")
    fields.setdefault("prompt", "a banana on a table")
    return ImageRequest(**fields)


def translate(req: ImageRequest, default_model: str = "nano-banana") -> tuple[Job, Output]:
    """build_job with the shipped default aliases."""
    return build_job(req, default_model=default_model, aliases=DEFAULT_ALIASES)


# --------------------------------------------------------------------------- parse_size


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        pytest.param(None, None, id="none-is-auto"),
        pytest.param("auto", None, id="auto"),
        pytest.param("1024x1024", (1024, 1024), id="square"),
        pytest.param("1536x1024", (1536, 1024), id="landscape"),
        pytest.param("1024x1536", (1024, 1536), id="portrait"),
        pytest.param("256x256", (256, 256), id="legacy-256"),
        pytest.param("1792x1024", (1792, 1024), id="dalle3-wide"),
        pytest.param("1024X768", (1024, 768), id="uppercase-x"),
        pytest.param("3072x1024", (3072, 1024), id="exactly-3-to-1"),
        pytest.param("1024x3072", (1024, 3072), id="exactly-1-to-3"),
        pytest.param("8192x4096", (8192, 4096), id="max-side"),
        pytest.param("1x1", (1, 1), id="one-pixel"),
    ],
)
def test_parse_size_accepts(size: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize(
    "size",
    [
        pytest.param("", id="empty"),
        pytest.param("big", id="word"),
        pytest.param("1024", id="one-number"),
        pytest.param("1024x", id="missing-height"),
        pytest.param("x1024", id="missing-width"),
        pytest.param("1024x1024x3", id="three-parts"),
        pytest.param("1024*1024", id="star-separator"),
        pytest.param("1024 x 1024", id="spaces"),
        pytest.param("-1024x1024", id="negative"),
        pytest.param("1024.5x1024", id="fraction"),
        pytest.param("0x1024", id="zero-width"),
        pytest.param("1024x0", id="zero-height"),
        pytest.param("9000x4500", id="side-over-8192"),
        pytest.param("3073x1024", id="wider-than-3-to-1"),
        pytest.param("1024x3073", id="taller-than-1-to-3"),
        pytest.param("4000x1000", id="4-to-1"),
        pytest.param("1024x¹⁰²⁴", id="superscript-digits"),
        pytest.param("１０２４x１０２４", id="fullwidth-digits"),
    ],
)
def test_parse_size_rejects_with_400_on_size(size: str) -> None:
    with raises_openai_error() as caught:
        parse_size(size)
    assert caught.value.status == 400
    assert caught.value.param == "size"
    assert caught.value.type == "invalid_request_error"


# --------------------------------------------------------------------------- aspect ratio


@pytest.mark.parametrize(
    ("width", "height", "ratio"),
    [
        pytest.param(1536, 1024, "3:2", id="1536x1024"),
        pytest.param(1792, 1024, "16:9", id="1792x1024"),
        pytest.param(1536, 864, "16:9", id="1536x864"),
        pytest.param(1152, 864, "4:3", id="1152x864"),
        pytest.param(1024, 1536, "2:3", id="1024x1536"),
        pytest.param(1024, 1792, "9:16", id="1024x1792"),
        pytest.param(1024, 1024, "1:1", id="1024x1024"),
        pytest.param(256, 256, "1:1", id="256x256"),
        pytest.param(512, 512, "1:1", id="512x512"),
        pytest.param(864, 1152, "3:4", id="864x1152"),
        pytest.param(1024, 768, "4:3", id="1024x768"),
        pytest.param(1920, 1080, "16:9", id="1920x1080"),
        pytest.param(1080, 1920, "9:16", id="1080x1920"),
        pytest.param(3072, 1024, "16:9", id="3-to-1-lands-on-widest"),
        pytest.param(1024, 3072, "9:16", id="1-to-3-lands-on-tallest"),
        pytest.param(1100, 1024, "1:1", id="nearly-square"),
        pytest.param(1264, 848, "3:2", id="gemini-3-2"),
        pytest.param(1184, 864, "4:3", id="flash-4-3"),
    ],
)
def test_nearest_aspect_ratio(width: int, height: int, ratio: str) -> None:
    assert nearest_aspect_ratio(width, height) == ratio


def test_nearest_aspect_ratio_honours_choices() -> None:
    wide = ("1:1", "16:9", "21:9")
    assert nearest_aspect_ratio(2560, 1080, wide) == "21:9"
    assert nearest_aspect_ratio(2560, 1080) == "16:9"


# --------------------------------------------------------------------------- resolution


# The tier each size needs, worked out by hand from Google's 1K tables (2K doubles, 4K
# quadruples each side): the smallest whose long side at the size's ratio covers 80% of
# the long side asked. Gemini 3 (nano-banana-2, -pro, -2-lite) and Gemini 2.5 Flash
# (nano-banana) differ only where 80% falls between their 1K sizes.
TIERS = [
    # size,       ratio,  Gemini 3 tier, Flash 2.5 tier, why
    ("256x256", "1:1", "1K", "1K"),  # 1024 >= 205
    ("512x512", "1:1", "1K", "1K"),
    ("1024x1024", "1:1", "1K", "1K"),  # 1024 >= 819
    ("1536x1024", "3:2", "1K", "1K"),  # 1264 / 1248 >= 1229
    ("1024x1536", "2:3", "1K", "1K"),
    ("1536x864", "16:9", "1K", "1K"),  # 1376 / 1344 >= 1229
    ("1280x720", "16:9", "1K", "1K"),
    ("1792x1024", "16:9", "2K", "2K"),  # 1376 / 1344 < 1434 <= 2752 / 2688
    ("1024x1792", "9:16", "2K", "2K"),
    ("2048x2048", "1:1", "2K", "2K"),  # 1024 < 1638 <= 2048
    ("2560x1440", "16:9", "2K", "2K"),  # 2752 >= 2048: not 4K
    ("1600x1200", "4:3", "2K", "2K"),  # 1200 / 1184 < 1280
    ("3840x2160", "16:9", "4K", "4K"),  # 2752 < 3072 <= 5504
    ("4096x4096", "1:1", "4K", "4K"),  # 2048 < 3277
]
MULTI_TIER = ("nano-banana-2", "nano-banana-pro")


@pytest.mark.parametrize(
    ("model", "size", "ratio", "tier", "adjusted"),
    [
        pytest.param(m, size, ratio, g3, False, id=f"{m}-{size}")
        for m in MULTI_TIER
        for size, ratio, g3, _flash in TIERS
    ]
    + [
        # 1K only: a size that needs more is made at 1K, and the answer says so.
        pytest.param("nano-banana", size, ratio, "1K", flash != "1K", id=f"nano-banana-{size}")
        for size, ratio, _g3, flash in TIERS
    ]
    + [
        pytest.param("nano-banana-2-lite", size, ratio, "1K", g3 != "1K", id=f"lite-{size}")
        for size, ratio, g3, _flash in TIERS
    ],
)
def test_the_tier_each_size_needs(
    model: str, size: str, ratio: str, tier: str, adjusted: bool
) -> None:
    width, height = (int(x) for x in size.split("x"))
    assert nearest_aspect_ratio(width, height) == ratio
    assert resolution_for(model, width, height) == (tier, adjusted)
    job, output = translate(request(model=model, size=size))
    assert (job.aspect_ratio, job.resolution) == (ratio, tier)
    assert output.size_adjusted == (size if adjusted else None)
    # What the answer reports: Google's picture at that ratio and tier.
    assert output.expected_size == produced_size(model, ratio, tier)


@pytest.mark.parametrize(
    ("model", "size"), [("nano-banana", "1792x1024"), ("nano-banana-2-lite", "2048x2048")]
)
def test_strict_size_keeps_the_refusal(model: str, size: str) -> None:
    req = request(model=model, size=size)
    with pytest.raises(InvalidParameter) as refused:
        build_job(req, default_model="nano-banana", aliases=DEFAULT_ALIASES, strict_size=True)
    assert refused.value.param == "size"
    assert "makes 1K images only" in refused.value.message
    # The same size the model can make is fine in strict mode.
    ok = request(model=model, size="1536x1024")
    job, _ = build_job(ok, default_model="nano-banana", aliases=DEFAULT_ALIASES, strict_size=True)
    assert job.resolution == "1K"


@pytest.mark.parametrize(
    ("quality", "reported"),
    [(None, "auto"), ("auto", "auto"), ("low", "low"), ("medium", "medium"), ("high", "high"),
     ("standard", "medium"), ("hd", "high"), ("xhigh", "high"), ("max", "high")],
)  # fmt: skip
def test_the_quality_the_answer_reports(quality: str | None, reported: str) -> None:
    _job, output = translate(request(quality=quality))
    assert output.quality == reported


# --------------------------------------------------------------------------- produced_size


@pytest.mark.parametrize(
    ("model", "ratio", "expected"),
    [pytest.param("nano-banana", r, s, id=f"nano-banana-{r}") for r, s in FLASH_25_1K.items()]
    + [
        pytest.param(m, r, s, id=f"{m}-{r}")
        for m in ("nano-banana-2", "nano-banana-pro")
        for r, s in GEMINI_3_1K.items()
    ],
)
def test_produced_size_matches_googles_1k_tables(
    model: str, ratio: str, expected: tuple[int, int]
) -> None:
    assert produced_size(model, ratio, "1K") == expected
    assert produced_size(model, ratio, None) == expected


@pytest.mark.parametrize(
    ("model", "ratio", "resolution", "expected"),
    [
        pytest.param("nano-banana-pro", "16:9", "2K", (2752, 1536), id="pro-16-9-2K"),
        pytest.param("nano-banana-pro", "16:9", "4K", (5504, 3072), id="pro-16-9-4K"),
        pytest.param("nano-banana-2", "3:2", "2K", (2528, 1696), id="nb2-3-2-2K"),
        pytest.param("nano-banana-2", "1:1", "4K", (4096, 4096), id="nb2-1-1-4K"),
        pytest.param("nano-banana-2", "9:16", "2K", (1536, 2752), id="nb2-9-16-2K"),
        pytest.param("nano-banana-pro", "3:4", "4K", (3584, 4800), id="pro-3-4-4K"),
        pytest.param("nano-banana-pro:official", "3:4", "2K", (1792, 2400), id="official-variant"),
        pytest.param("nano-banana", "3:2", "1K", (1248, 832), id="flash-3-2"),
        pytest.param("nano-banana", "16:9", "2K", (1344, 768), id="flash-is-1K-only"),
        pytest.param("nano-banana-2-lite", "16:9", "4K", (1376, 768), id="lite-is-1K-only"),
        pytest.param("nano-banana-pro", None, None, (1024, 1024), id="defaults-to-1-1-1K"),
        pytest.param("nano-banana-pro", None, "2K", (2048, 2048), id="no-ratio-2K"),
    ],
)
def test_produced_size_scales_by_resolution(
    model: str, ratio: str | None, resolution: str | None, expected: tuple[int, int]
) -> None:
    assert produced_size(model, ratio, resolution) == expected


# --------------------------------------------------------------------------- resolve_model


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        pytest.param(None, "nano-banana-pro", id="none-gives-default"),
        pytest.param("", "nano-banana-pro", id="empty-gives-default"),
        pytest.param("nano-banana", "nano-banana", id="nano-banana"),
        pytest.param("nano-banana-2", "nano-banana-2", id="nano-banana-2"),
        pytest.param("nano-banana-pro", "nano-banana-pro", id="nano-banana-pro"),
        pytest.param("nano-banana-2-lite", "nano-banana-2-lite", id="nano-banana-2-lite"),
        pytest.param(
            "nano-banana-pro:official", "nano-banana-pro:official", id="pro-official-variant"
        ),
        pytest.param("nano-banana:official", "nano-banana:official", id="flash-official-variant"),
        pytest.param("gpt-image-1", "nano-banana-2", id="gpt-image-1"),
        pytest.param("gpt-image-1.5", "nano-banana-2", id="gpt-image-1.5"),
        pytest.param("gpt-image-1-mini", "nano-banana", id="gpt-image-1-mini"),
        pytest.param("chatgpt-image-latest", "nano-banana-2", id="chatgpt-image-latest"),
        pytest.param("gpt-image-2", "nano-banana-2", id="gpt-image-2"),
        pytest.param("gpt-image-2-2026-04-21", "nano-banana-2", id="gpt-image-2-dated"),
        pytest.param("gpt-image-2-mini", "nano-banana", id="gpt-image-2-mini"),
        pytest.param("gpt-image-2.5-flare", "nano-banana-2", id="gpt-image-2.5-flare"),
        pytest.param("gpt-image-2.5-flare-2026-06-01", "nano-banana-2", id="flare-dated"),
        pytest.param("gpt-image-2.5-sunburst", "nano-banana-pro", id="gpt-image-2.5-sunburst"),
        pytest.param("gpt-image-2.6-flare", "nano-banana-2", id="gpt-image-2.6-flare"),
        pytest.param("gpt-image-2.6-sunburst", "nano-banana-pro", id="gpt-image-2.6-sunburst"),
        pytest.param("gpt-image-2.6", "nano-banana-2", id="gpt-image-2.6"),
        pytest.param("dall-e-2", "nano-banana", id="dall-e-2"),
        pytest.param("dall-e-3", "nano-banana-2", id="dall-e-3"),
    ],
)
def test_resolve_model_with_default_aliases(requested: str | None, expected: str) -> None:
    assert resolve_model(requested, "nano-banana-pro", DEFAULT_ALIASES) == expected


@pytest.mark.parametrize(
    "requested",
    [
        pytest.param("gpt-4o", id="chat-model"),
        pytest.param("dall-e-4", id="unknown-dalle"),
        pytest.param("nano-banana-3", id="unknown-nano-banana"),
        pytest.param("nano-banana-ultra:official", id="variant-of-unknown-base"),
        pytest.param("midjourney", id="other-vendor"),
    ],
)
def test_resolve_model_unknown_is_404(requested: str) -> None:
    with raises_openai_error() as caught:
        resolve_model(requested, "nano-banana", DEFAULT_ALIASES)
    err = caught.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert err.type == "invalid_request_error"
    assert requested in err.message


def test_resolve_model_configured_alias_wins_over_later_patterns() -> None:
    aliases = {"gpt-image-1": "nano-banana-pro", **DEFAULT_ALIASES}
    assert resolve_model("gpt-image-1", "nano-banana", aliases) == "nano-banana-pro"
    assert resolve_model("gpt-image-1.5", "nano-banana", aliases) == "nano-banana-2"


def test_resolve_model_without_aliases_rejects_openai_names() -> None:
    with raises_openai_error() as caught:
        resolve_model("gpt-image-1", "nano-banana", {})
    assert caught.value.status == 404


# --------------------------------------------------------------------------- response format


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("gpt-image-1", "b64_json", id="gpt-image-1"),
        pytest.param("gpt-image-1-mini", "b64_json", id="gpt-image-1-mini"),
        pytest.param("gpt-image-1.5", "b64_json", id="gpt-image-1.5"),
        pytest.param("chatgpt-image-latest", "b64_json", id="chatgpt-image-latest"),
        pytest.param("dall-e-2", "url", id="dall-e-2"),
        pytest.param("dall-e-3", "url", id="dall-e-3"),
        pytest.param("nano-banana", "url", id="nano-banana"),
        pytest.param("nano-banana-pro:official", "url", id="nano-banana-pro-official"),
        pytest.param(None, "url", id="no-model"),
        pytest.param("", "url", id="empty-model"),
    ],
)
def test_default_response_format(model: str | None, expected: str) -> None:
    assert default_response_format(model) == expected


# --------------------------------------------------------------------------- split_count


@pytest.mark.parametrize(
    ("n", "per_call", "expected"),
    [
        pytest.param(10, 4, [4, 4, 2], id="10-by-4"),
        pytest.param(8, 4, [4, 4], id="8-by-4"),
        pytest.param(4, 4, [4], id="4-by-4"),
        pytest.param(3, 4, [3], id="3-by-4"),
        pytest.param(1, 4, [1], id="1-by-4"),
        pytest.param(3, 1, [1, 1, 1], id="3-by-1"),
        pytest.param(5, 10, [5], id="cap-above-n"),
        pytest.param(7, 3, [3, 3, 1], id="7-by-3"),
    ],
)
def test_split_count(n: int, per_call: int, expected: list[int]) -> None:
    calls = split_count(n, per_call)
    assert calls == expected
    assert sum(calls) == n


# --------------------------------------------------------------------------- build_job: errors


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"n": 0}, "n", id="n-zero"),
        pytest.param({"n": -1}, "n", id="n-negative"),
        pytest.param({"n": 11}, "n", id="n-eleven"),
        pytest.param({"mask": PNG_URI}, "mask", id="mask-on-a-generation"),
        pytest.param({"background": "transparent"}, "background", id="transparent-background"),
        pytest.param({"size": "huge"}, "size", id="size-malformed"),
        pytest.param({"size": "1024x"}, "size", id="size-half"),
        pytest.param({"size": "4096x1024"}, "size", id="size-ratio-4-to-1"),
        pytest.param({"size": "1024x4096"}, "size", id="size-ratio-1-to-4"),
        pytest.param({"size": "16384x8192"}, "size", id="size-too-big"),
        pytest.param(
            {
                "endpoint": "edits",
                "model": "nano-banana-2",
                "images": (PNG_URI,),
                "first_image_size": (1024, 1024),
                "size": "1536x1024",
            },
            "size",
            id="edit-size-ratio-differs-from-image",
        ),
        pytest.param(
            {
                "endpoint": "edits",
                "model": "nano-banana-2",
                "images": (PNG_URI,),
                "first_image_size": (1536, 1024),
                "size": "1024x1536",
            },
            "size",
            id="edit-portrait-size-for-landscape-image",
        ),
        pytest.param({"response_format": "xml"}, "response_format", id="response-format-xml"),
        pytest.param({"response_format": "URL"}, "response_format", id="response-format-case"),
        pytest.param(
            {"response_format": "b64_json", "output_format": "gif"},
            "output_format",
            id="output-format-gif",
        ),
        pytest.param(
            {"response_format": "b64_json", "output_format": "bmp"},
            "output_format",
            id="output-format-bmp",
        ),
        pytest.param(
            {"response_format": "url", "output_format": "jpeg"},
            "output_format",
            id="jpeg-with-url",
        ),
        pytest.param(
            {"model": "dall-e-3", "output_format": "webp"},
            "output_format",
            id="webp-with-default-url",
        ),
        pytest.param(
            {"response_format": "url", "output_format": "jpg"},
            "output_format",
            id="jpg-with-url",
        ),
        pytest.param(
            {"response_format": "b64_json", "output_format": "jpeg", "output_compression": 101},
            "output_compression",
            id="compression-101",
        ),
        pytest.param(
            {"response_format": "b64_json", "output_format": "webp", "output_compression": -1},
            "output_compression",
            id="compression-negative",
        ),
        pytest.param({"endpoint": "edits"}, "image", id="edit-without-images"),
        pytest.param(
            {"endpoint": "edits", "model": "gpt-image-1", "size": "1024x1024"},
            "image",
            id="edit-without-images-with-size",
        ),
    ],
)
def test_build_job_rejects_with_400_naming_param(fields: dict[str, Any], param: str) -> None:
    with raises_openai_error() as caught:
        translate(request(**fields))
    err = caught.value
    assert err.status == 400
    assert err.param == param
    assert err.type == "invalid_request_error"
    assert err.message


def test_build_job_unknown_model_is_404() -> None:
    with raises_openai_error() as caught:
        translate(request(model="stable-diffusion-xl"))
    assert (caught.value.status, caught.value.param) == (404, "model")
    assert caught.value.code == "model_not_found"


# --------------------------------------------------------------------------- build_job: success


@pytest.mark.parametrize(
    ("fields", "job", "output"),
    [
        pytest.param(
            {},
            Job("generate", "a banana on a table", "nano-banana"),
            Output("url", expected_size=(1024, 1024)),
            id="all-defaults",
        ),
        pytest.param(
            {"model": "gpt-image-1", "size": "1536x1024", "n": 3, "quality": "high"},
            Job("generate", "a banana on a table", "nano-banana-2", 3, (), "3:2", "1K"),
            Output("b64_json", expected_size=(1264, 848), quality="high"),
            id="gpt-image-1-landscape",
        ),
        pytest.param(
            {"model": "gpt-image-1-mini", "size": "1024x1024"},
            Job("generate", "a banana on a table", "nano-banana", 1, (), "1:1", "1K"),
            Output("b64_json", expected_size=(1024, 1024)),
            id="gpt-image-1-mini-square",
        ),
        pytest.param(
            {"model": "dall-e-3", "size": "1792x1024"},
            Job("generate", "a banana on a table", "nano-banana-2", 1, (), "16:9", "2K"),
            Output("url", expected_size=(2752, 1536)),
            id="dall-e-3-wide",
        ),
        pytest.param(
            {"model": "dall-e-3", "size": "1024x1792", "response_format": "b64_json"},
            Job("generate", "a banana on a table", "nano-banana-2", 1, (), "9:16", "2K"),
            Output("b64_json", expected_size=(1536, 2752)),
            id="dall-e-3-tall-b64",
        ),
        pytest.param(
            {"model": "dall-e-2", "size": "256x256", "n": 10},
            Job("generate", "a banana on a table", "nano-banana", 10, (), "1:1", "1K"),
            Output("url", expected_size=(1024, 1024)),
            id="dall-e-2-legacy-small-n10",
        ),
        pytest.param(
            {"model": "nano-banana-pro:official", "size": "4096x2304"},
            Job("generate", "a banana on a table", "nano-banana-pro:official", 1, (), "16:9", "4K"),
            Output("url", expected_size=(5504, 3072)),
            id="pro-official-4K",
        ),
        pytest.param(
            {"model": "nano-banana", "size": "1024x768"},
            Job("generate", "a banana on a table", "nano-banana", 1, (), "4:3", "1K"),
            Output("url", expected_size=(1184, 864)),
            id="flash-4-3",
        ),
        pytest.param(
            {"model": "nano-banana-2", "size": "auto", "background": "opaque", "stream": True},
            Job("generate", "a banana on a table", "nano-banana-2"),
            Output("url", stream=True, expected_size=(1024, 1024)),
            id="size-auto-stream",
        ),
        pytest.param(
            {
                "model": "chatgpt-image-latest",
                "output_format": "jpeg",
                "output_compression": 70,
            },
            Job("generate", "a banana on a table", "nano-banana-2"),
            Output(
                "b64_json",
                output_format="jpeg",
                output_compression=70,
                expected_size=(1024, 1024),
            ),
            id="jpeg-with-b64",
        ),
        pytest.param(
            {"response_format": "b64_json", "output_format": "jpg", "output_compression": 0},
            Job("generate", "a banana on a table", "nano-banana"),
            Output(
                "b64_json",
                output_format="jpeg",
                output_compression=0,
                expected_size=(1024, 1024),
            ),
            id="jpg-spelling-becomes-jpeg",
        ),
        pytest.param(
            {"response_format": "b64_json", "output_format": "webp", "output_compression": 100},
            Job("generate", "a banana on a table", "nano-banana"),
            Output(
                "b64_json",
                output_format="webp",
                output_compression=100,
                expected_size=(1024, 1024),
            ),
            id="webp-compression-100",
        ),
        pytest.param(
            {"response_format": "url", "output_format": "png"},
            Job("generate", "a banana on a table", "nano-banana"),
            Output("url", output_format="png", expected_size=(1024, 1024)),
            id="png-with-url",
        ),
        pytest.param(
            {
                "endpoint": "edits",
                "model": "gpt-image-1",
                "images": (PNG_URI, IMAGE_URL),
                "first_image_size": (1200, 896),
            },
            Job("edit", "a banana on a table", "nano-banana-2", 1, (PNG_URI, IMAGE_URL)),
            Output("b64_json", expected_size=(1200, 896)),
            id="edit-keeps-first-image-ratio",
        ),
        pytest.param(
            {
                "endpoint": "edits",
                "model": "nano-banana",
                "images": (PNG_URI,),
                "first_image_size": (1536, 1024),
                "n": 2,
            },
            Job("edit", "a banana on a table", "nano-banana", 2, (PNG_URI,)),
            Output("url", expected_size=(1248, 832)),
            id="edit-flash-3-2",
        ),
        pytest.param(
            {
                "endpoint": "edits",
                "model": "nano-banana-pro",
                "images": (PNG_URI,),
                "first_image_size": (1024, 1024),
                "size": "2048x2048",
            },
            Job("edit", "a banana on a table", "nano-banana-pro", 1, (PNG_URI,), "1:1", "2K"),
            Output("url", expected_size=(2048, 2048)),
            id="edit-size-same-ratio",
        ),
        pytest.param(
            {"endpoint": "edits", "images": (IMAGE_URL,)},
            Job("edit", "a banana on a table", "nano-banana", 1, (IMAGE_URL,)),
            Output("url", expected_size=None),
            id="edit-url-image-size-unknown",
        ),
        pytest.param(
            {"endpoint": "edits", "images": (IMAGE_URL,), "size": "1536x1024", "model": "dall-e-3"},
            Job("edit", "a banana on a table", "nano-banana-2", 1, (IMAGE_URL,), "3:2", "1K"),
            Output("url", expected_size=None),
            id="edit-url-image-with-size",
        ),
    ],
)
def test_build_job_happy_paths(fields: dict[str, Any], job: Job, output: Output) -> None:
    # Links are measured where a provider ignoring the resolution would cost more than 1K.
    output = dataclasses.replace(output, measure_links=job.resolution not in (None, "1K"))
    assert translate(request(**fields)) == (job, output)


def test_build_job_uses_configured_default_model() -> None:
    job, output = translate(request(size="2048x1365"), default_model="nano-banana-pro")
    assert (job.model, job.aspect_ratio, job.resolution) == ("nano-banana-pro", "3:2", "2K")
    assert output.expected_size == (2528, 1696)


# --------------------------------------------------------------------------- error_for


@pytest.mark.parametrize(
    ("kind", "status", "type_", "code"),
    [
        pytest.param(FailureKind.BAD_REQUEST, 400, "invalid_request_error", "invalid_request"),
        pytest.param(FailureKind.SAFETY, 400, "invalid_request_error", "content_policy_violation"),
        pytest.param(FailureKind.RATE_LIMITED, 429, "requests", "rate_limit_exceeded"),
        pytest.param(FailureKind.AUTH, 502, "server_error", "upstream_token_unusable"),
        pytest.param(FailureKind.BALANCE, 502, "server_error", "upstream_token_unusable"),
        pytest.param(FailureKind.TIMEOUT, 504, "server_error", "upstream_timeout"),
        pytest.param(FailureKind.SERVER_ERROR, 502, "server_error", "upstream_error"),
        pytest.param(FailureKind.CONNECTION, 502, "server_error", "upstream_error"),
        pytest.param(FailureKind.MALFORMED, 502, "server_error", "upstream_error"),
    ],
    ids=lambda v: v.name.lower() if isinstance(v, FailureKind) else None,
)
def test_error_for_maps_kind(kind: FailureKind, status: int, type_: str, code: str) -> None:
    err = error_for(UpstreamError(kind, "upstream said no"))
    assert (err.status, err.type, err.code) == (status, type_, code)
    # What the pool gave up on after its own retries is not for the SDK to retry again.
    assert err.headers == ({} if kind.callers_fault else {"x-should-retry": "false"})
    assert err.message


def test_error_for_token_trouble_is_never_401_or_403() -> None:
    for kind in (FailureKind.AUTH, FailureKind.BALANCE):
        err = error_for(UpstreamError(kind, "invalid_token", status=401, code="invalid_token"))
        assert err.status == 502
        assert "not your key" in err.message


@pytest.mark.parametrize(
    ("upstream_code", "code"),
    [
        pytest.param(None, "content_policy_violation", id="no-code"),
        pytest.param("forbidden", "content_policy_violation", id="acedata-403-forbidden"),
        pytest.param(
            "image_generation_failed", "content_policy_violation", id="defapi-text-answer"
        ),
    ],
)
def test_error_for_safety_code(upstream_code: str | None, code: str) -> None:
    err = error_for(
        UpstreamError(FailureKind.SAFETY, "content blocked", status=403, code=upstream_code)
    )
    assert (err.status, err.code) == (400, code)


def test_error_for_bad_request_keeps_param_and_code() -> None:
    err = error_for(
        UpstreamError(
            FailureKind.BAD_REQUEST,
            "request too large",
            status=413,
            code="request_too_large",
            param="image",
        )
    )
    assert (err.status, err.param, err.code) == (400, "image", "request_too_large")
    assert "request too large" in err.message


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param(0.0, "1", id="zero-is-one"),
        pytest.param(0.2, "1", id="fraction-below-one"),
        pytest.param(1.0, "1", id="one"),
        pytest.param(1.5, "2", id="one-and-a-half"),
        pytest.param(2.9, "3", id="two-point-nine"),
        pytest.param(30.0, "30", id="thirty"),
        pytest.param(2.0001, "3", id="just-above-two"),
        pytest.param(59.01, "60", id="just-above-59"),
    ],
)
def test_error_for_rate_limit_retry_after_rounds_up(
    retry_after: float | None, header: str | None
) -> None:
    err = error_for(UpstreamError(FailureKind.RATE_LIMITED, "slow down", retry_after=retry_after))
    assert err.status == 429
    assert err.headers.get("retry-after") == header


@pytest.mark.parametrize(
    ("task_id", "trace_id", "headers"),
    [
        pytest.param(None, None, {}, id="none"),
        pytest.param("task-1", None, {"x-upstream-task-id": "task-1"}, id="task-only"),
        pytest.param(None, "trace-1", {"x-upstream-trace-id": "trace-1"}, id="trace-only"),
        pytest.param(
            "056f0589-a3dd-4ec2-8440-ad61f5038dfa",
            "c48de83f-0077-426e-b02b-ff1d58179064",
            {
                "x-upstream-task-id": "056f0589-a3dd-4ec2-8440-ad61f5038dfa",
                "x-upstream-trace-id": "c48de83f-0077-426e-b02b-ff1d58179064",
            },
            id="both",
        ),
    ],
)
@pytest.mark.parametrize("kind", list(FailureKind), ids=lambda k: k.name.lower())
def test_error_for_upstream_ids_become_headers(
    kind: FailureKind, task_id: str | None, trace_id: str | None, headers: dict[str, str]
) -> None:
    err = error_for(UpstreamError(kind, "failed", task_id=task_id, trace_id=trace_id))
    ids = {k: v for k, v in err.headers.items() if k not in ("retry-after", "x-should-retry")}
    assert ids == headers


@pytest.mark.parametrize("kind", list(FailureKind), ids=lambda k: k.name.lower())
def test_error_for_scrubs_secrets(kind: FailureKind) -> None:
    token = "sk-acedata-token-0123456789"
    client_key = "sk-team-a-0123456789"
    message = f"token {token} rejected for caller {client_key}: model is invalid."
    err = error_for(UpstreamError(kind, message), secrets=(token, client_key, ""))
    assert token not in err.message
    assert client_key not in err.message
    assert token not in str(err.body())


@pytest.mark.parametrize(
    "kind",
    [FailureKind.BAD_REQUEST, FailureKind.SAFETY, FailureKind.SERVER_ERROR],
    ids=lambda k: k.name.lower(),
)
def test_error_for_keeps_the_rest_of_the_message(kind: FailureKind) -> None:
    err = error_for(
        UpstreamError(kind, "bad token abc123secret for model x"), secrets=("abc123secret",)
    )
    assert "bad token [redacted] for model x" in err.message
