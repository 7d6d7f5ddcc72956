"""OpenAI's `mask` on /v1/images/edits, honoured by compositing: the upstream edits the
whole picture, and the answer keeps the first image where the mask is opaque and takes
the model's picture where the mask is fully transparent.

Pixel tests of the compositing and the mask checks, then end to end with the official SDK
against the gateway and a fake AceData whose pictures are all one colour."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from gateway.api.errors import openai_error
from gateway.cache.key import cache_key
from gateway.config import DEFAULT_ALIASES
from gateway.errors import DomainError, DownloadFailed, InvalidParameter
from gateway.shape.mask import check_mask, checked_mask, composite, named_mask
from gateway.shape.media import inspect_image, to_data_uri
from gateway.shape.shaper import Shaper
from gateway.translate import MASK_NOTE, build_job
from gateway.types import Composite, ImageRequest, Job, Output
from tests.support.fakes import data_uri, jpeg_bytes, png_bytes
from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, upstream_toml

RED = (200, 30, 30)  # the first image
GREEN = (20, 210, 40)  # what the fake upstream makes
BLUE = (30, 40, 220)
LEFT_HALF = (0, 0, 32, 64)  # x0, y0, x1, y1 of the transparent hole, in a 64x64 mask
INSIDE = (8, 32)  # a pixel well inside the hole
OUTSIDE = (56, 32)  # a pixel well outside it


def mask_png(
    size: tuple[int, int] = (64, 64), hole: tuple[int, int, int, int] = LEFT_HALF, mode="RGBA"
) -> bytes:
    """A mask: opaque everywhere but the hole, which is fully transparent."""
    im = Image.new("RGBA", size, (0, 0, 0, 255))
    im.paste((0, 0, 0, 0), hole)
    out = io.BytesIO()
    if mode == "LA":
        im.convert("LA").save(out, "PNG")
    elif mode == "P":
        # A palette PNG whose entry 1 is transparent (a tRNS chunk).
        pal = Image.new("P", size, 0)
        pal.putpalette([0, 0, 0, 255, 255, 255])
        pal.paste(1, hole)
        pal.save(out, "PNG", transparency=1)
    else:
        im.save(out, "PNG")
    return out.getvalue()


def pixel(data: bytes, xy: tuple[int, int]) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").getpixel(xy)  # type: ignore[return-value]


def near(got: tuple[int, ...], want: tuple[int, int, int], tolerance: int = 3) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(got[:3], want, strict=True))


# --------------------------------------------------------------------------- composite


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_composite_takes_the_edit_where_the_mask_is_transparent(mode):
    made = png_bytes(256, 256, GREEN)  # another size: scaled to the first image's
    data, mime, size = composite(png_bytes(64, 64, RED), mask_png(mode=mode), made, None, None)
    assert (mime, size) == ("image/png", (64, 64))
    assert inspect_image(data).size == (64, 64)
    assert near(pixel(data, INSIDE), GREEN)
    assert near(pixel(data, OUTSIDE), RED)
    # The seam is soft: a pixel on it is a blend of both.
    seam = pixel(data, (32, 32))
    assert not near(seam, GREEN) and not near(seam, RED)


def test_only_fully_transparent_pixels_are_edited():
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    im.paste((0, 0, 0, 0), (0, 0, 32, 64))
    im.paste((0, 0, 0, 1), (32, 0, 64, 64))  # nearly transparent is still kept
    out = io.BytesIO()
    im.save(out, "PNG")
    data, _, _ = composite(
        png_bytes(64, 64, RED), out.getvalue(), png_bytes(64, 64, GREEN), None, None
    )
    assert near(pixel(data, INSIDE), GREEN)
    assert near(pixel(data, OUTSIDE), RED)


def test_an_opaque_mask_keeps_the_first_image():
    opaque = mask_png(hole=(0, 0, 0, 0))
    data, _, _ = composite(png_bytes(64, 64, RED), opaque, png_bytes(64, 64, GREEN), None, None)
    with Image.open(io.BytesIO(data)) as im:
        assert {color for _, color in im.convert("RGB").getcolors()} == {RED}


@pytest.mark.parametrize(
    ("fmt", "mime", "pil"), [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]
)
def test_composite_encodes_the_output_format(fmt, mime, pil):
    data, got_mime, size = composite(
        jpeg_bytes(64, 64, RED), mask_png(), png_bytes(64, 64, GREEN), fmt, 80
    )
    assert (got_mime, size) == (mime, (64, 64))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == pil
    assert near(pixel(data, INSIDE), GREEN, tolerance=12)
    assert near(pixel(data, OUTSIDE), RED, tolerance=12)


def test_a_first_image_with_alpha_keeps_it():
    base = Image.new("RGBA", (64, 64), (*RED, 100))
    out = io.BytesIO()
    base.save(out, "PNG")
    data, _, _ = composite(out.getvalue(), mask_png(), png_bytes(64, 64, GREEN), None, None)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGBA"
        assert im.getpixel(OUTSIDE) == (*RED, 100)
        assert im.getpixel(INSIDE) == (*GREEN, 255)


def test_composite_checks_the_mask_against_the_first_image():
    with pytest.raises(InvalidParameter) as info:
        composite(png_bytes(64, 48, RED), mask_png(), png_bytes(64, 48, GREEN), None, None)
    assert info.value.param == "mask"
    assert "64x64 but the first image is 64x48" in info.value.message


# --------------------------------------------------------------------------- check_mask


@pytest.mark.parametrize(
    ("mask", "first_size", "words"),
    [
        pytest.param(png_bytes(64, 64), (64, 64), "no alpha channel", id="rgb-png"),
        pytest.param(jpeg_bytes(64, 64), (64, 64), "must be a PNG", id="jpeg"),
        pytest.param(mask_png((32, 32), (0, 0, 8, 8)), (64, 64), "same size", id="smaller"),
        pytest.param(mask_png((64, 32), (0, 0, 8, 8)), (64, 64), "32 but", id="other-height"),
        pytest.param(b"", (64, 64), "not a usable image", id="empty"),
        pytest.param(b"not a png at all", (64, 64), "not a usable image", id="text"),
        pytest.param(mask_png()[:-20], (64, 64), "not a usable image", id="cut-short"),
    ],
)
def test_a_bad_mask_is_a_400_on_mask(mask, first_size, words):
    with pytest.raises(InvalidParameter) as info:
        check_mask(mask, first_size)
    error = openai_error(info.value)
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "mask")
    assert words in error.message


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_masks_with_alpha_are_taken(mode):
    check_mask(mask_png(mode=mode), (64, 64))
    check_mask(mask_png(mode=mode), None)  # the first image's size not known yet


def test_a_masks_link_is_checked_when_it_is_downloaded():
    assert (
        checked_mask("https://cdn.example.com/m.png", (64, 64)) == "https://cdn.example.com/m.png"
    )
    uri = data_uri(png_bytes(64, 64))
    with pytest.raises(InvalidParameter):
        checked_mask(uri, (64, 64))


def test_every_fault_of_a_json_mask_names_mask():
    def read() -> str:
        raise InvalidParameter("mask.image_url", "'mask.image_url' must be a URL or data: URI.")

    with pytest.raises(InvalidParameter) as info:
        named_mask(read, None)
    assert info.value.param == "mask"


# --------------------------------------------------------------------------- translation, key


def _edit(**fields: Any) -> ImageRequest:
    fields.setdefault("images", (data_uri(png_bytes(64, 64, RED)),))
    return ImageRequest(endpoint="edits", prompt="a hat on the cat", **fields)


def test_a_masked_edit_composites_and_tells_the_model():
    mask = data_uri(mask_png())
    req = _edit(mask=mask, first_image_size=(64, 64))
    job, output = build_job(req, default_model="nano-banana", aliases=DEFAULT_ALIASES)
    assert output.composite == Composite(base=req.images[0], mask=mask)
    assert output.wants_bytes
    assert job.prompt == f"a hat on the cat\n\n{MASK_NOTE}"
    assert job.images == req.images  # the mask does not go upstream
    plain_job, plain = build_job(_edit(), default_model="nano-banana", aliases=DEFAULT_ALIASES)
    assert plain.composite is None and plain_job.prompt == "a hat on the cat"


def test_a_mask_on_a_generation_is_refused():
    req = ImageRequest(endpoint="generations", prompt="x", mask=data_uri(mask_png()))
    with pytest.raises(DomainError) as info:
        build_job(req, default_model="nano-banana", aliases=DEFAULT_ALIASES)
    assert openai_error(info.value).param == "mask"


def test_the_mask_is_part_of_the_cache_key():
    job = Job("edit", "x", "nano-banana", 1, ("data:...",), None, None)
    plain = Output("b64_json")
    masked = Output("b64_json", composite=Composite("data:...", "data:mask"))
    keys = {
        cache_key(job, plain, ["a"]),
        cache_key(job, masked, ["a"], "m1"),
        cache_key(job, masked, ["a"], "m2"),
    }
    assert len(keys) == 3
    assert cache_key(job, masked, ["a"], "m1") == cache_key(job, masked, ["a"], "m1")


# --------------------------------------------------------------------------- the shaper


class _Links:
    """A fetcher over a table of links, as the shaper uses one."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.got: list[str] = []

    async def get(self, url: str, *, decode: bool = True) -> Any:
        self.got.append(url)
        if url not in self.files:
            raise DownloadFailed("Downloading the generated image failed: HTTP 404.")
        return self.files[url], inspect_image(self.files[url])


