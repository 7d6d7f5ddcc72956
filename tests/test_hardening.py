"""Hostile input and hostile upstreams: every one gets a clean, OpenAI-shaped 4xx or 502/504
naming what is wrong, never a 500, a stack trace or a hang.

Callers are the official SDK where it can express the mistake and raw HTTP where only a
broken client could send it; upstreams are the fakes in tests/support/fakes.py and, for answers no
honest provider gives, the scripted server in tests/hostile.py.
"""

from __future__ import annotations

import base64
import io
import json
import zlib

import httpx
import openai
import pytest
from PIL import Image

from gateway.config import ConfigError
from tests.support.fakes import png_bytes
from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, make_config, upstream_toml
from tests.support.hostile import (
    HostileServer,
    ace_success,
    answer,
    bomb_png,
    corrupt_idat_png,
    declared_but_short,
    gzip_bomb,
    json_answer,
    noisy_png,
    png,
    trickle,
)

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(autouse=True)
def no_stack_traces(capfd):
    """No request in this file may end in an unhandled exception (a traceback in the
    server's log), whatever the status the caller saw."""
    yield
    out, err = capfd.readouterr()
    for text in (out, err):
        assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]


def _error(r: httpx.Response, status: int, param: str | None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == ERROR_FIELDS
    assert body["param"] == param, body
    assert r.headers["x-request-id"].startswith("req_")
    return body


@pytest.fixture
def acedata(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"])
        + CLIENTS_TOML
        + "[images]\nupload_max_bytes = 65536\n"
    )
    return fake, gw


# ------------------------------------------------------------------ bodies


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser recurses
        b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b"\xff\xfe not utf-8",
        b"",
        b'{"prompt": "x"',
        b'{"prompt": "x"} trailing',
        # Not JSON by RFC 8259, and nothing the gateway sends on could encode them again.
        b'{"prompt": "a \\ud800 cat"}',
        b'{"prompt": "x", "n": NaN}',
    ],
    ids=[
        "deep-array",
        "deep-field",
        "not-utf8",
        "empty",
        "unterminated",
        "trailing-junk",
        "lone-surrogate",
        "nan",
    ],
)
@pytest.mark.parametrize("endpoint", ["generations", "edits"])
def test_unreadable_json_is_400(acedata, body, endpoint):
    fake, gw = acedata
    with gw.http() as http:
        r = http.post(
            f"/v1/images/{endpoint}",
            content=body,
            headers={**AUTH, "content-type": "application/json"},
        )
    _error(r, 400, None)
    assert fake.generation_calls() == []


@pytest.mark.parametrize("body", ["[]", '"prompt"', "42", "null", "true", '[{"prompt": "x"}]'])
@pytest.mark.parametrize("endpoint", ["generations", "edits"])
def test_json_that_is_not_an_object_is_400(acedata, body, endpoint):
    _fake, gw = acedata
    with gw.http() as http:
        r = http.post(
            f"/v1/images/{endpoint}",
            content=body.encode(),
            headers={**AUTH, "content-type": "application/json"},
        )
    assert "JSON object" in _error(r, 400, None)["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", 5),
        ("prompt", ["a"]),
        ("prompt", "   "),
        ("model", []),
        ("n", "2"),
        ("n", 2.5),
        ("n", True),
        ("n", 0),
        ("n", 11),
        ("n", -1),
        ("n", 10**30),
        ("size", 1024),
        ("size", "1024x1024x1"),
        ("size", "4000x1000"),  # ratio beyond 3:1
        ("size", "0x0"),
        ("size", "abcxdef"),
        ("size", "١٠٢٤x١٠٢٤"),  # non-ASCII digits
        ("quality", {}),
        ("stream", "yes"),
        ("response_format", "jpeg"),
        ("output_compression", "high"),
        ("partial_images", 7),
        ("user", 12),
        ("background", "glass"),
    ],
)
def test_wrong_field_types_and_values_name_the_field(acedata, field, value):
    fake, gw = acedata
    body = {"prompt": "a cat", field: value}
    with gw.http() as http:
        r = http.post("/v1/images/generations", json=body, headers=AUTH)
    _error(r, 400, field)
    assert fake.generation_calls() == []


