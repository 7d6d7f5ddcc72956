"""The image pipeline called directly, without HTTP: the same stages an interactive request
goes through (admit, translate, cache, fan out, pool, upstream, shape, meter), against a
fake provider that is a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from gateway.app import Gateway, build
from gateway.errors import LimitExceeded, ModelNotAllowed, Unauthenticated
from gateway.pipeline import Caller, Context
from gateway.types import ImageRequest
from gateway.upstreams.base import FailureKind, UpstreamError
from tests.support.fakes import FakeUpstream
from tests.support.gateway import make_config, upstream_toml
from tests.support.metrics import labels, of, samples

KEY = "sk-team-a-pipeline-0001"


def clients(extra: str = "") -> str:
    return f'\n[[clients]]\nname = "team-a"\nkey = "{KEY}"\n{extra}\n'


@pytest.fixture
def fake() -> Any:
    server = FakeUpstream("acedata").start()
    yield server
    server.stop()


@pytest.fixture
async def gateway_for(tmp_path: Path) -> AsyncIterator[Callable[[str], Gateway]]:
    built: list[Gateway] = []

    def make(toml_text: str) -> Gateway:
        usage = tmp_path / "usage.jsonl"
        gateway = build(make_config(toml_text + f'\n[usage]\nlog = "{usage}"\n'))
        built.append(gateway)
        return gateway

    yield make
    for gateway in built:
        await gateway.aclose()


async def usage(tmp_path: Path) -> list[dict[str, Any]]:
    # Lines of requests that ended in one loop iteration are written at its end.
    await asyncio.sleep(0)
    return [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]


def metrics(gateway: Gateway) -> Any:
    return samples(generate_latest(gateway.metrics.registry).decode())


def generation(**fields: Any) -> ImageRequest:
    return ImageRequest(endpoint="generations", prompt=fields.pop("prompt", "a fox"), **fields)


async def test_a_generation_goes_through_every_stage(fake: Any, gateway_for: Any, tmp_path: Path):
    gateway = gateway_for(upstream_toml("ace", fake, ["tok-ace-0001"]) + clients())
    answer = await gateway.pipeline.run(
        Caller(key=KEY), generation(n=2, size="2048x1365", model="nano-banana-pro"),
        Context("generations", request_id="req-1"),
    )  # fmt: skip
    result = answer.result
    assert (answer.job.model, answer.job.aspect_ratio, answer.job.resolution) == (
        "nano-banana-pro",
        "3:2",
        "2K",
    )
    assert len(result.images) == 2 and all(i.url for i in result.images)
    assert result.cache == "miss" and result.upstreams == ["ace", "ace"]
    assert [(a.upstream, a.outcome) for a in result.attempts] == [("ace", "ok")]
    (call,) = fake.generation_calls()
    assert call.json["count"] == 2 and call.json["resolution"] == "2K"
    # Metered once, as an HTTP request through the same pipeline would be.
    (line,) = await usage(tmp_path)
    assert (line["request_id"], line["client"], line["status"], line["images"]) == (
        "req-1",
        "team-a",
        200,
        2,
    )
    assert line["upstream_outcomes"] == ["ace:ok"]
    found = metrics(gateway)
    assert of(found, "nano_banana_requests_total") == {
        labels(
            endpoint="generations", client="team-a", model="nano-banana-pro", status="200",
            cache="miss",
        ): 1
    }  # fmt: skip
    assert of(found, "nano_banana_inflight_requests") == {labels(): 0}


async def test_an_identical_request_is_a_hit(fake: Any, gateway_for: Any):
    gateway = gateway_for(upstream_toml("ace", fake, ["tok-ace-0001"]) + clients())
    run = gateway.pipeline.run
    first = await run(Caller(key=KEY), generation(), Context("generations"))
    second = await run(Caller(key=KEY), generation(), Context("generations"))
    assert (first.result.cache, second.result.cache) == ("miss", "hit")
    assert second.result.attempts == []
    assert len(fake.generation_calls()) == 1


async def test_a_bad_key_is_refused_and_metered(fake: Any, gateway_for: Any, tmp_path: Path):
    gateway = gateway_for(upstream_toml("ace", fake, ["tok-ace-0001"]) + clients())
    with pytest.raises(Unauthenticated):
        await gateway.pipeline.run(Caller(key="sk-nobody"), generation(), Context("generations"))
    (line,) = await usage(tmp_path)
    assert (line["client"], line["status"], line["error_code"]) == (
        "unknown",
        401,
        "invalid_api_key",
    )
    assert fake.generation_calls() == []


async def test_a_client_over_its_rate_is_refused_before_its_body_is_read(
    fake: Any, gateway_for: Any, tmp_path: Path
):
    gateway = gateway_for(
        upstream_toml("ace", fake, ["tok-ace-0001"]) + clients("requests_per_minute = 1")
    )
    await gateway.pipeline.run(Caller(key=KEY), generation(), Context("generations"))
    # The limits are taken once the request is read (one atomic step, shared by replicas):
    # the first request over the rate is read and refused ...
    with pytest.raises(LimitExceeded):
        await gateway.pipeline.run(Caller(key=KEY), generation(), Context("generations"))
    read: list[bool] = []

    async def body() -> ImageRequest:
        read.append(True)
        return generation(prompt="second")

    # ... and from then on, until the window frees, the client is known to be over it.
    with pytest.raises(LimitExceeded) as refused:
        await gateway.pipeline.run(Caller(key=KEY), body(), Context("generations"))
    assert refused.value.limit == "requests_per_minute"
    assert read == [], "the body was read although the client was known to be refused"
    assert [line["status"] for line in (await usage(tmp_path))] == [200, 429, 429]
    assert len(fake.generation_calls()) == 1


async def test_a_known_client_needs_no_key(fake: Any, gateway_for: Any):
    gateway = gateway_for(
        upstream_toml("ace", fake, ["tok-ace-0001"]) + clients('models = ["nano-banana-2"]')
    )
    (client,) = gateway.config.clients
    answer = await gateway.pipeline.run(
        Caller(client=client), generation(model="nano-banana-2"), Context("generations")
    )
    assert answer.result is not None and len(answer.result.images) == 1
    with pytest.raises(ModelNotAllowed):
        await gateway.pipeline.run(Caller(client=client), generation(), Context("generations"))


async def test_a_failing_token_is_retried_and_the_attempts_come_back(
    fake: Any, gateway_for: Any, tmp_path: Path
):
    fake.behave("tok-dead-0001", "invalid_token")
    gateway = gateway_for(
        upstream_toml("ace", fake, ["tok-dead-0001", "tok-ace-0001"])
        + clients()
        + "\n[cache]\nenabled = false\n"
    )
    answer = await gateway.pipeline.run(Caller(key=KEY), generation(), Context("generations"))
    result = answer.result
    assert [a.outcome for a in result.attempts] == ["auth", "ok"]
    assert (await usage(tmp_path))[0]["upstream_outcomes"] == ["ace:auth", "ace:ok"]


async def test_an_upstream_refusal_comes_back_as_what_happened(
    fake: Any, gateway_for: Any, tmp_path: Path
):
    fake.behave("tok-ace-0001", "forbidden")
    gateway = gateway_for(upstream_toml("ace", fake, ["tok-ace-0001"]) + clients())
    with pytest.raises(UpstreamError) as refused:
        await gateway.pipeline.run(Caller(key=KEY), generation(), Context("generations"))
    assert refused.value.kind is FailureKind.SAFETY
    assert [a.outcome for a in refused.value.attempts] == ["safety"]
    (line,) = await usage(tmp_path)
    assert (line["status"], line["error_code"], line["attempts"]) == (
        400,
        "content_policy_violation",
        1,
    )


async def test_a_stream_is_metered_when_its_delivery_ends(
    fake: Any, gateway_for: Any, tmp_path: Path
):
    fake.behave("tok-ace-0001", ["slow", "ok"], sleep=5)
    gateway = gateway_for(
        upstream_toml("ace", fake, ["tok-ace-0001"])
        + clients("max_concurrent_requests = 1")
        + "\n[cache]\nenabled = false\n"
    )
    answer = await gateway.pipeline.run(
        Caller(key=KEY), generation(stream=True), Context("generations")
    )
    assert answer.output.stream and not answer.images.done()
    assert not (tmp_path / "usage.jsonl").exists() or (await usage(tmp_path)) == []
    answer.images.cancel()  # the caller hung up
    answer.delivered(False)
    (line,) = await usage(tmp_path)
    assert line["status"] == 499
    # Its concurrency slot is free again.
    again = await gateway.pipeline.run(
        Caller(key=KEY), generation(stream=True), Context("generations")
    )
    result = await again.images
    assert len(result.images) == 1 and result.images[0].data
    assert len(await usage(tmp_path)) == 1, "metered before its delivery ended"
    again.delivered(True)
    again.delivered(False)  # once per request, whichever end comes first
    assert [line["status"] for line in (await usage(tmp_path))] == [499, 200]
    assert (await usage(tmp_path))[1]["images"] == 1


async def test_a_caller_leaving_a_stream_after_its_images_were_made_is_billed_for_them(
    fake: Any, gateway_for: Any, tmp_path: Path
):
    gateway = gateway_for(upstream_toml("ace", fake, ["tok-ace-0001"]) + clients())
    answer = await gateway.pipeline.run(
        Caller(key=KEY), generation(stream=True), Context("generations")
    )
    await answer.images
    answer.delivered(False)
    (line,) = await usage(tmp_path)
    assert (line["status"], line["images"]) == (499, 1)
    found = metrics(gateway)
    assert (
        of(found, "nano_banana_client_limit_usage")[labels(client="team-a", limit="images_per_day")]
        == 1
    )
