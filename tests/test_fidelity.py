"""OpenAI's sizes on every model, as the official SDK asks for them: the tier a size
needs, a model's largest picture (said so) where it cannot make more, strict mode, the
newer OpenAI names and parameters, and the answer echoing what was made."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, upstream_toml


@pytest.fixture
def fake(fake_factory: Any) -> Any:
    return fake_factory("acedata")


def _gateway(gateway_factory: Any, fake: Any, extra: str = "") -> Any:
    return gateway_factory(upstream_toml("ace", fake, ["tok-fidelity-0001"]) + CLIENTS_TOML + extra)


def _submitted(fake: Any) -> list[dict[str, Any]]:
    return [call.json for call in fake.generation_calls()]


def test_a_landscape_on_the_cheap_model_is_a_3_2_picture_made_at_1k(fake, gateway_factory):
    gw = _gateway(gateway_factory, fake)
    raw = gw.client().images.with_raw_response.generate(
        model="nano-banana", prompt="a harbour", size="1536x1024", response_format="b64_json"
    )
    resp = raw.parse()
    picture = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json)))
    assert picture.format == "PNG"
    width, height = picture.size
    assert abs(width / height - 1.5) < 0.02
    (body,) = _submitted(fake)
    assert body["aspect_ratio"] == "3:2"
    assert "resolution" not in body  # nano-banana makes 1K only: nothing to ask for
    assert "x-gateway-size-adjusted" not in raw.headers  # 1K covers 1536x1024
    assert resp.size == f"{width}x{height}"
    assert (resp.output_format, resp.quality, resp.background) == ("png", "auto", "opaque")


def test_ordinary_sizes_are_made_at_1k_and_large_ones_at_what_they_need(fake, gateway_factory):
    gw = _gateway(gateway_factory, fake)
    client = gw.client()
    for size in ("1536x1024", "1024x1536", "1024x1024"):
        client.images.generate(
            model="nano-banana-pro", prompt="p", size=size, response_format="url"
        )
    resp = client.images.generate(
        model="nano-banana-pro", prompt="p", size="3840x2160", response_format="url"
    )
    client.images.generate(
        model="nano-banana-2", prompt="p", size="2560x1440", response_format="url"
    )
    bodies = _submitted(fake)
    # 1K is the documented default: not sent.
    assert [b.get("resolution") for b in bodies] == [None, None, None, "4K", "2K"]
    assert resp.size == "5504x3072"  # Google's 16:9 at 4K


def test_a_size_the_model_cannot_reach_gets_its_largest_picture_and_says_so(fake, gateway_factory):
    gw = _gateway(gateway_factory, fake)
    raw = gw.client().images.with_raw_response.generate(
        model="nano-banana", prompt="a wide view", size="1792x1024", quality="high",
        response_format="url",
    )  # fmt: skip
    assert raw.headers["x-gateway-size-adjusted"] == "1792x1024"
    resp = raw.parse()
    assert resp.size == "1344x768"  # Flash's 16:9, its only tier
    assert resp.quality == "high"
    events = list(
        gw.client().images.generate(
            model="nano-banana", prompt="streamed wide", size="2048x2048", stream=True
        )
    )
    assert [e.type for e in events] == ["image_generation.completed"]
    assert events[0].size == "1024x1024"


def test_strict_size_keeps_the_400(fake, gateway_factory):
    gw = _gateway(gateway_factory, fake, "[images]\nstrict_size = true\n")
    with pytest.raises(openai.BadRequestError) as refused:
        gw.client().images.generate(model="nano-banana", prompt="p", size="1792x1024")
    assert refused.value.param == "size"
    assert "makes 1K images only" in refused.value.message
    assert fake.generation_calls() == []


@pytest.mark.parametrize("size", ["4000x1000", "1000x3100"])
def test_a_ratio_beyond_3_to_1_is_a_400_on_size(fake, gateway_factory, size):
    gw = _gateway(gateway_factory, fake)
    with pytest.raises(openai.BadRequestError) as refused:
        gw.client().images.generate(model="gpt-image-2", prompt="p", size=size)
    assert refused.value.param == "size"


def test_newer_openai_names_are_served_and_listed(fake, gateway_factory):
    gw = _gateway(gateway_factory, fake)
    client = gw.client()
    listed = {m.id: getattr(m, "alias_for", None) for m in client.models.list()}
    assert listed["gpt-image-2"] == "nano-banana-2"
    assert listed["gpt-image-2.5-flare"] == "nano-banana-2"
    assert listed["gpt-image-2.6-sunburst"] == "nano-banana-pro"
    assert listed["gpt-image-2-mini"] == "nano-banana"
    for name, model in (
        ("gpt-image-2.5-sunburst", "nano-banana-pro"),
        ("gpt-image-2.6-flare-2026-06-01", "nano-banana-2"),
        ("chatgpt-image-latest", "nano-banana-2"),
    ):
        resp = client.images.generate(model=name, prompt="p", extra_body={"complexity": "high"})
        assert resp.data[0].b64_json  # GPT image names answer b64_json, as OpenAI's do
        assert _submitted(fake)[-1]["model"] == model


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"output_format": "gif"}, "output_format"),
        ({"output_format": "svg"}, "output_format"),
        ({"frame_count": 4}, "frame_count"),
        ({"frame_duration_ms": 100}, "frame_duration_ms"),
        ({"svg": {"model": "x"}}, "svg"),
        ({"complexity": "extreme"}, "complexity"),
    ],
)
def test_gif_and_svg_output_stay_a_400_naming_the_parameter(fake, gateway_factory, extra, param):
    gw = _gateway(gateway_factory, fake)
    with pytest.raises(openai.BadRequestError) as refused:
        gw.client().images.generate(model="gpt-image-2", prompt="p", extra_body=extra)
    assert refused.value.param == param
    assert fake.generation_calls() == []


def test_svg_in_a_multipart_edit_is_a_400_naming_svg(fake, gateway_factory):
    gw = _gateway(gateway_factory, fake)
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(png, "PNG")
    r = httpx.post(
        f"{gw.url}/v1/images/edits",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        files={"image": ("a.png", png.getvalue(), "image/png")},
        data={"prompt": "p", "svg[model]": "x"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "svg"