def test_unknown_fields_are_refused_by_name(acedata):
    _fake, gw = acedata
    with gw.http() as http:
        r = http.post(
            "/v1/images/generations", json={"prompt": "x", "negative_prompt": "y"}, headers=AUTH
        )
    assert "Unrecognized request argument" in _error(r, 400, "negative_prompt")["message"]


def test_generation_body_over_the_limit_is_413_before_it_is_read(acedata):
    _fake, gw = acedata
    sent = 0

    def body():
        nonlocal sent
        for _ in range(64):  # 64 MiB if the gateway kept reading
            sent += 1
            yield b" " * (1024 * 1024)

    with gw.http() as http:
        r = http.post(
            "/v1/images/generations",
            content=body(),
            headers={**AUTH, "content-type": "application/json"},
        )
    assert _error(r, 413, None)["code"] == "request_too_large"


# ------------------------------------------------------------------ edits: images


def _edit(gw, files, data=None) -> httpx.Response:
    with gw.http() as http:
        return http.post(
            "/v1/images/edits", headers=AUTH, files=files, data=data or {"prompt": "x"}
        )


def test_image_over_the_size_limit_names_the_image(acedata):
    fake, gw = acedata
    big = noisy_png(256, 256)  # ~190 KB of incompressible pixels, over the 64 KiB limit
    assert len(big) > 65536
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.edit(image=big, prompt="x")
    assert info.value.body["param"] == "image"
    assert info.value.body["code"] == "image_too_large"
    uri = "data:image/png;base64," + base64.b64encode(big).decode()
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits", headers=AUTH, json={"prompt": "x", "images": [{"image_url": uri}]}
        )
    assert _error(r, 400, "images[0].image_url")["code"] == "image_too_large"
    assert fake.generation_calls() == []


def test_default_image_limit_is_the_upstreams_10_mb(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(upstream_toml("ace", fake, ["tok-1"]) + CLIENTS_TOML)
    assert gw.config.images.upload_max_bytes == 10 * 1024 * 1024
    padded = png_bytes(32, 32) + b"\0" * (10 * 1024 * 1024)  # a valid PNG, then padding
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().images.edit(image=padded, prompt="x")
    assert info.value.body["code"] == "image_too_large"
    assert "10 MB" in info.value.body["message"]
    assert fake.generation_calls() == []


@pytest.mark.parametrize("count", [17, 19, 40])
def test_too_many_images_names_the_image(acedata, count):
    fake, gw = acedata
    files = [("image[]", (f"{i}.png", png_bytes(16, 16), "image/png")) for i in range(count)]
    body = _error(_edit(gw, files), 400, "image")
    assert "16" in body["message"]
    assert fake.generation_calls() == []


def test_too_many_images_in_json_names_images(acedata):
    _fake, gw = acedata
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(16, 16)).decode()
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            headers=AUTH,
            json={"prompt": "x", "images": [{"image_url": uri}] * 17},
        )
    _error(r, 400, "images")


def _truncated() -> bytes:
    data = noisy_png(64, 64)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"%PDF-1.7 not an image", "not a PNG"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a PNG"),
        (b"\x89PNG\r\n\x1a\n", "damaged or truncated"),  # the magic number and nothing else
        (_truncated(), "damaged or truncated"),
        (bomb_png(), "pixels"),
        (b"BM" + b"\0" * 64, "not a PNG"),  # BMP: sniffed, but not a type upstreams take
    ],
    ids=["pdf", "svg", "magic-only", "truncated", "decompression-bomb", "bmp"],
)
def test_non_images_truncated_files_and_bombs_are_400(acedata, data, words):
    fake, gw = acedata
    body = _error(_edit(gw, {"image": ("upload", data, "image/png")}), 400, "image")
    assert body["code"] == "invalid_image_format"
    assert words in body["message"]
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits", headers=AUTH, json={"prompt": "x", "images": [{"image_url": uri}]}
        )
    assert words in _error(r, 400, "images[0].image_url")["message"]
    assert fake.generation_calls() == []


