"""A batch store that is away: PostgreSQL not up when the gateway starts, or gone later.
Image requests never notice; the Batch API answers 503 with retry-after (never a 500) and
comes back by itself once the server answers. A real PostgreSQL, started late and then
killed; the official SDK as the client."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.support.gateway import CLIENTS_TOML, upstream_toml
from tests.support.postgres import PostgresServer


def store_down(call: Any) -> None:
    with pytest.raises(openai.InternalServerError) as down:
        call()
    assert down.value.status_code == 503
    assert down.value.response.headers["retry-after"] == "5"
    assert down.value.body["code"] == "batch_store_unavailable"  # type: ignore[index]


def test_the_gateway_serves_images_while_its_batch_store_is_away(
    fake_factory, gateway_factory, tmp_path
):
    fake = fake_factory("acedata")
    server = PostgresServer()  # its port is chosen; the server is not started yet
    toml = upstream_toml("ace", fake, ["tok-outage-1"]) + CLIENTS_TOML
    toml += f'\n[state]\ndir = "{tmp_path / "state"}"\ndatabase_url = "{server.url}"\n'
    toml += "\n[batch]\ninteractive_headroom = 0\n"
    gw = gateway_factory(toml)
    client = gw.client()
    try:
        made = client.images.generate(
            model="nano-banana", prompt="no store yet", response_format="url"
        )
        assert made.data[0].url
        store_down(lambda: client.batches.list())
        store_down(lambda: client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch"))

        server.start()
        deadline = time.monotonic() + 30
        while True:  # the gateway tries again every 5 s
            try:
                assert client.batches.list().data == []
                break
            except openai.InternalServerError:
                assert time.monotonic() < deadline, "the Batch API did not come back"
                time.sleep(0.2)
        line = (
            '{"custom_id": "a", "method": "POST", "url": "/v1/images/generations",'
            ' "body": {"model": "nano-banana", "prompt": "stored at last"}}\n'
        )
        uploaded = client.files.create(file=("in.jsonl", line.encode()), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
        )
        while (batch := client.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline + 30, batch
            time.sleep(0.1)

        server.crash()
        store_down(lambda: client.batches.retrieve(batch.id))
        assert client.images.generate(model="nano-banana", prompt="still here").data
    finally:
        server.stop()
