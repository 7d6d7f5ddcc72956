"""Providers that do only what their documents promise: a refusal of the gateway's
translation is the gateway's to route around, and what an upstream can do is learned.
Real gateway, fake providers on 127.0.0.1 (in documented-minimum mode where it matters),
the official SDK as the client."""

from __future__ import annotations

import asyncio
import itertools
import json

import openai
import pytest

from tests.support.fakes import png_bytes
from tests.support.gateway import CLIENTS_TOML, upstream_toml

NO_CACHE = "\n[cache]\nenabled = false\n"
# Tokens as long as real ones: a two-character token can occur inside a provider's random
# task id, which the gateway then refuses to repeat (it might be the credential echoed).
_PROMPTS = itertools.count()


def _prompt() -> str:
    return f"documented {next(_PROMPTS)}"


def _learned(gw, name: str) -> dict:
    return next(u for u in gw.admin()["upstreams"] if u["name"] == name)["learned"]


def test_every_upstream_refusing_a_field_is_a_400_naming_the_openai_parameter(
    fake_factory, gateway_factory
):
    ace = fake_factory("acedata")
    xhuo = fake_factory("xhuoapi")
    for fake, token in ((ace, "ace-documented-0001"), (xhuo, "xhuo-documented-0001")):
        fake.behave(token, "bad_request", message="aspect_ratio is not supported")
    gw = gateway_factory(
        upstream_toml("ace", ace, ["ace-documented-0001"])
        + upstream_toml("xhuo", xhuo, ["xhuo-documented-0001"])
        + CLIENTS_TOML
        + NO_CACHE
    )
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.generate(
            prompt=_prompt(), model="nano-banana-2", size="1536x1024", response_format="url"
        )
    err = info.value
    assert (err.param, err.code) == ("size", "unsupported_value")
    assert len(ace.generation_calls()) == 1 and len(xhuo.generation_calls()) == 1
    # Remembered on both: the next such request is answered at once, nothing is sent.
    assert [r["field"] for r in _learned(gw, "ace")["refuses"]] == ["aspect_ratio"]
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.generate(
            prompt=_prompt(), model="nano-banana-2", size="1536x1024", response_format="url"
        )
    assert (info.value.param, info.value.code) == ("size", "unsupported_value")
    assert len(ace.generation_calls()) == 1 and len(xhuo.generation_calls()) == 1
    # A square picture needs no aspect_ratio at all: it is still served, without the field.
    ace.behave("ace-documented-0001", "ok")
    resp = gw.client().images.generate(prompt=_prompt(), size="1024x1024", response_format="url")
    assert resp.data
    sent = max(ace.generation_calls() + xhuo.generation_calls(), key=lambda c: c.time).json
    assert "aspect_ratio" not in sent


def test_a_refusal_of_a_field_goes_to_the_next_upstream_and_is_remembered(
    fake_factory, gateway_factory
):
    picky = fake_factory("acedata")
    picky.behave("ace-picky-0001", "bad_request", message="model is invalid.")
    other = fake_factory("xhuoapi")
    gw = gateway_factory(
        upstream_toml("picky", picky, ["ace-picky-0001"], extra="priority = 0")
        + upstream_toml("other", other, ["xhuo-other-0001"], extra="priority = 1")
        + CLIENTS_TOML
        + NO_CACHE
    )
    client = gw.client()
    for _ in range(4):
        assert client.images.generate(
            prompt=_prompt(), model="nano-banana-2", response_format="url"
        ).data
    # Refused once, then skipped for that model; the token and upstream stay healthy.
    assert len(picky.generation_calls()) == 1
    assert len(other.generation_calls()) == 4
    (refusal,) = _learned(gw, "picky")["refuses"]
    assert (refusal["model"], refusal["field"]) == ("nano-banana-2", "model")
    assert refusal["expires_in_seconds"] > 500
    picky_view = next(u for u in gw.admin()["upstreams"] if u["name"] == "picky")
    assert picky_view["state"] == "ok" and picky_view["tokens"][0]["state"] == "ok"
    # Other models still go to the preferred upstream.
    picky.behave("ace-picky-0001", "ok")
    assert client.images.generate(prompt=_prompt(), model="nano-banana", response_format="url")
    assert len(picky.generation_calls()) == 2


def test_one_image_per_call_is_learned_and_n_is_made_in_parallel(fake_factory, gateway_factory):
    # Makes one image per call whatever `count` says (the reference has no `count`).
    fake = fake_factory("acedata", default="partial", latency=0.2)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["ace-documented-0001"]) + CLIENTS_TOML + NO_CACHE
    )

    async def ten() -> openai.types.ImagesResponse:
        return await gw.async_client().images.generate(
            prompt=_prompt(), n=10, response_format="url"
        )

    resp = asyncio.run(ten())
    assert len(resp.data) == 10
    assert _learned(gw, "ace")["images_per_call"] == {"nano-banana": 1}
    calls = fake.generation_calls()
    # First round: 4 + 4 + 2 asked, one each made; then the 7 missing, one per call, all
    # in flight together rather than one after another.
    assert sorted(c.json.get("count", 1) for c in calls[:3]) == [2, 4, 4]
    assert [c.json.get("count", 1) for c in calls[3:]] == [1] * 7
    assert fake.max_concurrent >= 7
    # Learned: the next request is split up front.
    fake.reset()
    assert len(gw.client().images.generate(prompt=_prompt(), n=3, response_format="url").data) == 3
    assert [c.json.get("count", 1) for c in fake.generation_calls()] == [1, 1, 1]