def test_image_type_comes_from_the_bytes_not_the_label(acedata):
    fake, gw = acedata
    jpeg = io.BytesIO()
    Image.new("RGB", (24, 24), (1, 2, 3)).save(jpeg, "JPEG")
    r = _edit(gw, {"image": ("cat.png", jpeg.getvalue(), "image/png")}, {"prompt": "x"})
    assert r.status_code == 200, r.text
    assert fake.generation_calls()[0].json["image_urls"][0].startswith("data:image/jpeg;base64,")


def test_chunked_multipart_over_the_limit_is_413(acedata):
    """No Content-Length to check up front: the body is counted as it streams in."""
    fake, gw = acedata
    boundary = "hostile"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        for _ in range(40):  # 40 MiB: over 16 images x 64 KiB + 1 MiB
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            content=body(),
            headers={**AUTH, "content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert _error(r, 413, None)["code"] == "request_too_large"
    assert fake.generation_calls() == []


@pytest.mark.parametrize(
    ("content_type", "body", "param"),
    [
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx',
            "image",  # read as far as it goes: a prompt, and no image
        ),
        ("multipart/form-data; boundary=b", b"--b--\r\n", "image"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="n"\r\n\r\nthree\r\n--b--\r\n',
            "n",
        ),
        ("application/x-www-form-urlencoded", b"prompt=x", None),
        ("", b"prompt=x", None),
        ("image/png", png_bytes(8, 8), None),
    ],
    ids=["unterminated", "no-parts", "n-not-a-number", "urlencoded", "no-content-type", "raw-png"],
)
def test_malformed_multipart_and_wrong_content_types_are_400(acedata, content_type, body, param):
    fake, gw = acedata
    headers = {**AUTH, "content-type": content_type} if content_type else AUTH
    with gw.http() as http:
        r = http.post("/v1/images/edits", content=body, headers=headers)
    _error(r, 400, param)
    assert fake.generation_calls() == []


def test_repeated_scalar_and_file_in_a_text_field_are_400(acedata):
    _fake, gw = acedata
    files = [
        ("image", ("a.png", png_bytes(8, 8), "image/png")),
        ("prompt", (None, "one")),
        ("prompt", (None, "two")),
    ]
    _error(_edit(gw, files, data={}), 400, "prompt")
    files = [
        ("image", ("a.png", png_bytes(8, 8), "image/png")),
        ("prompt", ("p.txt", b"a file", "text/plain")),
    ]
    _error(_edit(gw, files, data={}), 400, "prompt")


# ------------------------------------------------------------------ hostile upstreams


@pytest.fixture
def hostile(gateway_factory):
    """A gateway whose only upstream is the scripted server, one attempt per request."""
    server = HostileServer().start()
    gw = gateway_factory(
        f'[[upstreams]]\nname = "evil"\ntype = "acedata"\nbase_url = "{server.origin}"\n'
        'tokens = ["evil-token-0123"]\ntimeout_seconds = 2\n\n'
        "[pool]\nmax_attempts = 1\n\n[images]\ndownload_timeout_seconds = 2\n" + CLIENTS_TOML
    )
    yield server, gw
    server.stop()


def _generate_fails(gw, status: int, code: str, **kwargs) -> dict:
    kwargs.setdefault("response_format", "url")
    with pytest.raises(openai.APIStatusError) as info:
        gw.client().images.generate(prompt="x", **kwargs)
    assert info.value.status_code == status, info.value.response.text
    body = info.value.body
    assert set(body) == ERROR_FIELDS
    assert body["code"] == code, body
    return body


