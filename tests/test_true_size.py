"""A url answer reports and bills the size that was made, not the one asked for.

Providers may ignore `resolution` (AceData's reference: it "only works when model is
nano-banana-pro", and only for generate), so the gateway reads each linked image's header
from its first 64 KiB (a ranged GET through the guarded fetcher) before it reports `size`
and prices the request. The fakes in documented mode do only what the reference says.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, PngImagePlugin

from gateway.admission.prices import PriceList, made_resolution
from gateway.api.responses import size_source
from gateway.config import PricesConfig
from gateway.errors import DownloadFailed, DownloadRefused
from gateway.shape import probe
from gateway.shape.fetch import Fetcher
from gateway.shape.media import data_uri_head, to_data_uri
from gateway.shape.netguard import UrlPolicy
from gateway.shape.probe import PROBE_BYTES, probe_size, size_from_head, webp_size
from gateway.types import ImagesResult, ProducedImage
from tests.support.fakes import FakeUpstream, png_bytes
from tests.support.gateway import CLIENTS_TOML, RunningGateway, upstream_toml
from tests.support.hostile import Handler, HostileServer, answer, noisy_png, redirect
from tests.support.metrics import labels, of, settled_metrics

PRICE_1K, PRICE_2K, PRICE_4K = 0.05, 0.1, 0.2
PRO_1K, PRO_2K = 0.13, 0.17
PRICES_TOML = f"""
[prices]
"nano-banana-2" = {{ "1K" = {PRICE_1K}, "2K" = {PRICE_2K}, "4K" = {PRICE_4K} }}
"nano-banana-pro" = {{ "1K" = {PRO_1K}, "2K" = {PRO_2K}, "4K" = 0.24 }}
"""
# Off so every answer is the fan-out's own, and each request meters its own upstream work.
NO_CACHE_TOML = "\n[cache]\nenabled = false\n"


def _text_chunk(length: int) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("manifest", "x" * length)
    return info


def _encode(fmt: str, size: tuple[int, int], mode: str = "RGB", **options: Any) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 64).convert(mode).save(out, fmt, **options)
    return out.getvalue()


# --------------------------------------------------------------------------- the tier


@pytest.mark.parametrize(
    ("model", "size", "tier"),
    [
        ("nano-banana-2", (1024, 1024), "1K"),
        ("nano-banana-2", (2048, 2048), "2K"),
        ("nano-banana-2", (4096, 4096), "4K"),
        ("nano-banana-2", (768, 1376), "1K"),  # 9:16 at 1K: a long side over 1024 is still 1K
        ("nano-banana-pro", (1376, 768), "1K"),
        ("nano-banana-pro", (2752, 1536), "2K"),
        ("nano-banana-pro", (2528, 1696), "2K"),
        ("nano-banana-pro", (5056, 3392), "4K"),
        ("nano-banana-pro", (1584, 672), "1K"),  # 21:9, a ratio only some upstreams take
        ("nano-banana-pro", (1120, 1120), "1K"),  # a little over a tier (rounding, padding)
        ("nano-banana-pro", (1200, 1200), "2K"),  # well over it: the next tier
        ("nano-banana-pro", (1800, 1800), "2K"),  # between tiers: billed up, never down
        ("nano-banana-pro", (512, 512), "1K"),  # smaller than any tier: the smallest
        ("nano-banana-pro", (8192, 8192), "4K"),  # larger than any: the largest
        ("nano-banana-pro:official", (2048, 2048), "2K"),  # a variant: its base model's table
        ("nano-banana", (1344, 768), "1K"),
        ("nano-banana", (2048, 2048), "1K"),  # a 1K-only model is only ever 1K
        ("nano-banana-2-lite", (2048, 2048), "1K"),
        ("no-such-model", (1024, 1024), "1K"),
    ],
)
def test_made_resolution(model: str, size: tuple[int, int], tier: str) -> None:
    assert made_resolution(model, size) == tier


@pytest.fixture(scope="module")
def prices() -> PriceList:
    return PriceList(
        PricesConfig(
            table={
                "nano-banana-2": {"1K": PRICE_1K, "2K": PRICE_2K, "4K": PRICE_4K},
                "nano-banana-pro": {"1K": PRO_1K, "2K": PRO_2K, "4K": 0.24},
            }
        )
    )


@pytest.mark.parametrize(
    ("model", "resolution", "sizes", "cost"),
    [
        ("nano-banana-2", "2K", [(1024, 1024)], PRICE_1K),  # asked 2K, made 1K: 1K
        ("nano-banana-2", "2K", [(2048, 2048)], PRICE_2K),
        ("nano-banana-2", "1K", [(4096, 4096)], PRICE_4K),  # made more than asked: its price
        ("nano-banana-2", "2K", [None], PRICE_2K),  # size unknown: what was asked
        ("nano-banana-2", None, [None], PRICE_1K),  # nothing asked: the default, 1K
        ("nano-banana-2", "2K", [(1024, 1024), (2048, 2048)], PRICE_1K + PRICE_2K),
        ("nano-banana-pro", "2K", [(4096, 4096)], 0.24),
        ("nano-banana-pro:official", None, [(2048, 2048)], PRO_2K),  # its base model's price
        ("nano-banana", None, [(1024, 1024)], None),  # the model has none
        ("nano-banana-2", "2K", [], 0.0),
    ],
)
def test_estimate_made(
    prices: PriceList,
    model: str,
    resolution: str | None,
    sizes: list[tuple[int, int] | None],
    cost: float | None,
) -> None:
    assert prices.estimate_made(model, resolution, sizes) == (
        None if cost is None else pytest.approx(cost)
    )


# --------------------------------------------------------------------------- the header


# Noise does not compress, so each of these is far larger than what the probe reads.
_PNG = _encode("PNG", (600, 400))
_JPEG = _encode("JPEG", (900, 700), quality=95)
_WEBP_LOSSY = _encode("WEBP", (700, 500), quality=90)
_WEBP_LOSSLESS = _encode("WEBP", (640, 360), lossless=True)
_WEBP_EXTENDED = _encode("WEBP", (500, 300), mode="RGBA", quality=90)  # alpha: VP8X
# Metadata before the pixels running past the bytes read (a C2PA manifest, say).
_PNG_BIG_META = _encode("PNG", (600, 400), pnginfo=_text_chunk(100_000))
_JPEG_BIG_EXIF = _encode("JPEG", (900, 700), exif=b"Exif\0\0" + bytes(65_000))


@pytest.mark.parametrize(
    ("head", "size"),
    [
        pytest.param(_PNG[:PROBE_BYTES], (600, 400), id="png-cut"),
        pytest.param(_JPEG[:PROBE_BYTES], (900, 700), id="jpeg-cut"),
        pytest.param(_WEBP_LOSSY[:PROBE_BYTES], (700, 500), id="webp-vp8-cut"),
        pytest.param(_WEBP_LOSSLESS[:PROBE_BYTES], (640, 360), id="webp-vp8l-cut"),
        pytest.param(_WEBP_EXTENDED[:PROBE_BYTES], (500, 300), id="webp-vp8x-cut"),
        pytest.param(_PNG_BIG_META[:PROBE_BYTES], (600, 400), id="png-metadata-past-the-cut"),
        pytest.param(_PNG[:24], (600, 400), id="png-ihdr-only"),
        pytest.param(_WEBP_LOSSY[:30], (700, 500), id="webp-first-chunk-only"),
        pytest.param(png_bytes(2048, 2048), (2048, 2048), id="whole-png"),
        pytest.param(_encode("GIF", (64, 48)), (64, 48), id="gif"),
        pytest.param(_PNG[:20], None, id="png-cut-inside-ihdr"),
        pytest.param(_PNG[:12] + b"tEXt" + _PNG[16:], None, id="png-not-starting-with-ihdr"),
        pytest.param(_JPEG[:200], None, id="jpeg-cut-before-sof"),
        # The size comes after metadata larger than the probe reads: not known (expected).
        pytest.param(_JPEG_BIG_EXIF[:PROBE_BYTES], None, id="jpeg-exif-past-the-cut"),
        pytest.param(_JPEG_BIG_EXIF, (900, 700), id="jpeg-exif-whole"),
        pytest.param(_WEBP_LOSSY[:20], None, id="webp-cut-before-size"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"<html>Access denied</html>", None, id="html"),
        pytest.param(b"BM" + bytes(100), None, id="bmp"),
        # A header claiming more pixels than any image the gateway accepts: not believed.
        pytest.param(
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
            + (30000).to_bytes(4, "big") * 2
            + b"\x08\x02\x00\x00\x00\x00\x00\x00\x00",
            None,
            id="png-absurd-size",
        ),
    ],
)
def test_size_from_head(head: bytes, size: tuple[int, int] | None) -> None:
    assert size_from_head(head) == size


@pytest.mark.parametrize(
    ("head", "size"),
    [
        (b"RIFF\0\0\0\0WEBPVP8X" + bytes(8) + (99).to_bytes(3, "little") * 2, (100, 100)),
        (b"RIFF\0\0\0\0WEBPVP8L" + bytes(4) + b"\x2f" + bytes(9), (1, 1)),
        (b"RIFF\0\0\0\0WEBPVP8L" + bytes(4) + b"\x00" + bytes(9), None),  # no signature
        (b"RIFF\0\0\0\0WEBPVP8 " + bytes(7) + b"\x00\x00\x00" + bytes(4), None),  # no start code
        (b"RIFF\0\0\0\0WEBPALPH" + bytes(14), None),
        (b"RIFF\0\0\0\0WAVEfmt " + bytes(14), None),
    ],
)
def test_webp_size(head: bytes, size: tuple[int, int] | None) -> None:
    assert webp_size(head) == size


def test_data_uri_head_decodes_only_the_start() -> None:
    uri = to_data_uri(_PNG, "image/png")
    assert data_uri_head(uri, 1000) == _PNG[:1000]
    assert data_uri_head(uri, 10**9) == _PNG
    assert data_uri_head("data:image/png;base64,@@@@", 10) is None
    assert data_uri_head("https://cdn.example.com/a.png", 10) is None


@pytest.mark.parametrize(
    ("sources", "header"),
    [
        (["measured"], "measured"),
        (["measured", "measured"], "measured"),
        (["measured", "expected"], "expected"),  # one guess makes the answer's sizes guesses
        (["expected"], "expected"),
        ([None], None),  # from the cache: not known
        (["measured", None], None),
        ([], None),
    ],
)
def test_size_source_header(sources: list[Any], header: str | None) -> None:
    result = ImagesResult(images=[ProducedImage(url="u", size_source=s) for s in sources])
    assert size_source(result) == header


def test_held_bytes_were_measured_wherever_they_come_from() -> None:
    stored = [ProducedImage(url="u", data=b"png", size=(1, 1)), ProducedImage(url="v")]
    assert size_source(ImagesResult(images=stored[:1])) == "measured"
    assert size_source(ImagesResult(images=stored)) is None  # a stored link: not known


# --------------------------------------------------------------------------- the fetcher


def _stalls_after(data: bytes, sent: int) -> Any:
    """A 200 that ignores Range: announces a body 100 times `data`, sends `sent` bytes of
    it, then stalls. Only a reader that stops at its limit returns before the stall ends."""

    def route(h: Handler) -> None:
        h.send_response(200)
        h.send_header("content-type", "image/png")
        h.send_header("content-length", str(len(data) * 100))
        h.end_headers()
        h.wfile.write(data[:sent])
        h.wfile.flush()
        time.sleep(5)

    return route


@pytest.fixture
def scripted() -> Any:
    server = HostileServer().start()
    yield server
    server.stop()


def _first_bytes(server_origin: str, url: str, limit: int = PROBE_BYTES) -> bytes:
    async def run() -> bytes:
        fetcher = Fetcher(
            max_bytes=1 << 20, timeout=10, policy=UrlPolicy.build(trusted_urls=[server_origin])
        )
        try:
            return await fetcher.first_bytes(url, limit)
        finally:
            await fetcher.aclose()

    return asyncio.run(run())


def test_first_bytes_asks_a_range_and_gets_a_206(fake_factory) -> None:
    fake = fake_factory("acedata")
    image = png_bytes(4096, 4096, color=fake.image_color)
    link = fake._image_url(fake._issue_image((4096, 4096)))
    assert _first_bytes(fake.origin, link, 1000) == image[:1000]
    (rec,) = [r for r in fake.requests if "/cdn/" in r.path]
    assert rec.headers["range"] == "bytes=0-999"


def test_first_bytes_stops_reading_a_host_that_ignores_range(scripted) -> None:
    big = noisy_png(600, 400)
    scripted.route("/img.png", _stalls_after(big, PROBE_BYTES + 10_000))
    started = time.monotonic()
    head = _first_bytes(scripted.origin, scripted.url("/img.png"))
    assert time.monotonic() - started < 4  # did not wait for the rest of the body
    assert head == big[:PROBE_BYTES]
    assert size_from_head(head) == (600, 400)


def test_first_bytes_fails_like_a_download(scripted) -> None:
    scripted.route("/gone.png", answer(404, b"gone", "text/plain"))
    scripted.route("/inward.png", redirect("http://10.0.0.1/x.png"))
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        _first_bytes(scripted.origin, scripted.url("/gone.png"))
    # Every hop is checked against the network policy, as for a download.
    with pytest.raises(DownloadRefused):
        _first_bytes(scripted.origin, scripted.url("/inward.png"))
    assert scripted.paths() == ["/gone.png", "/inward.png"]


def test_probe_size_of_a_data_uri_makes_no_request() -> None:
    async def run() -> tuple[int, int] | None:
        fetcher = Fetcher(max_bytes=1 << 20, timeout=10)
        try:
            return await probe_size(fetcher, to_data_uri(_JPEG, "image/jpeg"))
        finally:
            await fetcher.aclose()

    assert asyncio.run(run()) == (900, 700)


# --------------------------------------------------------------------------- end to end


def _gateway(gateway_factory: Any, fake: FakeUpstream, log_path: Path) -> RunningGateway:
    gw: RunningGateway = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + CLIENTS_TOML
        + PRICES_TOML
        + NO_CACHE_TOML
        + f'\n[usage]\nlog = "{log_path}"\n'
    )
    return gw


def _generate(gw: RunningGateway, **kwargs: Any) -> tuple[Any, httpx.Headers]:
    kwargs.setdefault("response_format", "url")
    raw = gw.client().images.with_raw_response.generate(prompt="a lighthouse", **kwargs)
    return raw.parse(), raw.headers


def _last_usage(log_path: Path) -> dict[str, Any]:
    lines = log_path.read_text().splitlines()
    return dict(json.loads(lines[-1]))


def _billed(gw: RunningGateway, model: str) -> tuple[float, float]:
    """(nano_banana_cost_usd_total, today's budget use) of team-a."""
    found = settled_metrics(gw)
    cost = of(found, "nano_banana_cost_usd_total")[labels(client="team-a", model=model)]
    usage = of(found, "nano_banana_client_limit_usage")
    return cost, usage[labels(client="team-a", limit="budget_usd_per_day")]


def _cdn_requests(fake: FakeUpstream) -> list[Any]:
    return [r for r in fake.requests if "/cdn/" in r.path]


@pytest.mark.parametrize("ranges", [True, False], ids=["range-206", "range-ignored-200"])
def test_asked_2k_made_1k_is_reported_and_billed_as_1k(
    tmp_path, fake_factory, gateway_factory, ranges: bool
) -> None:
    fake = fake_factory("acedata", documented=True)
    fake.cdn_ranges = ranges
    log_path = tmp_path / "usage.jsonl"
    gw = _gateway(gateway_factory, fake, log_path)

    resp, headers = _generate(gw, model="nano-banana-2", size="2048x2048")

    # One ranged GET of the image's first 64 KiB, not a download.
    assert [r.headers.get("range") for r in _cdn_requests(fake)] == ["bytes=0-65535"]
    # What the provider made, as anyone downloading the link would find.
    made = Image.open(io.BytesIO(httpx.get(resp.data[0].url).content)).size
    assert made == (1024, 1024)
    assert resp.size == "1024x1024"
    assert headers["x-gateway-size"] == "measured"
    line = _last_usage(log_path)
    assert line["size"] == "2048x2048"  # what the caller asked for
    assert (line["size_made"], line["resolution"]) == ("1024x1024", "1K")
    assert line["cost_usd"] == pytest.approx(PRICE_1K)
    assert _billed(gw, "nano-banana-2") == (pytest.approx(PRICE_1K), pytest.approx(PRICE_1K))


def test_b64_answers_were_measured_already_and_are_billed_by_it_too(
    tmp_path, fake_factory, gateway_factory
) -> None:
    fake = fake_factory("acedata", documented=True)
    log_path = tmp_path / "usage.jsonl"
    gw = _gateway(gateway_factory, fake, log_path)

    resp, headers = _generate(
        gw, model="nano-banana-2", size="2048x2048", response_format="b64_json"
    )

    assert Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json))).size == (1024, 1024)
    assert resp.size == "1024x1024"
    assert headers["x-gateway-size"] == "measured"
    assert _last_usage(log_path)["cost_usd"] == pytest.approx(PRICE_1K)
    # The image was downloaded whole, once: no separate probe.
    assert [r.headers.get("range") for r in _cdn_requests(fake)] == [None]