def _shape(files: dict[str, bytes], plan: Composite, **output: Any) -> Any:
    shaper = Shaper(_Links(files))  # type: ignore[arg-type]
    return asyncio.run(shaper.shape("https://up/made.png", Output(composite=plan, **output)))


def test_the_shaper_composites_linked_inputs():
    files = {
        "https://up/made.png": png_bytes(1024, 1024, GREEN),
        "https://cdn/base.png": png_bytes(64, 64, RED),
        "https://cdn/mask.png": mask_png(),
    }
    image = _shape(
        files, Composite("https://cdn/base.png", "https://cdn/mask.png"), response_format="url"
    )
    assert image.url is None  # a composite has no link: the gateway hosts it
    assert (image.mime, image.size, image.size_source) == ("image/png", (64, 64), "measured")
    assert near(pixel(image.data, INSIDE), GREEN) and near(pixel(image.data, OUTSIDE), RED)


def test_a_linked_mask_is_checked_once_downloaded():
    files = {
        "https://up/made.png": png_bytes(1024, 1024, GREEN),
        "https://cdn/mask.png": mask_png((32, 32), (0, 0, 8, 8)),
    }
    base = data_uri(png_bytes(64, 64, RED))
    for mask, words in (
        ("https://cdn/mask.png", "same size"),
        ("https://cdn/gone.png", "HTTP 404"),
    ):
        with pytest.raises(InvalidParameter) as info:
            _shape(files, Composite(base, mask), response_format="b64_json")
        assert info.value.param == "mask"
        assert words in info.value.message


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def gw_fake(fake_factory, gateway_factory):
    fake = fake_factory("acedata", image_color=GREEN)
    gw = gateway_factory(upstream_toml("ace", fake, ["tok-1"]) + CLIENTS_TOML)
    return fake, gw