ANSWERS = {
    "not-json": answer(200, b"<html>502 Bad Gateway</html>", "text/html"),
    "truncated-json": answer(200, b'{"success": true, "data": [{"image_url": '),
    "json-array": json_answer([{"image_url": "http://x/1.png"}]),
    "json-string": json_answer("ok"),
    "no-data": json_answer({"success": True, "task_id": "t"}),
    "data-not-a-list": json_answer({"success": True, "data": {"image_url": "http://x/1.png"}}),
    "empty-data": json_answer({"success": True, "data": []}),
    "no-image-url": json_answer({"success": True, "data": [{"prompt": "p"}]}),
    "image-url-not-a-string": json_answer({"success": True, "data": [{"image_url": 42}]}),
    "javascript-link": json_answer(
        {"success": True, "data": [{"image_url": "javascript:alert(document.cookie)"}]}
    ),
    "file-link": json_answer({"success": True, "data": [{"image_url": "file:///etc/passwd"}]}),
    "deep-json": answer(200, b"[" * 100_000 + b"]" * 100_000),
    "error-without-fields": json_answer({"success": False}, status=500),
    "error-is-a-string": json_answer({"success": False, "error": "boom"}, status=500),
    "declared-100-MB": declared_but_short(100 * 1024 * 1024),
    "gzip-bomb": gzip_bomb(128 * 1024 * 1024),
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_unreadable_upstream_answers_are_502(hostile, name):
    server, gw = hostile
    server.route("/nano-banana/images", ANSWERS[name])
    _generate_fails(gw, 502, "upstream_error")
    assert set(server.paths()) == {"/nano-banana/images"}


def test_an_upstream_that_trickles_forever_times_out(hostile):
    """Each byte arrives well within the per-read timeout; only a deadline on the whole
    call ends it."""
    server, gw = hostile
    server.route("/nano-banana/images", trickle(b'{"success": true, "data": [', 0.2, 30))
    _generate_fails(gw, 504, "upstream_timeout")


def _link_serving(server: HostileServer, route) -> None:
    server.route("/nano-banana/images", ace_success(server.url("/img.png")))
    server.route("/img.png", route)


LINKS = {
    "html": answer(200, b"<html>Access denied</html>", "text/html"),
    "empty": answer(200, b"", "image/png"),
    "truncated-png": answer(200, noisy_png()[:5000], "image/png"),
    "decompression-bomb": answer(200, bomb_png(), "image/png"),
    "bmp": answer(200, b"BM" + bytes(100), "image/bmp"),
    "gzip-bomb": gzip_bomb(96 * 1024 * 1024, "image/png"),
    "not-found": answer(404, b"gone", "text/plain"),
    "redirect-nowhere": answer(302, b"", "text/plain"),
}


@pytest.mark.parametrize("name", list(LINKS))
def test_image_links_that_do_not_give_an_image_are_502(hostile, name):
    server, gw = hostile
    _link_serving(server, LINKS[name])
    body = _generate_fails(gw, 502, "image_download_failed", response_format="b64_json")
    assert "evil-token" not in body["message"]


def test_damaged_pixels_are_502_even_when_the_image_is_re_encoded(hostile):
    """Checksums right, pixel data broken: only decoding notices, and re-encoding to JPEG
    decodes; that must be a 502 about the image, not a crash."""
    server, gw = hostile
    _link_serving(server, answer(200, corrupt_idat_png(), "image/png"))
    body = _generate_fails(
        gw, 502, "image_download_failed", response_format="b64_json", output_format="jpeg"
    )
    assert "damaged" in body["message"]


def test_an_image_link_that_never_finishes_times_out(hostile):
    server, gw = hostile
    _link_serving(server, trickle(b"\x89PNG\r\n\x1a\n", 0.2, 30))
    _generate_fails(gw, 504, "image_download_timeout", response_format="b64_json")


def test_a_good_image_still_goes_through(hostile):
    """The same scripted server, answering honestly: the failures above are the answers'."""
    server, gw = hostile
    _link_serving(server, answer(200, png(40, 30), "image/png"))
    resp = gw.client().images.generate(prompt="x", response_format="b64_json")
    assert Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json))).size == (40, 30)
    assert resp.size == "40x30"


def test_fewer_images_than_asked_are_asked_for_one_per_call(hostile):
    """A provider that makes one image per call whatever `count` says: the rest are asked
    for once more, one per call, instead of failing the request."""
    server, gw = hostile
    server.route("/nano-banana/images", ace_success("https://192.0.2.1/1.png"))
    resp = gw.client().images.generate(prompt="x", n=3, response_format="url")
    assert len(resp.data) == 3
    assert server.paths() == ["/nano-banana/images"] * 3


