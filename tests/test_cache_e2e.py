"""The identical-request cache end to end: the official SDK -> the gateway -> a fake
provider that counts what it was asked. An identical request must not reach the provider
twice; anything that changes the picture must."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fakes import png_bytes
from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, upstream_toml

TEAM_B_KEY = "sk-team-b-0123456789"


def _gateway(fake_factory, gateway_factory, *, latency: float = 0.0, cache: str = ""):
    fake = fake_factory("acedata", latency=latency)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1", "tok-2"]) + CLIENTS_TOML + "[cache]\n" + cache
    )
    return fake, gw


def _generate(gw, key: str = CLIENT_KEY, headers: dict[str, str] | None = None, **params):
    params.setdefault("prompt", "a red fox in the snow")
    params.setdefault("response_format", "url")
    raw = gw.client(key=key).images.with_raw_response.generate(
        extra_headers=headers or {}, **params
    )
    return raw.parse(), raw.headers


def _metric(gw, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(gw.metrics()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_two_identical_requests_make_one_upstream_call(fake_factory, gateway_factory):
    fake, gw = _gateway(fake_factory, gateway_factory)
    first, h1 = _generate(gw)
    second, h2 = _generate(gw)
    assert len(fake.generation_calls()) == 1
    assert (h1["x-cache"], h2["x-cache"]) == ("miss", "hit")
    assert second.data[0].url == first.data[0].url
    assert int(h2["age"]) >= 0
    # The provider's ids still reach the app, so support tickets work for hits too.
    assert h2["x-upstream-task-id"] == h1["x-upstream-task-id"]
    assert _metric(gw, "nano_banana_cache_requests_total", result="hit") == 1
    assert _metric(gw, "nano_banana_cache_requests_total", result="miss") == 1
    assert _metric(gw, "nano_banana_cache_upstream_calls_saved_total") == 1


def test_another_client_key_shares_the_entry(fake_factory, gateway_factory):
    """The key is the picture, not who asked for it."""
    fake, gw = _gateway(fake_factory, gateway_factory)
    _generate(gw, key=CLIENT_KEY)
    _, headers = _generate(gw, key=TEAM_B_KEY, user="someone-else")
    assert headers["x-cache"] == "hit"
    assert len(fake.generation_calls()) == 1


def test_twenty_concurrent_identical_requests_make_one_upstream_call(fake_factory, gateway_factory):
    fake, gw = _gateway(fake_factory, gateway_factory, latency=0.5)

    async def burst():
        client = gw.async_client()
        calls = [
            client.images.with_raw_response.generate(
                prompt="twenty foxes", size="1024x1024", response_format="b64_json"
            )
            for _ in range(20)
        ]
        return await asyncio.gather(*calls)

    raws = asyncio.run(burst())
    assert len(fake.generation_calls()) == 1
    bodies = {raw.parse().data[0].b64_json for raw in raws}
    assert len(bodies) == 1, "all twenty got the same image"
    how = sorted(raw.headers["x-cache"] for raw in raws)
    assert how == ["coalesced"] * 19 + ["miss"]
    # One download of the image served all twenty b64 answers.
    assert len(fake.calls(path=None)) - len(fake.generation_calls()) == 1
    assert _metric(gw, "nano_banana_cache_requests_total", result="coalesced") == 19


@pytest.mark.parametrize(
    "change",
    [
        {"size": "1024x768"},
        {"model": "nano-banana-pro"},
        {"prompt": "a red fox in the rain"},
        {"n": 2},
        {"output_format": "jpeg", "response_format": "b64_json"},
    ],
)
def test_anything_that_changes_the_picture_is_a_separate_call(
    fake_factory, gateway_factory, change
):
    fake, gw = _gateway(fake_factory, gateway_factory)
    _generate(gw, response_format="b64_json", output_format="png")
    _, headers = _generate(gw, **{"response_format": "b64_json", "output_format": "png", **change})
    assert headers["x-cache"] == "miss"
    assert len(fake.generation_calls()) == 2


def test_response_format_does_not_change_the_picture(fake_factory, gateway_factory):
    """A url answer cached, then asked as b64_json: served from the cached link's bytes."""
    fake, gw = _gateway(fake_factory, gateway_factory)
    first, _ = _generate(gw, response_format="url")
    second, headers = _generate(gw, response_format="b64_json")
    assert headers["x-cache"] == "hit"
    assert len(fake.generation_calls()) == 1
    assert base64.b64decode(second.data[0].b64_json) == httpx.get(first.data[0].url).content