def _first() -> tuple[str, bytes, str]:
    return ("cat.png", png_bytes(64, 64, RED), "image/png")


def _mask(data: bytes | None = None) -> tuple[str, bytes, str]:
    return ("mask.png", data if data is not None else mask_png(), "image/png")


def _b64(b64: str | None) -> bytes:
    assert b64
    return base64.b64decode(b64)


def _composited(data: bytes) -> None:
    assert inspect_image(data).size == (64, 64)
    assert near(pixel(data, INSIDE), GREEN), pixel(data, INSIDE)
    assert near(pixel(data, OUTSIDE), RED), pixel(data, OUTSIDE)


def test_sdk_masked_edit_b64(gw_fake):
    fake, gw = gw_fake
    resp = gw.client().images.edit(
        image=_first(),
        mask=_mask(),
        prompt="a hat",
        model="nano-banana",
        response_format="b64_json",
    )
    assert resp.size == "64x64"
    assert resp.output_format == "png"
    _composited(_b64(resp.data[0].b64_json))
    (call,) = fake.generation_calls()
    assert call.json["prompt"] == f"a hat\n\n{MASK_NOTE}"
    assert len(call.json["image_urls"]) == 1
    assert "mask" not in call.json


def test_sdk_masked_edit_n2(gw_fake):
    _fake, gw = gw_fake
    resp = gw.client().images.edit(
        image=_first(),
        mask=_mask(),
        prompt="a hat",
        model="nano-banana",
        n=2,
        response_format="b64_json",
    )
    assert len(resp.data) == 2
    for item in resp.data:
        _composited(_b64(item.b64_json))


def test_sdk_masked_edit_stream(gw_fake):
    _fake, gw = gw_fake
    events = gw.client().images.edit(
        image=_first(), mask=_mask(), prompt="a hat", model="nano-banana", stream=True
    )
    completed = [e for e in events if e.type == "image_edit.completed"]
    assert len(completed) == 1
    assert completed[0].size == "64x64"
    _composited(_b64(completed[0].b64_json))


