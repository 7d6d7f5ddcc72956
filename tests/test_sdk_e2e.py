"""End to end: the official OpenAI SDK -> the gateway -> fake provider servers.

Every test asserts both what the SDK app sees and what the upstream received, so a
translation mistake shows up on whichever side it happens.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import openai
import pytest
from PIL import Image

from tests.support.fakes import jpeg_bytes, png_bytes, webp_bytes
from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, upstream_toml

KINDS = ["acedata", "xhuoapi", "defapi"]
# defapi's documented ids (seeds/003), and the one configured for nano-banana-2, which the
# document names none for.
DEFAPI_MODEL = {
    "nano-banana-pro": "google/gempix2",
    "nano-banana": "google/gemini-2.5-flash-image",
    "nano-banana-2": "google/nano-banana-2",
}
# aspect_ratio and image_size are not in defapi's document: an upstream that takes them
# says so, as these tests' does (they send non-square sizes and nano-banana-2).
DEFAPI_EXTRA = (
    'models = {"nano-banana-2" = "google/nano-banana-2"}\nfields = ["aspect_ratio", "resolution"]\n'
)


@pytest.fixture(
    params=[(kind, mode) for mode in ("observed", "documented") for kind in KINDS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def setup(request, fake_factory, gateway_factory):
    """One upstream of each type in turn, with one token, behind a gateway with clients;
    the fake either also takes what public clients are observed to send, or only what the
    provider's document promises (and does only that: one image per AceData call, its
    resolution for Pro alone)."""
    kind, mode = request.param
    documented = mode == "documented"
    fake = fake_factory(kind, documented=documented)
    extra = DEFAPI_EXTRA if kind == "defapi" and not documented else ""
    # A defapi that takes only links gets uploads as links to copies the gateway hosts.
    server = '[server]\npublic_base_url = "http://gateway.test"\n' if documented else ""
    gw = gateway_factory(upstream_toml("up", fake, ["tok-1"], extra=extra) + CLIENTS_TOML + server)
    return fake, gw


def needs_undocumented(fake, what: str) -> None:
    """Skip where the test asks for what the provider's document does not promise (the
    documented-minimum defapi has no aspect ratio, resolution or nano-banana-2): those
    requests are a 400 there, tested in tests/test_documented_providers.py."""
    if fake.kind == "defapi" and fake.documented:
        pytest.skip(f"defapi's document has no {what}")


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _refs(fake, gw, body) -> list[str]:
    """The reference images a submit carried, uploads as data URIs: where the gateway sent
    a link to a copy it hosts (for a defapi that takes only links), the copy is fetched
    from the gateway and written back as the data URI it stands for."""
    refs = body["images"] if fake.kind == "defapi" else body["image_urls"]
    out = []
    for ref in refs:
        if ref.startswith(HOSTED):
            with gw.http() as http:
                got = http.get(ref.removeprefix("http://gateway.test"))
            assert got.status_code == 200
            mime = got.headers["content-type"]
            ref = f"data:{mime};base64,{base64.b64encode(got.content).decode()}"
        out.append(ref)
    return out


HOSTED = "http://gateway.test/v1/images/store/"


def _submitted(fake):
    calls = fake.generation_calls()
    if fake.kind == "defapi" and fake.documented:
        # Its first edit with uploads goes inline, is refused (the document says URLs),
        # and goes again as links: only the accepted submits.
        calls = [
            c for c in calls if not any(i.startswith("data:") for i in c.json.get("images", []))
        ]
    assert calls, "the upstream received no generation call"
    return [c.json for c in calls]


# ------------------------------------------------------------------ generations


def test_generate_url_translates_size_and_model(setup):
    fake, gw = setup
    needs_undocumented(fake, "aspect_ratio or image_size")
    raw = gw.client().images.with_raw_response.generate(
        prompt="a red fox", model="nano-banana-pro", size="2048x1365", response_format="url"
    )
    resp = raw.parse()
    assert len(resp.data) == 1
    assert resp.data[0].url.startswith(fake.origin)
    assert resp.data[0].b64_json is None
    # The SDK app can hand these to the provider's support.
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-upstream-task-id"]
    (body,) = _submitted(fake)
    assert body["prompt"] == "a red fox"
    assert body["aspect_ratio"] == "3:2"
    if fake.kind == "defapi":
        assert body["model"] == DEFAPI_MODEL["nano-banana-pro"]
        assert body["image_size"] == "2k"
    else:
        assert body["action"] == "generate"
        assert body["model"] == "nano-banana-pro"
        assert body["resolution"] == "2K"
        assert "count" not in body, "n=1 is the documented default"
    assert fake.generation_calls()[0].token == "tok-1"
    # The reported size is what Google's table says the model makes for 3:2 at 2K.
    assert resp.size == "2528x1696"


def test_generate_b64_json_is_the_real_image(setup):
    fake, gw = setup
    needs_undocumented(fake, "aspect_ratio or image_size")
    resp = gw.client().images.generate(
        prompt="a lighthouse", model="nano-banana-pro", size="1792x1024", response_format="b64_json"
    )
    image = _decode(resp.data[0].b64_json)
    assert image.format == "PNG"
    assert image.size == (2752, 1536)  # 16:9 at 2K
    assert resp.size == "2752x1536"
    assert resp.data[0].url is None


def test_gpt_image_alias_defaults_to_b64_json(setup):
    fake, gw = setup
    needs_undocumented(fake, "id for nano-banana-2")
    resp = gw.client().images.generate(prompt="a cat", model="gpt-image-1")
    assert resp.data[0].b64_json, "GPT image apps read b64_json without asking for it"
    (body,) = _submitted(fake)
    expected = DEFAPI_MODEL["nano-banana-2"] if fake.kind == "defapi" else "nano-banana-2"
    assert body["model"] == expected


def test_dalle_alias_defaults_to_url(setup):
    fake, gw = setup
    needs_undocumented(fake, "id for nano-banana-2")
    resp = gw.client().images.generate(prompt="a cat", model="dall-e-3", size="1024x1024")
    assert resp.data[0].url and not resp.data[0].b64_json


def test_sdk_nulls_mean_default(setup):
    fake, gw = setup
    with gw.http() as http:
        r = http.post(
            "/v1/images/generations",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={
                "prompt": "a cat",
                "model": None,
                "n": None,
                "size": None,
                "response_format": None,
                "quality": None,
                "style": None,
                "user": None,
            },
        )
    assert r.status_code == 200, r.text
    (body,) = _submitted(fake)
    assert "aspect_ratio" not in body and "resolution" not in body and "image_size" not in body


@pytest.mark.parametrize("n", [3, 6])
def test_n_images(setup, n):
    fake, gw = setup
    resp = gw.client().images.generate(
        prompt="dice", model="nano-banana", n=n, response_format="url"
    )
    assert len(resp.data) == n
    assert len({d.url for d in resp.data}) == n
    bodies = _submitted(fake)
    counts = sorted(b.get("count", 1) for b in bodies)
    if fake.kind == "defapi":
        assert len(bodies) == n  # one task per image
    elif fake.documented:
        # One image per call whatever `count` says: the first answer teaches it, and the
        # missing ones are asked for one per call.
        assert counts == sorted(([3] if n == 3 else [2, 4]) + [1] * (n - (1 if n == 3 else 2)))
    else:
        assert counts == ([3] if n == 3 else [2, 4])


def test_output_format_jpeg_reencodes(setup):
    _fake, gw = setup
    resp = gw.client().images.generate(
        prompt="a cat",
        model="nano-banana",
        response_format="b64_json",
        output_format="jpeg",
        output_compression=60,
    )
    assert _decode(resp.data[0].b64_json).format == "JPEG"
    assert resp.output_format == "jpeg"


def test_stream_generation_yields_the_image(setup):
    _fake, gw = setup
    events = list(gw.client().images.generate(prompt="a cat", model="nano-banana", stream=True))
    completed = [e for e in events if e.type == "image_generation.completed"]
    assert len(completed) == 1
    assert _decode(completed[0].b64_json).size == (1024, 1024)


# ------------------------------------------------------------------ edits


def test_edit_one_file(setup):
    fake, gw = setup
    upload = png_bytes(640, 640)
    resp = gw.client().images.edit(
        image=("cat.png", upload, "image/png"),
        prompt="add a hat",
        model="nano-banana",
        response_format="url",
    )
    assert resp.data[0].url
    (body,) = _submitted(fake)
    refs = _refs(fake, gw, body)
    assert refs == ["data:image/png;base64," + base64.b64encode(upload).decode()]
    if fake.kind != "defapi":
        assert body["action"] == "edit"


def test_edit_several_files_keeps_order_and_sniffs_types(setup):
    fake, gw = setup
    files = [png_bytes(512, 512), jpeg_bytes(300, 300), webp_bytes(200, 200)]
    # Raw bytes: the SDK sends them as 'upload' with application/octet-stream.
    gw.client().images.edit(
        image=files, prompt="combine", model="nano-banana", response_format="url"
    )
    (body,) = _submitted(fake)
    refs = _refs(fake, gw, body)
    assert [r.split(";")[0] for r in refs] == [
        "data:image/png",
        "data:image/jpeg",
        "data:image/webp",
    ]
    assert [base64.b64decode(r.split(",", 1)[1]) for r in refs] == files


def test_edit_repeated_image_parts_as_curl_sends(setup):
    fake, gw = setup
    a, b = png_bytes(100, 100, (1, 2, 3)), png_bytes(100, 100, (4, 5, 6))
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            data={"prompt": "merge", "model": "nano-banana", "response_format": "url"},
            files=[("image", ("a.png", a, "image/png")), ("image", ("b.png", b, "image/png"))],
        )
    assert r.status_code == 200, r.text
    (body,) = _submitted(fake)
    refs = _refs(fake, gw, body)
    assert [base64.b64decode(x.split(",", 1)[1]) for x in refs] == [a, b]


def test_edit_json_form_with_image_urls(setup):
    fake, gw = setup
    jpeg = jpeg_bytes(64, 64)
    payload = {
        "model": "nano-banana",
        "prompt": "recolour",
        "response_format": "url",
        "images": [
            {"image_url": "https://example.invalid/a.png"},
            # Mislabelled on purpose: the bytes are JPEG.
            {"image_url": "data:image/png;base64," + base64.b64encode(jpeg).decode()},
        ],
    }
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits", headers={"authorization": f"Bearer {CLIENT_KEY}"}, json=payload
        )
    assert r.status_code == 200, r.text
    (body,) = _submitted(fake)
    refs = _refs(fake, gw, body)
    assert refs[0] == "https://example.invalid/a.png"
    assert refs[1].startswith("data:image/jpeg;base64,")


def test_stream_edit_yields_the_image(setup):
    _fake, gw = setup
    stream = gw.client().images.edit(
        image=("in.png", png_bytes(300, 200), "image/png"),
        prompt="sharpen",
        model="nano-banana",
        stream=True,
    )
    completed = [e for e in stream if e.type == "image_edit.completed"]
    assert len(completed) == 1 and completed[0].b64_json


# ------------------------------------------------------------------ models


def test_models_list(setup):
    _fake, gw = setup
    ids = {m.id for m in gw.client().models.list()}
    assert {"nano-banana", "nano-banana-pro"} <= ids
    # defapi's document names no id for nano-banana-2: not listed unless configured.
    assert ("nano-banana-2" in ids) is not (_fake.kind == "defapi" and _fake.documented)
    assert {"gpt-image-1", "dall-e-3"} <= ids
    assert gw.client().models.retrieve("gpt-image-1").id == "gpt-image-1"


# ------------------------------------------------------------------ errors


@pytest.fixture
def acedata(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(upstream_toml("ace", fake, ["tok-1"]) + CLIENTS_TOML)
    return fake, gw


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "size": "huge"}, "size"),
        ({"prompt": "x", "size": "4000x1000"}, "size"),
        ({"prompt": "x", "response_format": "gif"}, "response_format"),
        ({"prompt": "x", "output_format": "svg", "response_format": "b64_json"}, "output_format"),
        ({"prompt": "x", "output_format": "jpeg", "response_format": "url"}, "output_format"),
        (
            {"prompt": "x", "output_compression": 101, "response_format": "b64_json"},
            "output_compression",
        ),
        ({"prompt": "x", "background": "transparent"}, "background"),
        ({"prompt": "x", "quality": "ultra"}, "quality"),
        ({"prompt": "x", "frame_count": 4}, "frame_count"),
    ],
)
def test_bad_generation_input_names_the_parameter(acedata, kwargs, param):
    fake, gw = acedata
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.generate(**kwargs)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param
    assert info.value.request_id and info.value.request_id.startswith("req_")
    assert fake.generation_calls() == [], "bad input must never reach (and cost at) the upstream"


def test_bad_edit_inputs(acedata):
    fake, gw = acedata
    client = gw.client()
    with pytest.raises(openai.BadRequestError) as info:
        # A mask without an alpha channel (an RGB PNG) marks nothing to edit.
        client.images.edit(image=png_bytes(64, 64), mask=png_bytes(64, 64), prompt="x")
    assert info.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=("notes.txt", b"hello world", "text/plain"), prompt="x")
    assert info.value.body["param"] == "image"
    with pytest.raises(openai.BadRequestError) as info:
        # A square picture cannot be edited into a landscape one upstream.
        client.images.edit(
            image=png_bytes(64, 64), prompt="x", size="1536x1024", model="gpt-image-1"
        )
    assert info.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=png_bytes(64, 64), prompt="x", n=12)
    assert info.value.body["param"] == "n"
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"prompt": "x", "images": [{"file_id": "file-123"}]},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "images[0].file_id"
        r = http.post(
            "/v1/images/edits",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"prompt": "x", "images": [{"image_url": "data:image/png;base64,@@@"}]},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "images[0].image_url"
        r = http.post(
            "/v1/images/generations",
            headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
            content=b"{not json",
        )
        assert r.status_code == 400 and set(r.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    assert fake.generation_calls() == []


def test_authentication_errors(acedata):
    _fake, gw = acedata
    with pytest.raises(openai.AuthenticationError) as info:
        gw.client(key="sk-wrong-key-000000").images.generate(prompt="x")
    assert info.value.body["code"] == "invalid_api_key"
    assert "sk-wrong-key" not in json.dumps(info.value.body)
    with pytest.raises(openai.AuthenticationError):
        gw.client(key="sk-wrong-key-000000").models.list()
    # The second configured client works too.
    assert (
        gw.client(key="sk-team-b-0123456789")
        .images.generate(prompt="x", response_format="url")
        .data
    )


def test_unknown_model_is_not_found(acedata):
    _fake, gw = acedata
    with pytest.raises(openai.NotFoundError) as info:
        gw.client().images.generate(prompt="x", model="stable-diffusion-xl")
    assert info.value.body["param"] == "model"
    assert info.value.body["code"] == "model_not_found"


def test_safety_refusal_is_content_policy_violation(acedata):
    fake, gw = acedata
    fake.behave("tok-1", "forbidden")
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.generate(prompt="something refused")
    assert info.value.body["code"] == "content_policy_violation"
    assert len(fake.generation_calls()) == 1, "a refusal is the caller's: not retried"


def test_upstream_bad_request_is_400(acedata):
    fake, gw = acedata
    fake.behave("tok-1", "bad_request")
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.generate(prompt="x")
    assert "model is invalid" in info.value.body["message"]
    assert info.value.response.headers.get("x-upstream-trace-id")


def test_rate_limit_is_429_with_retry_after(acedata):
    fake, gw = acedata
    fake.behave("tok-1", "rate_limit", retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        gw.client().images.generate(prompt="x")
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 7


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        ("used_up", 503),
        ("invalid_token", 503),
        ("server_error", 502),
        ("invalid_json", 502),
        ("drop", 502),
    ],
)
def test_upstream_failures_map_to_5xx(fake_factory, gateway_factory, behaviour, status):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"])
        + CLIENTS_TOML
        + "[pool]\nmax_attempts = 2\nretry_backoff_seconds = 0.01\n"
    )
    fake.behave("tok-1", behaviour)
    with pytest.raises(openai.APIStatusError) as info:
        gw.client().images.generate(prompt="x")
    assert info.value.status_code == status
    assert isinstance(info.value, openai.InternalServerError)
    assert "tok-1" not in info.value.response.text, "the upstream token must never leak"
    body = info.value.body
    assert set(body) == {"message", "type", "param", "code"}


def test_upstream_timeout_is_504(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("tok-1", "timeout", sleep=5)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"], extra="timeout_seconds = 0.3")
        + CLIENTS_TOML
        + "[pool]\nmax_attempts = 1\n"
    )
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().images.generate(prompt="x")
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"


def test_unknown_route_is_openai_shaped_404(acedata):
    _fake, gw = acedata
    with gw.http() as http:
        r = http.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["message"].startswith("Invalid URL")
    assert r.headers["x-request-id"].startswith("req_")


# ------------------------------------------------------------------ streaming details


def test_stream_sends_keepalives_while_waiting(fake_factory, gateway_factory):
    fake = fake_factory("acedata", latency=0.6)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"])
        + CLIENTS_TOML
        + "[images]\nstream_keepalive_seconds = 0.1\n"
    )
    with (
        gw.http() as http,
        http.stream(
            "POST",
            "/v1/images/generations",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"prompt": "slow", "stream": True, "model": "nano-banana"},
        ) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert text.count(": keep-alive") >= 2
    assert "event: image_generation.completed" in text
    assert text.rstrip().endswith("data: [DONE]")


def test_stream_error_after_start_raises_in_sdk(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    fake.behave("tok-1", "slow", sleep=0.5)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"], extra="timeout_seconds = 0.3")
        + CLIENTS_TOML
        + "[images]\nstream_keepalive_seconds = 0.05\n[pool]\nmax_attempts = 1\n"
    )
    with pytest.raises(openai.APIError) as info:
        list(gw.client().images.generate(prompt="x", stream=True))
    assert (
        "did not finish" in str(info.value.message)
        or "timed out" in str(info.value.message).lower()
    )


def test_stream_early_failure_keeps_its_status(acedata):
    fake, gw = acedata
    fake.behave("tok-1", "forbidden")
    with pytest.raises(openai.BadRequestError) as info:
        list(gw.client().images.generate(prompt="x", stream=True))
    assert info.value.body["code"] == "content_policy_violation"


# ------------------------------------------------------------------ the offline mock


def test_mock_upstream_without_tokens(gateway_factory):
    gw = gateway_factory("")
    client = gw.client(key="anything-goes")
    resp = client.images.generate(
        prompt="hello", model="nano-banana-pro", size="1365x2048", response_format="b64_json"
    )
    assert _decode(resp.data[0].b64_json).size == (1696, 2528)  # 2:3 at 2K
    url_resp = client.images.generate(prompt="hello", response_format="url")
    fetched = httpx.get(url_resp.data[0].url)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    models = client.models.list()
    assert "mock" in (models.model_extra or {}).get("warning", "").lower()
    edit = client.images.edit(image=png_bytes(300, 200), prompt="x", response_format="b64_json")
    assert _decode(edit.data[0].b64_json).size == (1248, 832)  # the first image's 3:2


# ------------------------------------------------------------------ n: partial results


def test_partial_result_is_an_error_unless_the_caller_accepts_it(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    # One image whatever count it is asked for; then the calls for the missing ones fail.
    fake.behave("tok-1", ["partial", "server_error"])
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"]) + CLIENTS_TOML + "[pool]\nmax_attempts = 1\n"
    )
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().images.generate(prompt="three", n=3, response_format="url")
    assert info.value.status_code == 502
    assert info.value.body["code"] == "partial_result"
    # The missing images were asked for once more, one per call (as the first answer
    # taught), before giving up.
    assert sorted(c.json.get("count", 1) for c in fake.generation_calls()) == [1, 1, 3]
    fake.reset()
    fake.behave("tok-1", ["ok", "server_error"])
    resp = gw.client().images.generate(
        prompt="three again",
        n=3,
        response_format="url",
        extra_headers={"x-gateway-allow-partial": "true"},
    )
    # Split up front now; the two that failed are not asked again (the pool retried them).
    assert len(resp.data) == 1
    assert [c.json.get("count", 1) for c in fake.generation_calls()] == [1, 1, 1]


# ------------------------------------------------------------------ defapi specifics


@pytest.fixture
def defapi(fake_factory, gateway_factory):
    fake = fake_factory("defapi")
    gw = gateway_factory(
        upstream_toml("def", fake, ["tok-1"], extra="poll_deadline_seconds = 1.0")
        + CLIENTS_TOML
        + "[pool]\nmax_attempts = 1\n"
    )
    return fake, gw


def test_defapi_tolerates_early_task_not_found(defapi):
    fake, gw = defapi
    fake.behave("tok-1", "ok", not_found_polls=3, pending_polls=2)
    resp = gw.client().images.generate(prompt="x", response_format="url")
    assert resp.data[0].url
    polls = fake.calls(path="/api/task/query")
    assert len(polls) == 6  # 3 not found, 2 in progress, then success
    assert all(p.token == "tok-1" for p in polls)


def test_defapi_text_result_is_a_failure(defapi):
    fake, gw = defapi
    fake.behave("tok-1", "text_result", text="I can only describe this, not draw it")
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.generate(prompt="x")
    assert info.value.body["code"] == "content_policy_violation"
    assert "instead of an image" in info.value.body["message"]


def test_defapi_failed_task_is_502(defapi):
    fake, gw = defapi
    fake.behave("tok-1", "failed", reason="upstream model crashed")
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().images.generate(prompt="x")
    assert info.value.status_code == 502
    assert "upstream model crashed" in info.value.body["message"]


def test_defapi_task_that_never_finishes_times_out(defapi):
    fake, gw = defapi
    fake.behave("tok-1", "never")
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().images.generate(prompt="x")
    assert info.value.status_code == 504
    assert info.value.response.headers["x-upstream-task-id"].startswith("ta")


def test_defapi_more_than_four_images_is_refused_by_name(defapi):
    fake, gw = defapi
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.edit(image=[png_bytes(32, 32)] * 5, prompt="x")
    assert info.value.body["param"] == "image"
    assert fake.generation_calls() == []


def test_more_than_four_images_go_to_an_upstream_that_takes_them(fake_factory, gateway_factory):
    small = fake_factory("defapi")
    large = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("def", small, ["dk-test-0001"], extra="priority = 0")
        + upstream_toml("ace", large, ["a1"], extra="priority = 1")
        + CLIENTS_TOML
    )
    gw.client().images.edit(image=[png_bytes(32, 32)] * 6, prompt="x", response_format="url")
    assert small.generation_calls() == []
    assert len(large.generation_calls()[0].json["image_urls"]) == 6


# ------------------------------------------------------------------ downloads


def test_download_sends_browser_user_agent(defapi):
    fake, gw = defapi
    fake.cdn_behaviour = "browser_ua_only"
    resp = gw.client().images.generate(prompt="x", response_format="b64_json")
    assert _decode(resp.data[0].b64_json).format == "PNG"


def test_download_failures_are_502(defapi):
    fake, gw = defapi
    fake.cdn_behaviour = "not_found"
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().images.generate(prompt="x", response_format="b64_json")
    assert info.value.status_code == 502
    assert info.value.body["code"] == "image_download_failed"


def test_download_is_bounded_in_size(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"])
        + CLIENTS_TOML
        + "[images]\ndownload_max_bytes = 2048\n"
    )
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().images.generate(
            prompt="x", response_format="b64_json", model="nano-banana-pro", size="2048x2048"
        )
    assert info.value.body["code"] == "image_download_failed"
    assert "download_max_bytes" in info.value.body["message"]


def test_oversized_bodies_are_refused_with_413(acedata):
    fake, gw = acedata
    with gw.http() as http:
        r = http.post(
            "/v1/images/generations",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"prompt": "x" * (2 * 1024 * 1024)},
        )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert fake.generation_calls() == []


def test_prompt_length_limit(acedata):
    _fake, gw = acedata
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.generate(prompt="x" * 32001)
    assert info.value.body["param"] == "prompt"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "multipart/form-data; boundary=xyz",
            b"--xyz\r\nContent-Disposition: form-data\r\n\r\ngarbage",
        ),
        ("multipart/form-data", b"no boundary at all"),
        ("text/plain", b"prompt=hello"),
    ],
    ids=["truncated-multipart", "no-boundary", "wrong-content-type"],
)
def test_malformed_edit_bodies_are_400(acedata, content_type, body):
    fake, gw = acedata
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            content=body,
            headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": content_type},
        )
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert fake.generation_calls() == []