def test_more_images_than_asked_keeps_the_asked_one(hostile):
    """What was made is what is reported: a paid-for answer with too many images keeps the
    one asked for rather than being made (and paid for) again elsewhere."""
    server, gw = hostile
    server.route(
        "/nano-banana/images",
        ace_success("https://192.0.2.1/1.png", "https://192.0.2.1/2.png"),
    )
    resp = gw.client().images.generate(prompt="x", response_format="url")
    assert [d.url for d in resp.data] == ["https://192.0.2.1/1.png"]
    assert server.paths() == ["/nano-banana/images"]


def test_defapi_task_with_more_than_one_image_answers_one(gateway_factory):
    server = HostileServer().start()
    try:
        server.route("/api/image/gen", json_answer({"code": 0, "data": {"task_id": "ta1"}}))
        server.route(
            "/api/task/query",
            json_answer(
                {
                    "code": 0,
                    "data": {
                        "task_id": "ta1",
                        "status": "success",
                        "result": [
                            {"image": "https://192.0.2.1/1.png"},
                            {"image": "https://192.0.2.1/2.png"},
                        ],
                    },
                }
            ),
        )
        gw = gateway_factory(
            f'[[upstreams]]\nname = "def"\ntype = "defapi"\nbase_url = "{server.origin}"\n'
            'tokens = ["def-token-0123"]\npoll_interval_seconds = 0.01\n\n'
            "[pool]\nmax_attempts = 1\n" + CLIENTS_TOML
        )
        resp = gw.client().images.generate(prompt="x", response_format="url")
        assert [d.url for d in resp.data] == ["https://192.0.2.1/1.png"]
        assert server.paths().count("/api/image/gen") == 1
    finally:
        server.stop()


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[images]\nallowed_networks = ["10.0.0.0/33"]\n', "images.allowed_networks[0]"),
        ('[images]\nallowed_networks = "10.0.0.0/8"\n', "images.allowed_networks"),
        ("[images]\nallow_private_networks = 1\n", "images.allow_private_networks"),
        ("[server]\nmetrics_port = 70000\n", "server.metrics_port"),
        ('[server]\nmetrics_port = "9100"\n', "server.metrics_port"),
        ('[admin]\nmetrics_key = "short"\n', "admin.metrics_key"),
        ('[admin]\nmetrics = "x"\n', "admin.metrics"),
    ],
)
def test_hardening_settings_are_validated(toml, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        make_config(toml)


def test_hardening_settings_are_read():
    config = make_config(
        '[images]\nallowed_networks = ["10.1.0.0/16"]\nallow_private_networks = false\n'
        '[server]\nmetrics_port = 9100\nmetrics_host = "0.0.0.0"\n'
        '[admin]\nmetrics_key = "${MK}"\n',
        {"MK": "metrics-key-0123456789"},
    )
    assert config.images.allowed_networks == ("10.1.0.0/16",)
    assert (config.server.metrics_port, config.server.metrics_host) == (9100, "0.0.0.0")
    assert config.admin.metrics_key == "metrics-key-0123456789"
    assert "metrics-key-0123456789" in config.secrets()


def test_json_loads_cannot_be_made_to_recurse_out():
    """The parser's own guard: nesting beyond Python's recursion limit is just bad JSON."""
    from gateway.upstreams._common import json_loads

    assert json_loads(b"[" * 200_000) is None
    assert json_loads(zlib.compress(b"x")) is None
    assert json_loads(json.dumps({"a": 1}).encode()) == {"a": 1}


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [{"url": "https://x/1.png"}], "n": 1.5, "ok": true, "none": null}',
        b'{"cost": NaN, "big": 123456789012345678901234567890}',  # beyond strict JSON
        b'{"message": "\\ud800 lone"}',
        '{"message": "caf\u00e9"}'.encode("utf-16"),
        b"[" * 1500 + b"]" * 1500,  # deeper than orjson goes, within Python's limit
        b"not json",
        b"",
        b'{"a": 1',
    ],
)
def test_json_loads_reads_what_the_standard_library_reads(body: bytes) -> None:
    from gateway.upstreams._common import json_loads

    try:
        expected = json.loads(body)
    except (ValueError, RecursionError):
        expected = None
    got = json_loads(body)
    assert repr(got) == repr(expected)  # NaN != NaN; repr compares it too