def test_sdk_masked_edit_url_is_hosted_by_the_gateway(gw_fake):
    fake, gw = gw_fake
    resp = gw.client().images.edit(
        image=_first(), mask=_mask(), prompt="a hat", model="nano-banana", response_format="url"
    )
    url = resp.data[0].url
    assert url and url.startswith(f"{gw.url}/v1/images/store/")
    assert not url.startswith(fake.origin)
    got = httpx.get(url, timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    _composited(got.content)


def test_sdk_masked_edit_output_format(gw_fake):
    _fake, gw = gw_fake
    resp = gw.client().images.edit(
        image=_first(),
        mask=_mask(),
        prompt="a hat",
        model="nano-banana",
        response_format="b64_json",
        output_format="webp",
    )
    data = _b64(resp.data[0].b64_json)
    assert inspect_image(data).mime == "image/webp"
    assert resp.output_format == "webp"
    assert near(pixel(data, INSIDE), GREEN, 12) and near(pixel(data, OUTSIDE), RED, 12)


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        pytest.param(mask_png((32, 32), (0, 0, 8, 8)), "same size", id="wrong-size"),
        pytest.param(png_bytes(64, 64, BLUE), "no alpha channel", id="no-alpha"),
        pytest.param(b"", "not a", id="empty"),
    ],
)
def test_sdk_bad_masks_are_a_400_on_mask(gw_fake, mask, words):
    fake, gw = gw_fake
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.edit(image=_first(), mask=_mask(mask), prompt="a hat")
    assert info.value.status_code == 400
    assert info.value.body["param"] == "mask"
    assert info.value.body["type"] == "invalid_request_error"
    assert words in info.value.body["message"]
    assert fake.generation_calls() == [], "a bad mask must never reach the upstream"


def _post_json(gw: Any, body: dict[str, Any]) -> httpx.Response:
    with gw.http() as http:
        return http.post(
            "/v1/images/edits", headers={"authorization": f"Bearer {CLIENT_KEY}"}, json=body
        )


def test_json_form_with_a_data_uri_mask(gw_fake):
    fake, gw = gw_fake
    body = {
        "prompt": "a hat",
        "model": "nano-banana",
        "response_format": "b64_json",
        "images": [{"image_url": data_uri(png_bytes(64, 64, RED))}],
        "mask": {"image_url": to_data_uri(mask_png(), "image/png")},
    }
    r = _post_json(gw, body)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "64x64"
    _composited(base64.b64decode(r.json()["data"][0]["b64_json"]))
    assert fake.generation_calls()[0].json["prompt"].endswith(MASK_NOTE)


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param({"image_url": data_uri(mask_png((32, 32), (0, 0, 8, 8)))}, id="wrong-size"),
        pytest.param({"image_url": data_uri(png_bytes(64, 64))}, id="no-alpha"),
        pytest.param({"image_url": "data:image/png;base64,"}, id="empty"),
        pytest.param({"image_url": "not a url"}, id="not-a-url"),
        pytest.param({"file_id": "file-1"}, id="file-id"),
        pytest.param("data:image/png;base64,", id="not-an-object"),
    ],
)
def test_json_form_bad_masks_are_a_400_on_mask(gw_fake, mask):
    fake, gw = gw_fake
    body = {"prompt": "a hat", "images": [{"image_url": data_uri(png_bytes(64, 64, RED))}]}
    r = _post_json(gw, {**body, "mask": mask})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "mask"
    assert fake.generation_calls() == []


def test_masked_edits_are_cached_by_their_mask(gw_fake):
    fake, gw = gw_fake
    images = gw.client().images.with_raw_response

    def edit(mask: bytes) -> tuple[str, bytes]:
        raw = images.edit(
            image=_first(),
            mask=_mask(mask),
            prompt="a hat",
            model="nano-banana",
            response_format="b64_json",
        )
        return raw.headers["x-cache"], _b64(raw.parse().data[0].b64_json)

    first = edit(mask_png())
    again = edit(mask_png())
    other = edit(mask_png(hole=(32, 0, 64, 64)))  # the right half instead
    assert (first[0], again[0], other[0]) == ("miss", "hit", "miss")
    assert first[1] == again[1]
    assert near(pixel(other[1], INSIDE), RED) and near(pixel(other[1], OUTSIDE), GREEN)
    plain = images.edit(
        image=_first(), prompt="a hat", model="nano-banana", response_format="b64_json"
    )
    assert plain.headers["x-cache"] == "miss"  # an unmasked edit is another picture
    assert len(fake.generation_calls()) == 3