def test_an_image_host_that_fails_leaves_the_expected_size(
    tmp_path, fake_factory, gateway_factory
) -> None:
    fake = fake_factory("acedata", documented=True)
    fake.cdn_behaviour = "not_found"
    log_path = tmp_path / "usage.jsonl"
    gw = _gateway(gateway_factory, fake, log_path)

    resp, headers = _generate(gw, model="nano-banana-2", size="2048x2048")

    assert resp.data[0].url.startswith(fake.base_url)  # the caller still gets its link
    assert resp.size == "2048x2048"
    assert headers["x-gateway-size"] == "expected"
    line = _last_usage(log_path)
    assert (line["status"], line["size_made"], line["resolution"]) == (200, "2048x2048", "2K")
    assert line["cost_usd"] == pytest.approx(PRICE_2K)


def test_a_slow_image_host_costs_the_answer_at_most_the_probe_bound(
    tmp_path, fake_factory, gateway_factory, monkeypatch
) -> None:
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.3)
    fake = fake_factory("acedata", documented=True)
    fake.cdn_latency = 3.0
    gw = _gateway(gateway_factory, fake, tmp_path / "usage.jsonl")

    started = time.monotonic()
    resp, headers = _generate(gw, model="nano-banana-2", size="2048x2048")

    assert time.monotonic() - started < 2.5
    assert (resp.size, headers["x-gateway-size"]) == ("2048x2048", "expected")