# What the documented-minimum defapi fake accepts (its document, seeds/003).
DEFAPI_DOCUMENTED_IDS = {"google/gempix2", "google/gemini-2.5-flash-image"}
DEFAPI_DOCUMENTED_FIELDS = {"model", "prompt", "images", "callback_url"}


def _refused_shape(body: dict) -> tuple[str, frozenset[str]] | None:
    """(model id, undocumented fields) of a submit the documented defapi refuses."""
    extra = frozenset(body) - DEFAPI_DOCUMENTED_FIELDS
    if body["model"] in DEFAPI_DOCUMENTED_IDS and not extra:
        return None
    return body["model"], extra


@pytest.mark.parametrize("configured", [False, True], ids=["defaults", "undocumented-configured"])
def test_documented_defapi_beside_acedata_serves_every_model(
    fake_factory, gateway_factory, configured
):
    defapi = fake_factory("defapi", documented=True)
    ace = fake_factory("acedata")
    extra = (
        'models = { "nano-banana-2" = "google/nano-banana-2" }\n'
        'fields = ["aspect_ratio", "resolution"]'
        if configured
        else ""
    )
    gw = gateway_factory(
        upstream_toml("def", defapi, ["dk-documented-0001"], extra=extra)
        + upstream_toml("ace", ace, ["ace-documented-0001"])
        + CLIENTS_TOML
        + NO_CACHE
    )
    client = gw.client()
    for model in ("nano-banana", "nano-banana-2", "nano-banana-pro"):
        for size in ("1024x1024", "1024x768") * 6:
            assert client.images.generate(
                prompt=_prompt(), model=model, size=size, response_format="url"
            ).data, (model, size)
    submits = [c.json for c in defapi.generation_calls()]
    assert submits, "defapi took its share"
    refused = [shape for shape in map(_refused_shape, submits) if shape is not None]
    if not configured:
        # The documented form only: nothing was ever refused.
        assert refused == []
        assert _learned(gw, "def")["refuses"] == []
        return
    # Each refused shape was sent once: after the first refusal it is no longer sent.
    assert refused and len(refused) == len(set(refused)), refused
    learned = {(r["model"], r["field"]) for r in _learned(gw, "def")["refuses"]}
    assert ("nano-banana-2", "model") in learned
    assert any(field == "aspect_ratio" for _, field in learned), learned


def test_uploads_a_provider_takes_only_as_links_are_hosted_by_the_gateway(
    fake_factory, gateway_factory
):
    defapi = fake_factory("defapi", documented=True)
    gw = gateway_factory(
        upstream_toml("def", defapi, ["dk-documented-0001"])
        + CLIENTS_TOML
        + NO_CACHE
        + '\n[server]\npublic_base_url = "http://gateway.example:8000"\n'
    )
    upload = png_bytes(64, 64)
    resp = gw.client().images.edit(
        image=("in.png", upload, "image/png"), prompt=_prompt(), response_format="url"
    )
    assert resp.data
    first, second = (c.json for c in defapi.generation_calls())
    assert first["images"][0].startswith("data:image/png;base64,"), "tried inline first"
    link = second["images"][0]
    assert link.startswith("http://gateway.example:8000/v1/images/store/")
    # The link serves the very upload (on the gateway's own address, here).
    path = link.removeprefix("http://gateway.example:8000")
    with gw.http() as http:
        served = http.get(path)
    assert served.status_code == 200 and served.content == upload
    assert [r["field"] for r in _learned(gw, "def")["refuses"]] == ["inline_images"]
    # Learned: the next edit goes as a link straight away.
    again = _prompt()
    gw.client().images.edit(
        image=("in.png", upload, "image/png"), prompt=again, response_format="url"
    )
    sent = [c.json["images"][0] for c in defapi.generation_calls() if c.json["prompt"] == again]
    assert sent and all(s.startswith("http://gateway.example:8000/") for s in sent), sent


def test_without_a_public_address_uploads_go_to_an_upstream_that_takes_them_inline(
    fake_factory, gateway_factory
):
    defapi = fake_factory("defapi", documented=True)
    ace = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("def", defapi, ["dk-documented-0001"], extra="priority = 0")
        + upstream_toml("ace", ace, ["ace-documented-0001"], extra="priority = 1")
        + CLIENTS_TOML
        + NO_CACHE
    )
    for _ in range(3):
        assert (
            gw.client()
            .images.edit(
                image=("in.png", png_bytes(64, 64), "image/png"),
                prompt=_prompt(),
                response_format="url",
            )
            .data
        )
    assert len(defapi.generation_calls()) == 1, "refused once, then skipped for uploads"
    assert len(ace.generation_calls()) == 3


def test_defapi_consumed_is_in_the_usage_log_beside_the_estimate(
    tmp_path, fake_factory, gateway_factory
):
    defapi = fake_factory("defapi", documented=True)
    log_path = tmp_path / "usage.jsonl"
    gw = gateway_factory(
        upstream_toml("def", defapi, ["dk-documented-0001"])
        + CLIENTS_TOML
        + '\n[prices]\n"nano-banana" = 0.039\n'
        + f'\n[usage]\nlog = "{log_path}"\n'
    )
    gw.client().images.generate(prompt="consumed", response_format="url")
    gw.client().images.generate(prompt="consumed", response_format="url")  # a cache hit
    made, hit = (json.loads(line) for line in log_path.read_text().splitlines())
    assert made["upstream_consumed"] == ["0.500000"]
    assert made["cost_usd"] == pytest.approx(0.039)
    assert (hit["cache"], hit["upstream_consumed"]) == ("hit", [])
