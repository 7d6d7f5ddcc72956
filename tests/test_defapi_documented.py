"""defapi.org held to its own document (seeds/003): what the gateway sends by default is
only what the document states, a refusal of the gateway's own translation is not the
caller's fault, and a paid-for task is never made a second time while its fate is open.

The fake's `documented=True` mode accepts only the document's ids and body fields and
answers task queries in the callback payload's (unwrapped) shape; the normal mode wraps
them in `data`, so both shapes are read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import pytest

from gateway.types import Job
from gateway.upstreams import defapi
from gateway.upstreams._common import keep_asked
from gateway.upstreams.base import FailureKind, UpstreamError, UpstreamResult
from gateway.upstreams.defapi import DefApiUpstream, Waiting
from gateway.upstreams.forms import Field
from tests.support.fakes import (
    DEFAPI_DOCUMENTED_FIELDS,
    DEFAPI_DOCUMENTED_MODELS,
    FakeUpstream,
    data_uri,
    png_bytes,
)
from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, upstream_toml

PROMPT = "a lighthouse at dusk"
PNG_URI = data_uri(png_bytes(64, 64))
TASK = "ta5c9705-b8ae-4cb9-aa6f-97c4fee88c8d"
IMAGE = "https://google.datas.systems/fileSystem/response_images/287/2025/08/29/1.png"
NO_CACHE = "[cache]\nenabled = false\n"


def run_on(
    fake: FakeUpstream,
    job: Job,
    *,
    token: str = "tok-1",
    fields: Iterable[Field] = (),
    models: Mapping[str, str] | None = None,
    grace: float = 1.0,
    deadline: float = 10.0,
) -> UpstreamResult:
    """One DefApiUpstream.run against a fake, as the pool would call it."""

    async def go() -> UpstreamResult:
        up = DefApiUpstream(
            "def",
            fake.base_url,
            timeout=5,
            models=models or {},
            poll_interval=0.02,
            poll_max_interval=0.05,
            poll_deadline=deadline,
            not_found_grace=grace,
            fields=fields,
        )
        try:
            return await up.run(job, token)
        finally:
            await up.aclose()

    return asyncio.run(go())


def refused_by(fake: FakeUpstream, job: Job, **kwargs: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        run_on(fake, job, **kwargs)
    return caught.value


# ------------------------------------------------------------------ the fake's documented mode


def test_documented_fake_holds_to_the_document(fake_factory):
    fake = fake_factory("defapi", documented=True)
    fake.behave("dk-1", "ok", not_found_polls=0, pending_polls=0, extra_images=1)
    auth = {"authorization": "Bearer dk-1"}

    def submit(**body: Any) -> httpx.Response:
        payload = {"model": "google/gempix2", "prompt": PROMPT, **body}
        return httpx.post(f"{fake.base_url}/api/image/gen", json=payload, headers=auth)

    assert submit(aspect_ratio="16:9").json()["detail"] == "unknown field: aspect_ratio"
    assert submit(model="google/nano-banana-pro").json()["detail"] == "model not supported"
    assert submit(images=[PNG_URI]).json()["detail"] == "images must be URLs"
    task_id = submit(callback_url="https://example.com/hook").json()["data"]["task_id"]
    answer = httpx.get(
        f"{fake.base_url}/api/task/query", params={"task_id": task_id}, headers=auth
    ).json()
    assert "data" not in answer and answer["task_id"] == task_id  # the callback's shape
    assert answer["status"] == "success" and len(answer["result"]) == 2


# ------------------------------------------------------------------ the documented minimum


@pytest.mark.parametrize(
    ("model", "provider_id"),
    [("nano-banana", "google/gemini-2.5-flash-image"), ("nano-banana-pro", "google/gempix2")],
)
def test_documented_minimum_serves_both_models(fake_factory, gateway_factory, model, provider_id):
    fake = fake_factory("defapi", documented=True)
    gw = gateway_factory(upstream_toml("def", fake, ["tok-1"]) + CLIENTS_TOML)
    resp = gw.client().images.generate(
        prompt=PROMPT, model=model, size="1024x1024", response_format="url"
    )
    assert len(resp.data) == 1 and resp.data[0].url.startswith(fake.origin)
    (submit,) = fake.generation_calls()
    assert submit.json == {"model": provider_id, "prompt": PROMPT}
    assert set(submit.json) <= DEFAPI_DOCUMENTED_FIELDS
    assert submit.json["model"] in DEFAPI_DOCUMENTED_MODELS


def test_documented_minimum_sends_reference_links_as_given(fake_factory, gateway_factory):
    fake = fake_factory("defapi", documented=True)
    gw = gateway_factory(upstream_toml("def", fake, ["tok-1"]) + CLIENTS_TOML)
    link = "https://cdn.openai.com/API/docs/images/soap.png"
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={
                "model": "nano-banana-pro",
                "prompt": "Put them in a basket",
                "response_format": "url",
                "images": [{"image_url": link}],
            },
        )
    assert r.status_code == 200, r.text
    (submit,) = fake.generation_calls()
    assert submit.json == {
        "model": "google/gempix2",
        "prompt": "Put them in a basket",
        "images": [link],
    }


def test_nano_banana_2_is_not_a_documented_default() -> None:
    up = DefApiUpstream(
        "def",
        "http://127.0.0.1:9",
        timeout=1,
        models={},
        poll_interval=1,
        poll_max_interval=1,
        poll_deadline=1,
        not_found_grace=1,
    )
    assert set(up.models()) == {"nano-banana", "nano-banana-pro"}
    assert up.cannot_serve(Job("generate", PROMPT, "nano-banana-2")) is not None
    # Not in the document either: a non-square size needs `fields = ["aspect_ratio"]`.
    refused = up.cannot_serve(Job("generate", PROMPT, "nano-banana-pro", 1, (), "16:9"))
    assert refused is not None and refused[0] == "size"


# ------------------------------------------------------------------ what was made is reported


def test_extra_image_is_kept_not_made_again(fake_factory, gateway_factory):
    fake = fake_factory("defapi")
    fake.behave("tok-1", "ok", extra_images=1)
    gw = gateway_factory(upstream_toml("def", fake, ["tok-1"]) + CLIENTS_TOML + NO_CACHE)
    resp = gw.client().images.generate(prompt=PROMPT, response_format="url")
    assert len(resp.data) == 1
    assert len(fake.generation_calls()) == 1, "a task that made too much was made again"


def test_keep_asked() -> None:
    assert keep_asked(["a", "b", "c"], 1) == ["a"]
    assert keep_asked(["a"], 2) == ["a"]
    assert keep_asked([], 1) == []


# ------------------------------------------------------------------ a task's fate unknown


def test_task_not_found_past_the_grace_is_waited_for(fake_factory, gateway_factory):
    fake = fake_factory("defapi")
    # Polls come every 0.02-0.05 s: 14 not-found ones span about three times the grace.
    fake.behave("tok-1", "ok", not_found_polls=14, pending_polls=1)
    gw = gateway_factory(
        upstream_toml(
            "def",
            fake,
            ["tok-1"],
            extra="not_found_grace_seconds = 0.2\npoll_deadline_seconds = 10",
        )
        + CLIENTS_TOML
        + NO_CACHE
    )
    resp = gw.client().images.generate(prompt=PROMPT, response_format="url")
    assert resp.data[0].url
    (submit,) = fake.generation_calls()
    polls = fake.calls(path="/api/task/query")
    assert len(polls) == 16  # 14 not found, 1 in progress, then success
    assert polls[13].time - submit.time > 0.4, "the task was not 404 beyond the grace"


def test_query_refusing_the_token_is_waited_for_and_does_not_bench(fake_factory, gateway_factory):
    fake = fake_factory("defapi")
    fake.behave("tok-1", "ok", not_found_polls=0, refused_polls=4, pending_polls=1)
    gw = gateway_factory(upstream_toml("def", fake, ["tok-1"]) + CLIENTS_TOML + NO_CACHE)
    resp = gw.client().images.generate(prompt=PROMPT, response_format="url")
    assert resp.data[0].url
    assert len(fake.generation_calls()) == 1
    assert len(fake.calls(path="/api/task/query")) == 6
    assert gw.admin()["upstreams"][0]["tokens"][0]["state"] == "ok"


@pytest.mark.parametrize(
    "behave",
    [{"not_found_polls": 10**6}, {"not_found_polls": 0, "refused_polls": 10**6}],
    ids=["not-found", "refused"],
)
def test_unknown_task_fails_only_at_the_deadline_as_timeout(fake_factory, behave):
    fake = fake_factory("defapi")
    fake.behave("tok-1", "ok", **behave)
    job = Job("generate", PROMPT, "nano-banana")
    err = refused_by(fake, job, grace=0.05, deadline=0.5)
    assert err.kind is FailureKind.TIMEOUT  # not AUTH: that would bench a working token
    assert err.task_id and err.task_id.startswith("ta")
    polls = fake.calls(path="/api/task/query")
    assert polls[-1].time - polls[0].time > 0.4, "gave up before the poll deadline"
    # Past the grace, an unknown task is polled at the slowest pace, not hammered.
    gaps = [b.time - a.time for a, b in zip(polls[-4:-1], polls[-3:], strict=True)]
    assert min(gaps) > 0.04
    assert len(fake.generation_calls()) == 1


# ------------------------------------------------------------------ consumed, both shapes


@pytest.mark.parametrize("documented", [False, True], ids=["wrapped", "unwrapped"])
def test_consumed_is_read_from_either_answer_shape(fake_factory, documented):
    fake = fake_factory("defapi", documented=documented)
    result = run_on(fake, Job("generate", PROMPT, "nano-banana-pro"))
    assert result.consumed == "0.500000"
    assert len(result.images) == 1 and result.images[0].startswith(fake.origin)
    assert result.task_id and result.task_id.startswith("ta")


def test_parallel_tasks_add_up_their_consumed(fake_factory):
    fake = fake_factory("defapi")
    result = run_on(fake, Job("generate", PROMPT, "nano-banana", 2))
    assert len(result.images) == 2
    assert result.consumed == "1.000000"
    assert len(fake.generation_calls()) == 2


def test_parallel_tasks_keep_what_was_made_when_one_fails(fake_factory):
    fake = fake_factory("defapi")
    fake.behave("tok-1", ["ok", "server_error"])
    result = run_on(fake, Job("generate", PROMPT, "nano-banana", 2))
    assert len(result.images) == 1
    assert len(fake.generation_calls()) == 2


@pytest.mark.parametrize(
    ("value", "read"),
    [
        ("0.500000", "0.500000"),
        ("12", "12"),
        ("0", "0"),
        ("", None),
        ("-1", None),
        ("1e9", None),
        ("0.5 credits", None),
        ("9" * 40, None),
        (0.5, None),
        (None, None),
    ],
)
def test_read_consumed(value, read) -> None:
    assert defapi.read_consumed(value) == read


@pytest.mark.parametrize(
    ("payload", "task"),
    [
        pytest.param(
            {"code": 0, "message": "ok", "data": {"task_id": TASK, "status": "pending"}},
            {"task_id": TASK, "status": "pending"},
            id="wrapped",
        ),
        pytest.param(
            {"task_id": TASK, "status": "success", "result": [], "consumed": "0.5", "x": 1},
            {"task_id": TASK, "status": "success", "result": [], "consumed": "0.5", "x": 1},
            id="callback-shape",
        ),
        pytest.param({"code": 1, "message": "task not found"}, None, id="error-body"),
        pytest.param({"code": 0, "data": None}, None, id="data-null"),
        pytest.param(["success"], None, id="not-an-object"),
        pytest.param(None, None, id="not-json"),
    ],
)
def test_task_answer(payload, task) -> None:
    assert defapi.task_answer(payload) == task


def _done(**extra: Any) -> dict[str, Any]:
    return {"task_id": TASK, "status": "success", "result": [{"image": IMAGE}], **extra}


@pytest.mark.parametrize(
    ("status", "payload", "outcome"),
    [
        pytest.param(404, {"code": 1, "message": "task not found"}, Waiting.NOT_FOUND, id="404"),
        pytest.param(401, {"code": 401, "message": "Invalid API key"}, Waiting.REFUSED, id="401"),
        pytest.param(403, {"code": 1, "message": "forbidden"}, Waiting.REFUSED, id="403"),
        pytest.param(500, {"code": 1, "message": "oops"}, Waiting.UNREADABLE, id="500"),
        pytest.param(429, {"code": 1, "message": "slow down"}, Waiting.UNREADABLE, id="429"),
        pytest.param(200, None, Waiting.UNREADABLE, id="200-not-json"),
        pytest.param(200, {"code": 1, "message": "busy"}, Waiting.UNREADABLE, id="200-no-task"),
        pytest.param(
            200, {"code": 0, "data": {"task_id": TASK, "status": "in_progress"}}, Waiting.RUNNING
        ),
        pytest.param(200, {"task_id": TASK, "status": "submitted"}, Waiting.RUNNING, id="bare"),
    ],
)
def test_read_poll_waiting(status, payload, outcome) -> None:
    assert defapi.read_poll(status, payload, "def", TASK) is outcome


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"code": 0, "message": "ok", "data": _done(consumed="0.5")}, id="wrapped"),
        pytest.param(_done(consumed="0.5", status_reason={"message": None}), id="unwrapped"),
    ],
)
def test_read_poll_result(payload) -> None:
    result = defapi.read_poll(200, payload, "def", TASK)
    assert isinstance(result, UpstreamResult)
    assert result.images == [IMAGE] and result.task_id == TASK and result.consumed == "0.5"


def test_read_poll_text_result_stays_a_refusal() -> None:
    payload = {"task_id": TASK, "status": "success", "result": [{"text": "I can't draw that"}]}
    with pytest.raises(UpstreamError) as caught:
        defapi.read_poll(200, payload, "def", TASK)
    assert caught.value.kind is FailureKind.SAFETY


def test_read_poll_refuses_another_tasks_answer() -> None:
    with pytest.raises(UpstreamError) as caught:
        defapi.read_poll(200, {"code": 0, "data": _done(task_id="ta-other")}, "def", TASK)
    assert caught.value.kind is FailureKind.MALFORMED


@pytest.mark.parametrize(
    ("waiting", "kind"),
    [
        (Waiting.RUNNING, FailureKind.TIMEOUT),
        (Waiting.NOT_FOUND, FailureKind.TIMEOUT),
        (Waiting.REFUSED, FailureKind.TIMEOUT),
        (Waiting.UNREACHABLE, FailureKind.TIMEOUT),
        (Waiting.UNREADABLE, FailureKind.SERVER_ERROR),
    ],
)
def test_gave_up(waiting, kind) -> None:
    err = defapi.gave_up(waiting, "def", TASK)
    assert err.kind is kind and err.task_id == TASK
    assert not err.kind.callers_fault and err.kind.providers_fault  # never benches a token


# ------------------------------------------------------------------ refusals of the translation

SQUARE = Job("generate", PROMPT, "nano-banana-pro")
WIDE = Job("generate", PROMPT, "nano-banana-pro", 1, (), "16:9")
LARGE = Job("generate", PROMPT, "nano-banana-pro", 1, (), None, "2K")
UPLOAD = Job("edit", PROMPT, "nano-banana", 1, (PNG_URI,))
LINKED = Job("edit", PROMPT, "nano-banana", 1, ("https://example.com/a.png",))


@pytest.mark.parametrize(
    ("status", "message", "job", "kind", "param"),
    [
        pytest.param(400, "prompt is required", SQUARE, FailureKind.BAD_REQUEST, None, id="prompt"),
        pytest.param(
            400, "unknown field: aspect_ratio", WIDE, FailureKind.UNSUPPORTED, "aspect_ratio"
        ),
        pytest.param(
            400, "unknown field: image_size", LARGE, FailureKind.UNSUPPORTED, "resolution"
        ),
        pytest.param(400, "model not supported", SQUARE, FailureKind.UNSUPPORTED, "model"),
        pytest.param(400, "images must be URLs", UPLOAD, FailureKind.UNSUPPORTED, "inline_images"),
        pytest.param(
            400, "images must be URLs", LINKED, FailureKind.BAD_REQUEST, None, id="caller-links"
        ),
        pytest.param(400, "invalid request", SQUARE, FailureKind.UNSUPPORTED, "model", id="vague"),
        pytest.param(400, "insufficient balance", SQUARE, FailureKind.BALANCE, None),
        pytest.param(
            200, "unknown field: aspect_ratio", WIDE, FailureKind.UNSUPPORTED, "aspect_ratio"
        ),
        pytest.param(200, "prompt is required", SQUARE, FailureKind.BAD_REQUEST, None),
        pytest.param(200, "failed", SQUARE, FailureKind.SERVER_ERROR, None, id="200-failed"),
        pytest.param(401, "Invalid API key", SQUARE, FailureKind.AUTH, None),
        pytest.param(500, "internal server error", SQUARE, FailureKind.SERVER_ERROR, None),
    ],
)
def test_refusal(status, message, job, kind, param) -> None:
    assert defapi.refusal(status, message, job) == (kind, param)


SIZED = (Field.ASPECT_RATIO, Field.RESOLUTION)


@pytest.mark.parametrize(
    ("job", "kwargs", "param"),
    [
        pytest.param(WIDE, {"fields": SIZED}, "aspect_ratio", id="aspect_ratio"),
        pytest.param(LARGE, {"fields": SIZED}, "resolution", id="image_size"),
        pytest.param(
            Job("generate", PROMPT, "nano-banana-2"),
            {"models": {"nano-banana-2": "google/nano-banana-2"}},
            "model",
            id="undocumented-id",
        ),
        pytest.param(UPLOAD, {}, "inline_images", id="data-uri"),
    ],
)
def test_documented_fake_refuses_undocumented_fields_as_unsupported(
    fake_factory, job, kwargs, param
):
    fake = fake_factory("defapi", documented=True)
    err = refused_by(fake, job, **kwargs)
    assert (err.kind, err.param, err.status) == (FailureKind.UNSUPPORTED, param, 400)
    assert err.code is None  # the provider's "code": 1 is not an OpenAI code


def test_vague_refusal_falls_back_to_the_model_id(fake_factory):
    fake = fake_factory("defapi", documented=True)
    fake.behave("tok-1", "ok", vague=True)
    err = refused_by(fake, WIDE, fields=SIZED)
    assert (err.kind, err.param, err.message) == (
        FailureKind.UNSUPPORTED,
        "model",
        "invalid request",
    )


def test_refused_prompt_is_the_callers(fake_factory):
    fake = fake_factory("defapi", documented=True)
    err = refused_by(fake, Job("generate", "   ", "nano-banana"))
    assert (err.kind, err.param, err.code) == (FailureKind.BAD_REQUEST, None, None)
    assert err.message == "prompt is required"


def test_refused_upload_is_made_on_another_upstream(fake_factory, gateway_factory):
    """images as data: URIs are observed, not documented: a defapi that refuses them sends
    the edit elsewhere instead of failing the caller."""
    strict = fake_factory("defapi", documented=True)
    other = fake_factory("acedata")
    gw = gateway_factory(
        upstream_toml("def", strict, ["dk-test-0001"], extra="priority = 0")
        + upstream_toml("ace", other, ["a1"], extra="priority = 1")
        + CLIENTS_TOML
    )
    upload = PNG_URI
    with gw.http() as http:
        r = http.post(
            "/v1/images/edits",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={
                "model": "nano-banana",
                "prompt": "add a hat",
                "response_format": "url",
                "images": [{"image_url": upload}],
            },
        )
    assert r.status_code == 200, r.text
    assert [c.json["images"][0][:5] for c in strict.generation_calls()] == ["data:"]
    assert len(other.generation_calls()) == 1