def test_pro_at_2k_is_honoured_measured_and_billed_as_2k(
    tmp_path, fake_factory, gateway_factory
) -> None:
    fake = fake_factory("acedata", documented=True)
    log_path = tmp_path / "usage.jsonl"
    gw = _gateway(gateway_factory, fake, log_path)

    resp, headers = _generate(gw, model="nano-banana-pro", size="2048x2048")

    assert resp.size == "2048x2048"
    assert headers["x-gateway-size"] == "measured"
    line = _last_usage(log_path)
    assert (line["size_made"], line["resolution"]) == ("2048x2048", "2K")
    assert line["cost_usd"] == pytest.approx(PRO_2K)
    assert _billed(gw, "nano-banana-pro") == (pytest.approx(PRO_2K), pytest.approx(PRO_2K))


def test_several_images_are_measured_at_once(tmp_path, fake_factory, gateway_factory) -> None:
    fake = fake_factory("acedata")
    fake.cdn_latency = 1.0
    log_path = tmp_path / "usage.jsonl"
    gw = _gateway(gateway_factory, fake, log_path)

    started = time.monotonic()
    resp, headers = _generate(gw, model="nano-banana-2", size="2048x2048", n=3)

    assert time.monotonic() - started < 2.5  # one after another would take 3 s
    assert len(resp.data) == 3 and resp.size == "2048x2048"
    assert headers["x-gateway-size"] == "measured"
    assert len(_cdn_requests(fake)) == 3
    assert _last_usage(log_path)["cost_usd"] == pytest.approx(3 * PRICE_2K)


