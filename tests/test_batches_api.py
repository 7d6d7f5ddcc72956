"""OpenAI's Files and Batches APIs for images, through the official SDK.

The gateway runs in process on a real socket with its state in a temporary directory (the
batch store is SQLite there); the upstream is a fake provider, a real HTTP server that
records every call. What a batch's lines come to is read back from the output and error
files, as an app would read them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.fakes import data_uri, png_bytes
from tests.support.gateway import ADMIN_KEY, CLIENT_KEY, CLIENTS_TOML, upstream_toml
from tests.support.metrics import labels, samples

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
OTHER_KEY = "sk-team-b-0123456789"  # team-b in CLIENTS_TOML


def config(fake: Any, state: Path, *, batch: str = "", cache: bool = False, extra: str = "") -> str:
    text = upstream_toml("ace", fake, ["tok-batch-api-1"], extra=extra) + CLIENTS_TOML
    text += f'\n[state]\ndir = "{state}"\n'
    text += f"\n[cache]\nenabled = {'true' if cache else 'false'}\n"
    # One line at a time: the fake's planned answers then meet the lines in input order.
    text += f"\n[batch]\nconcurrency = 1\ninteractive_headroom = 0\nclaim_seconds = 2\n{batch}\n"
    return text


def line(custom_id: str, body: dict[str, Any], url: str = GENERATIONS) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}) + "\n"


def gen(prompt: str, **more: Any) -> dict[str, Any]:
    return {"model": "nano-banana", "prompt": prompt, "response_format": "url", **more}


def submit(client: openai.OpenAI, text: str, endpoint: str = GENERATIONS, **kw: Any) -> Any:
    uploaded = client.files.create(
        file=("in.jsonl", text.encode(), "application/jsonl"), purpose="batch"
    )
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,
        completion_window="24h",
        **kw,  # type: ignore[arg-type]
    )


def wait(
    client: openai.OpenAI, batch_id: str, done: Callable[[Any], bool], timeout: float = 30
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.05)


def ended(batch: Any) -> bool:
    return batch.status in ("completed", "failed", "cancelled", "expired")


def records(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """An output or error file's lines by custom_id."""
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    rows = [json.loads(raw) for raw in text.splitlines()]
    return {row["custom_id"]: row for row in rows}


@pytest.fixture
def fake(fake_factory: Any) -> Any:
    return fake_factory("acedata")