def test_edits_with_different_input_images_are_separate_calls(fake_factory, gateway_factory):
    fake, gw = _gateway(fake_factory, gateway_factory)
    client = gw.client()

    def edit(image: bytes):
        raw = client.images.with_raw_response.edit(
            image=("in.png", image, "image/png"), prompt="add a hat", response_format="url"
        )
        return raw.headers["x-cache"]

    red = png_bytes(64, 64, (255, 0, 0))
    blue = png_bytes(64, 64, (0, 0, 255))
    assert edit(red) == "miss"
    assert edit(red) == "hit"
    assert edit(blue) == "miss"
    assert len(fake.generation_calls()) == 2


def test_errors_are_not_cached(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    # A refusal of the caller's own input (not of a field the gateway chose, which would be
    # remembered as the upstream's refusal).
    fake.behave("tok-1", ["bad_request", "ok"], message="The prompt is not acceptable.")
    gw = gateway_factory(upstream_toml("ace", fake, ["tok-1"]) + CLIENTS_TOML)
    with pytest.raises(openai.BadRequestError):
        _generate(gw)
    response, headers = _generate(gw)
    assert headers["x-cache"] == "miss" and response.data[0].url
    assert len(fake.generation_calls()) == 2


def test_a_failed_leader_fails_its_waiters_and_nobody_hangs(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    # A failure that takes a while (the call times out), so that the five requests below
    # all arrive while the first one's flight is still out.
    fake.behave("tok-1", "timeout", sleep=5)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"], extra="timeout_seconds = 0.4")
        + CLIENTS_TOML
        # Breakers that never open: each flight really calls the upstream.
        + "[pool]\nmax_attempts = 1\nbreaker_threshold = 100\nupstream_breaker_threshold = 100\n"
    )

    # What one failing request costs upstream on its own (the service's retries included).
    with pytest.raises(openai.APIStatusError) as alone:
        _generate(gw, prompt="doomed alone")
    calls_alone = len(fake.generation_calls())
    assert calls_alone >= 1

    async def burst():
        client = gw.async_client(timeout=30)
        calls = [client.images.generate(prompt="doomed", response_format="url") for _ in range(5)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(burst())
    assert all(isinstance(o, openai.APIStatusError) for o in outcomes), outcomes
    assert {(o.status_code, o.code) for o in outcomes} == {
        (alone.value.status_code, alone.value.code)
    }
    # Five separate flights would have called at least five times.
    burst_calls = len(fake.generation_calls()) - calls_alone
    assert 1 <= burst_calls <= calls_alone < 5, "five requests, one flight"
    assert alone.value.status_code == 504


def test_ttl_expiry(fake_factory, gateway_factory):
    fake, gw = _gateway(fake_factory, gateway_factory, cache="ttl_seconds = 0.5\n")
    assert _generate(gw)[1]["x-cache"] == "miss"
    assert _generate(gw)[1]["x-cache"] == "hit"
    time.sleep(0.7)
    assert _generate(gw)[1]["x-cache"] == "miss"
    assert len(fake.generation_calls()) == 2


def test_links_are_not_served_past_their_lifetime_but_bytes_are(fake_factory, gateway_factory):
    fake, gw = _gateway(fake_factory, gateway_factory, cache="url_ttl_seconds = 0.5\n")
    _generate(gw, prompt="links only", response_format="url")
    _generate(gw, prompt="with bytes", response_format="b64_json")
    time.sleep(0.7)
    # The link-only entry aged out: a fresh call.
    assert _generate(gw, prompt="links only")[1]["x-cache"] == "miss"
    # The entry with bytes is still good, and a url answer is hosted by the gateway
    # instead of handing out the old upstream link.
    response, headers = _generate(gw, prompt="with bytes", response_format="url")
    assert headers["x-cache"] == "hit"
    assert response.data[0].url.startswith(gw.url + "/v1/images/store/")
    assert httpx.get(response.data[0].url).headers["content-type"] == "image/png"
    assert len(fake.generation_calls()) == 3


def test_links_never_kept_still_cost_one_call_per_request(fake_factory, gateway_factory):
    """url_ttl_seconds = 0: link-only results are never stored, and each request is made
    once (its own fresh links are handed back, not made a second time)."""
    fake, gw = _gateway(fake_factory, gateway_factory, cache="url_ttl_seconds = 0\n")
    assert _generate(gw)[1]["x-cache"] == "miss"
    assert _generate(gw)[1]["x-cache"] == "miss"
    assert len(fake.generation_calls()) == 2


def test_no_cache_skips_the_lookup_but_refreshes_the_entry(fake_factory, gateway_factory):
    fake, gw = _gateway(fake_factory, gateway_factory)
    first, _ = _generate(gw)
    fresh, headers = _generate(gw, headers={"Cache-Control": "no-cache"})
    assert headers["x-cache"] == "miss"
    assert fresh.data[0].url != first.data[0].url
    again, headers = _generate(gw)
    assert headers["x-cache"] == "hit"
    assert again.data[0].url == fresh.data[0].url, "the refreshed entry replaced the old one"
    assert len(fake.generation_calls()) == 2


def test_no_store_skips_lookup_and_store(fake_factory, gateway_factory):
    fake, gw = _gateway(fake_factory, gateway_factory)
    _generate(gw)
    _, headers = _generate(gw, headers={"Cache-Control": "no-store"})
    assert headers["x-cache"] == "bypass"
    _, headers = _generate(gw, prompt="never stored", headers={"Cache-Control": "no-store"})
    _, headers = _generate(gw, prompt="never stored")
    assert headers["x-cache"] == "miss"
    assert len(fake.generation_calls()) == 4


def test_client_opt_out(fake_factory, gateway_factory):
    fake = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"])
        + f'[[clients]]\nname = "private"\nkey = "{CLIENT_KEY}"\ncache = false\n'
        + f'[[clients]]\nname = "shared"\nkey = "{TEAM_B_KEY}"\n'
    )
    assert _generate(gw, key=CLIENT_KEY)[1]["x-cache"] == "bypass"
    assert _generate(gw, key=CLIENT_KEY)[1]["x-cache"] == "bypass"
    # The opted-out client's images were never stored for anyone else either.
    assert _generate(gw, key=TEAM_B_KEY)[1]["x-cache"] == "miss"
    assert len(fake.generation_calls()) == 3


def test_cache_disabled(fake_factory, gateway_factory):
    fake, gw = _gateway(fake_factory, gateway_factory, cache="enabled = false\n")
    _, h1 = _generate(gw)
    _, h2 = _generate(gw)
    assert "x-cache" not in h1 and "x-cache" not in h2
    assert len(fake.generation_calls()) == 2


def test_a_caller_hanging_up_does_not_cancel_the_others(fake_factory, gateway_factory):
    """The first caller (whose request started the upstream call) disconnects; the
    identical requests waiting on it still get their images from that one call."""
    fake = fake_factory("acedata", latency=1.0)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"])
        + CLIENTS_TOML
        + "[images]\nstream_keepalive_seconds = 0.1\n"
    )
    body = {"prompt": "leaving early", "stream": True, "response_format": "b64_json"}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}

    async def scenario():
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:

            async def leaver():
                async with http.stream(
                    "POST", "/v1/images/generations", json=body, headers=headers
                ) as resp:
                    assert resp.status_code == 200
                    chunks = 0
                    async for _ in resp.aiter_bytes():
                        chunks += 1
                        if chunks == 5:  # keep-alives for ~0.5 s, while the other joins
                            return  # hang up

            async def stayer():
                await asyncio.sleep(0.2)
                client = gw.async_client()
                stream = await client.images.generate(
                    prompt="leaving early", stream=True, response_format="b64_json"
                )
                return [event async for event in stream]

            _, events = await asyncio.gather(leaver(), stayer())
            return events

    events = asyncio.run(scenario())
    assert events[-1].type == "image_generation.completed"
    assert events[-1].b64_json
    assert len(fake.generation_calls()) == 1