def test_a_1k_link_is_not_read(tmp_path, fake_factory, gateway_factory) -> None:
    """At 1K, the default and cheapest tier, nothing can be billed too high: no extra
    request; the answer says its size is the expected one."""
    fake = fake_factory("acedata", documented=True)
    log_path = tmp_path / "usage.jsonl"
    gw = _gateway(gateway_factory, fake, log_path)
    resp, headers = _generate(gw, model="nano-banana-2", size="1024x1024")
    assert (resp.size, headers["x-gateway-size"]) == ("1024x1024", "expected")
    assert _cdn_requests(fake) == []
    assert _last_usage(log_path)["cost_usd"] == pytest.approx(PRICE_1K)


def test_mock_images_are_measured_from_their_data_uri(tmp_path, gateway_factory) -> None:
    gw = gateway_factory(
        '[[upstreams]]\nname = "m"\ntype = "mock"\n' + CLIENTS_TOML + PRICES_TOML + NO_CACHE_TOML
    )
    resp, headers = _generate(gw, model="nano-banana-2", size="2048x2048")
    assert "/v1/images/store/" in resp.data[0].url  # hosted by the gateway
    assert (resp.size, headers["x-gateway-size"]) == ("2048x2048", "measured")


def test_a_cached_answer_keeps_the_measured_size_and_saves_its_price(
    tmp_path, fake_factory, gateway_factory
) -> None:
    fake = fake_factory("acedata", documented=True)
    log_path = tmp_path / "usage.jsonl"
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + CLIENTS_TOML
        + PRICES_TOML
        + f'\n[usage]\nlog = "{log_path}"\n'
    )
    first, _ = _generate(gw, model="nano-banana-2", size="2048x2048")
    again, headers = _generate(gw, model="nano-banana-2", size="2048x2048")

    assert (headers["x-cache"], headers["x-gateway-size"]) == ("hit", "measured")
    assert (first.size, again.size) == ("1024x1024", "1024x1024")
    made, hit = (json.loads(line) for line in log_path.read_text().splitlines())
    assert (made["cache"], made["cost_usd"]) == ("miss", pytest.approx(PRICE_1K))
    assert (hit["cost_usd"], hit["cost_saved_usd"]) == (0.0, pytest.approx(PRICE_1K))
    assert hit["resolution"] == "1K"
    assert len(_cdn_requests(fake)) == 1  # a hit reads nothing