def test_a_generations_batch_with_good_and_bad_lines(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state"))
    # Upstream calls in order: the first answers, the second is refused, the rest answer.
    fake.behave(
        "tok-batch-api-1", ["ok", "bad_request", "ok"], message="the prompt was flagged as unsafe"
    )
    text = (
        line("good-1", gen("a red fox"))
        + line("bad-size", gen("a tall thing", size="100x1000"))
        + line("bad-model", {"model": "no-such-model", "prompt": "x"})
        + line("refused", gen("a refused one"))
        + line("good-2", gen("a blue whale", n=2))
    )
    client = gw.client()
    created = submit(client, text, metadata={"job": "nightly"})
    assert created.status == "validating"
    assert created.metadata == {"job": "nightly"}
    assert created.endpoint == GENERATIONS and created.completion_window == "24h"

    done = wait(client, created.id, ended)
    assert done.status == "completed", done
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (5, 2, 3)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.in_progress_at <= done.finalizing_at <= done.completed_at

    out = records(client, done.output_file_id)
    assert set(out) == {"good-1", "good-2"}
    for row in out.values():
        assert row["id"].startswith("batch_req_") and row["error"] is None
        assert row["response"]["status_code"] == 200
        assert row["response"]["request_id"].startswith("req_")
    assert len(out["good-1"]["response"]["body"]["data"]) == 1
    assert len(out["good-2"]["response"]["body"]["data"]) == 2
    assert out["good-2"]["response"]["body"]["data"][0]["url"].startswith("http")

    errors = records(client, done.error_file_id)
    assert set(errors) == {"bad-size", "bad-model", "refused"}
    size_error = errors["bad-size"]["response"]
    assert size_error["status_code"] == 400
    assert size_error["body"]["error"]["param"] == "size"
    model_error = errors["bad-model"]["response"]
    assert model_error["status_code"] == 404
    assert model_error["body"]["error"]["code"] == "model_not_found"
    refused = errors["refused"]["response"]
    assert 400 <= refused["status_code"] < 600 and refused["body"]["error"]["message"]
    assert "tok-batch-api-1" not in json.dumps(errors)
    # Bad bodies never reached the provider: three calls for the three good-looking lines.
    prompts = [c.json["prompt"] for c in fake.generation_calls()]
    assert sorted(prompts) == sorted(["a red fox", "a refused one", "a blue whale"])

    # The lines went with the batch's end: the files hold them, nothing is stored twice.
    with sqlite3.connect(tmp_path / "state" / "batches.sqlite3") as db:
        kept = db.execute("SELECT count(*) FROM lines WHERE batch_id = ?", (done.id,)).fetchone()
    assert kept == (0,)

    # The files are the owner's, listed as OpenAI lists them.
    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    assert output_file.bytes == len(client.files.content(done.output_file_id).content)


def test_an_edits_batch_with_a_data_uri_image(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state"))
    image = data_uri(png_bytes(64, 48))
    body = {"model": "nano-banana", "prompt": "make it blue", "images": [{"image_url": image}]}
    client = gw.client()
    done = wait(client, submit(client, line("edit-1", body, EDITS), EDITS).id, ended)
    assert done.status == "completed", done
    assert done.request_counts.completed == 1
    row = records(client, done.output_file_id)["edit-1"]
    assert row["response"]["status_code"] == 200
    assert row["response"]["body"]["data"][0]["url"].startswith("http")  # nano-banana's default
    (call,) = fake.generation_calls()
    assert call.json["action"] == "edit"
    assert call.json["image_urls"] and call.json["prompt"] == "make it blue"


def test_lists_page_newest_first(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state"))
    client = gw.client()
    made = [submit(client, line(f"c{i}", gen(f"page {i}"))).id for i in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2]
    assert first.has_more
    # The SDK's own paging (after=last id) walks every batch once, newest first.
    assert [b.id for b in client.batches.list(limit=2)] == made[::-1]
    files = client.files.list(purpose="batch")
    assert len(files.data) == 3 and all(f.purpose == "batch" for f in files.data)
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.list(limit=0)
    assert bad.value.body["param"] == "limit"  # type: ignore[index]


def test_another_clients_ids_are_not_found_and_the_admin_sees_all(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state"))
    owner, other, admin = gw.client(), gw.client(OTHER_KEY), gw.client(ADMIN_KEY)
    batch = wait(owner, submit(owner, line("mine", gen("mine"))).id, ended)
    assert batch.status == "completed"
    input_id, output_id = batch.input_file_id, batch.output_file_id
    for call in (
        lambda: other.batches.retrieve(batch.id),
        lambda: other.batches.cancel(batch.id),
        lambda: other.files.retrieve(input_id),
        lambda: other.files.content(output_id),
        lambda: other.files.delete(input_id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.batches.list().data == [] and other.files.list().data == []
    # Another client's input file cannot feed a batch either.
    with pytest.raises(openai.BadRequestError) as bad:
        other.batches.create(input_file_id=input_id, endpoint=GENERATIONS, completion_window="24h")
    assert bad.value.body["param"] == "input_file_id"  # type: ignore[index]

    assert [b.id for b in admin.batches.list().data] == [batch.id]
    assert admin.batches.retrieve(batch.id).status == "completed"
    assert "mine" in admin.files.content(output_id).text
    with pytest.raises(openai.PermissionDeniedError):
        submit(admin, line("admin", gen("admin")))
    # The owner may delete its own files.
    assert owner.files.delete(input_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        owner.files.retrieve(input_id)


def test_bad_calls_name_the_parameter(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state"))
    client = gw.client()
    uploaded = client.files.create(file=("x.jsonl", line("a", gen("a")).encode()), purpose="batch")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"endpoint": "/v1/chat/completions"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"input_file_id": "file-nobody"}, "input_file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"extra_body": {"priority": "high"}}, "priority"),
    ]
    for change, param in cases:
        args: dict[str, Any] = {
            "input_file_id": uploaded.id,
            "endpoint": GENERATIONS,
            "completion_window": "24h",
            **change,
        }
        with pytest.raises(openai.BadRequestError) as bad:
            client.batches.create(**args)
        assert bad.value.body["param"] == param, (change, bad.value.body)  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    assert bad.value.body["param"] == "purpose"  # type: ignore[index]
    assert fake.generation_calls() == []


def test_a_malformed_file_fails_the_batch_naming_each_line(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state"))
    client = gw.client()
    text = (
        line("same", gen("one"))
        + line("same", gen("two"))
        + line("chat", gen("three"), url="/v1/chat/completions")
        + "not json at all\n"
    )
    done = wait(client, submit(client, text).id, ended)
    assert done.status == "failed" and done.failed_at
    found = {(e.line, e.code, e.param) for e in done.errors.data}
    assert found == {
        (2, "duplicate_custom_id", "custom_id"),
        (3, "invalid_url", "url"),
        (4, "invalid_json_line", None),
    }
    assert done.output_file_id is None and fake.generation_calls() == []


def test_cancelling_a_finished_batch_is_a_conflict(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state"))
    client = gw.client()
    done = wait(client, submit(client, line("one", gen("one"))).id, ended)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(done.id)


def test_a_line_like_an_earlier_request_is_a_cache_hit(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state", cache=True))
    client = gw.client()
    first = client.images.generate(
        model="nano-banana", prompt="the same lighthouse", response_format="url"
    )
    assert len(fake.generation_calls()) == 1
    body = gen("the same lighthouse")
    done = wait(client, submit(client, line("again", body)).id, ended)
    assert done.status == "completed"
    row = records(client, done.output_file_id)["again"]
    assert row["response"]["body"]["data"][0]["url"] == first.data[0].url
    assert len(fake.generation_calls()) == 1, "the batch paid for a picture made already"
    found = samples(gw.metrics())
    assert found[("nano_banana_batch_lines_total", labels(outcome="ok"))] == 1
    assert found[("nano_banana_batches_total", labels(status="completed"))] == 1


def test_an_expired_batch_keeps_what_was_done(fake_factory, gateway_factory, tmp_path):
    fake = fake_factory("acedata", latency=0.3)
    state = tmp_path / "state"
    gw = gateway_factory(config(fake, state))
    client = gw.client()
    text = "".join(line(f"e{i}", gen(f"expiring {i}")) for i in range(8))
    batch = submit(client, text)
    wait(
        client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2
    )
    # Running: the operator's views list it.
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        auth = {"authorization": f"Bearer {ADMIN_KEY}"}
        listed = http.get("/admin/batches", headers=auth).json()["batches"]
        assert [b["id"] for b in listed] == [batch.id]
        page = http.get("/admin", headers=auth).text
        assert "Batches at work" in page and batch.id in page
    # The completion window passes (as 24 hours would).
    with sqlite3.connect(state / "batches.sqlite3") as db:
        db.execute(
            "UPDATE batches SET expires_at = ? WHERE id = ?", (int(time.time()) - 1, batch.id)
        )
    done = wait(client, batch.id, ended)
    assert done.status == "expired" and done.expired_at
    out = records(client, done.output_file_id)
    errors = records(client, done.error_file_id)
    assert len(out) == done.request_counts.completed >= 2
    assert set(out) | set(errors) == {f"e{i}" for i in range(8)}
    unrun = [e for e in errors.values() if e["response"] is None]
    assert unrun and all(e["error"]["code"] == "batch_expired" for e in unrun)


def test_batch_lines_leave_the_interactive_headroom_free(fake_factory, gateway_factory, tmp_path):
    fake = fake_factory("acedata", latency=0.4)
    toml = config(
        fake,
        tmp_path / "state",
        extra="max_concurrency = 2\n",
        batch="",
    ).replace(
        "concurrency = 1\ninteractive_headroom = 0", "concurrency = 4\ninteractive_headroom = 1"
    )
    gw = gateway_factory(toml)
    client = gw.client()
    batch = submit(client, "".join(line(f"h{i}", gen(f"headroom {i}")) for i in range(6)))
    wait(
        client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2
    )
    # Two slots, one kept for interactive requests: the batch alone ran one line at a time
    # (without the headroom it would take both).
    assert fake.max_concurrent == 1
    made = client.images.generate(model="nano-banana", prompt="interactive", response_format="url")
    assert made.data[0].url
    done = wait(client, batch.id, ended)
    assert done.status == "completed" and done.request_counts.completed == 6
    assert fake.max_concurrent <= 2


def test_without_durable_state_the_batch_api_says_why(fake, gateway_factory, tmp_path):
    gw = gateway_factory(
        config(fake, tmp_path / "state").replace(f'dir = "{tmp_path / "state"}"', 'dir = ""')
    )
    with pytest.raises(openai.NotFoundError) as missing:
        gw.client().files.create(file=("x.jsonl", b"{}\n"), purpose="batch")
    assert "[state]" in missing.value.message
    with httpx.Client(base_url=gw.url) as http:
        assert (
            http.get("/v1/batches", headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code
            == 404
        )


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """A multipart body of (name, filename or None, content) parts, in the order given."""
    boundary = "gateway-test-boundary"
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def test_uploads_stream_in_any_order_and_name_what_is_wrong(fake, gateway_factory, tmp_path):
    gw = gateway_factory(config(fake, tmp_path / "state", batch="max_file_bytes = 100000"))
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    data = line("first", gen("file before purpose")).encode()

    def upload(*parts: tuple[str, str | None, bytes], chunked: bool = False) -> httpx.Response:
        body, content_type = multipart(*parts)
        headers = {**auth, "content-type": content_type}
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            if not chunked:
                return http.post("/v1/files", content=body, headers=headers)
            pieces = (body[i : i + 4096] for i in range(0, len(body), 4096))
            return http.post("/v1/files", content=pieces, headers=headers)

    # The file part first, then purpose: read as it streams, the same file.
    made = upload(("file", "in.jsonl", data), ("purpose", None, b"batch"))
    assert made.status_code == 200, made.text
    assert (made.json()["bytes"], made.json()["filename"]) == (len(data), "in.jsonl")
    assert gw.client().files.content(made.json()["id"]).content == data

    refused = {
        "purpose": upload(("file", "in.jsonl", data)),
        "file": upload(("purpose", None, b"batch")),
        "colour": upload(
            ("purpose", None, b"batch"), ("colour", None, b"red"), ("file", "x", data)
        ),
        # Over max_file_bytes with no content-length to tell it first.
        "file ": upload(
            ("purpose", None, b"batch"), ("file", "big.jsonl", data * 2000), chunked=True
        ),
    }
    for param, answer in refused.items():
        assert answer.status_code == 400, (param, answer.text)
        assert answer.json()["error"]["param"] == param.strip(), answer.text
    # Nothing of the refused uploads was kept.
    assert [f.id for f in gw.client().files.list().data] == [made.json()["id"]]