def test_cache_metrics_report_bytes_entries_and_evictions(fake_factory, gateway_factory):
    _fake, gw = _gateway(fake_factory, gateway_factory, cache="max_entries = 2\n")
    for i in range(3):
        _generate(gw, prompt=f"image {i}", response_format="b64_json")
    assert _metric(gw, "nano_banana_cache_entries") == 2
    assert _metric(gw, "nano_banana_cache_bytes") > 2 * 1000  # two PNGs held
    assert _metric(gw, "nano_banana_cache_evictions_total", reason="size") == 1
    # No Redis configured: no Redis gauge, so no "shared cache down" alert can fire.
    assert "nano_banana_redis_up" not in gw.metrics()


def test_hits_cost_nothing_and_count_as_savings(fake_factory, gateway_factory, tmp_path):
    """Metering sees the cache: a hit or coalesced answer is free, its would-be cost is
    saved, and it uses none of the team's daily images."""
    fake = fake_factory("acedata", latency=0.3)
    usage_log = tmp_path / "usage.jsonl"
    gw = gateway_factory(
        upstream_toml("ace", fake, ["tok-1"])
        + f'[[clients]]\nname = "team-a"\nkey = "{CLIENT_KEY}"\nimages_per_day = 3\n'
        + '[prices]\n"nano-banana" = 0.04\n'
        + f'[usage]\nlog = "{usage_log}"\n'
    )
    _generate(gw, prompt="priced fox")  # miss: paid
    _generate(gw, prompt="priced fox")  # hit: free

    async def pair():
        client = gw.async_client()
        return await asyncio.gather(
            *(client.images.generate(prompt="coalesced fox", response_format="url") for _ in "ab")
        )

    asyncio.run(pair())  # one miss (paid) + one coalesced (free)
    assert len(fake.generation_calls()) == 2
    labels = {"client": "team-a", "model": "nano-banana"}
    assert _metric(gw, "nano_banana_cost_usd_total", **labels) == pytest.approx(0.08)
    assert _metric(gw, "nano_banana_cost_saved_usd_total", **labels) == pytest.approx(0.08)
    assert _metric(gw, "nano_banana_images_total", upstream="cache", **labels) == 2
    # Two of three daily images used: the free answers did not count against the quota.
    used = _metric(gw, "nano_banana_client_limit_usage", client="team-a", limit="images_per_day")
    assert used == 2
    _generate(gw, prompt="third paid fox")
    with pytest.raises(openai.RateLimitError):
        _generate(gw, prompt="fourth paid fox")
    _generate(gw, prompt="priced fox")  # still served: a hit needs no quota
    records = [json.loads(line) for line in usage_log.read_text().splitlines()]
    assert [r["cache"] for r in records[:4]].count("hit") == 1
    assert sorted(r["cache"] for r in records[2:4]) == ["coalesced", "miss"]
    assert records[-1]["cache"] == "hit" and records[-1]["cost_usd"] == 0
