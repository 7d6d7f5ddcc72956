"""The Batch API's pure rules, table by table: what a create body may hold, which errors a
line waits out rather than answers with, how a line's body is read."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.batch_lines import parse_line, retry_for
from gateway.api.batches import check_create, check_metadata
from gateway.errors import (
    CapacityTimeout,
    DomainError,
    InvalidParameter,
    LimitExceeded,
    LimitsUnavailable,
    ModelNotFound,
    NoCapacity,
    ShuttingDown,
)
from gateway.shape.netguard import UrlPolicy
from tests.support.fakes import data_uri, png_bytes

GOOD = {"input_file_id": "file-1", "endpoint": "/v1/images/generations", "completion_window": "24h"}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"endpoint": "/v1/chat/completions"}, "endpoint"),
        ({"endpoint": 3}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"completion_window": None}, "completion_window"),
        ({"input_file_id": ""}, "input_file_id"),
        ({"metadata": "x"}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"model": "nano-banana"}, "model"),
    ],
)
def test_a_bad_create_body_names_its_parameter(change: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as bad:
        check_create({**GOOD, **change})
    assert bad.value.param == param


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GOOD, ("file-1", "/v1/images/generations", "24h", None)),
        (
            {**GOOD, "endpoint": "/v1/images/edits", "metadata": {"team": "web"}},
            ("file-1", "/v1/images/edits", "24h", {"team": "web"}),
        ),
        ({**GOOD, "metadata": None, "output_expires_after": {"anchor": "created_at"}},
         ("file-1", "/v1/images/generations", "24h", None)),
    ],
)  # fmt: skip
def test_a_good_create_body(body: dict[str, Any], expected: tuple[Any, ...]) -> None:
    assert check_create(body) == expected


def test_sixteen_metadata_pairs_are_the_most() -> None:
    pairs = {f"k{i}": "v" * 512 for i in range(16)}
    assert check_metadata(pairs) == pairs


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        # Rate and concurrency: wait as told, not counted as a try.
        (LimitExceeded("requests_per_minute", "slow down", 2.5, daily=False), (2.5, False)),
        (LimitExceeded("max_concurrent_requests", "one at a time", 0, daily=False), (0.05, False)),
        # A daily limit will not lift within the tries: the line's answer.
        (LimitExceeded("images_per_day", "enough today", 3600, daily=True), None),
        # No capacity just now: counted tries, waiting at least a second.
        (NoCapacity("none", retry_after=7, rate_limited=True), (7.0, True)),
        (NoCapacity("none", retry_after=0, rate_limited=False), (1.0, True)),
        (CapacityTimeout(), (1.0, True)),
        (LimitsUnavailable("team-a"), (1.0, True)),
        (ShuttingDown(), (0.0, False)),
        # The caller's own mistakes are answers.
        (InvalidParameter("size", "bad"), None),
        (ModelNotFound("x", "no x"), None),
    ],
)
def test_which_errors_a_line_waits_out(
    err: DomainError, expected: tuple[float, bool] | None
) -> None:
    assert retry_for(err) == expected


POLICY = UrlPolicy.build(allow_private=False, allowed_networks=[], trusted_urls=[])


def test_a_line_body_is_read_as_its_endpoint_reads_it() -> None:
    request = parse_line(
        "/v1/images/generations",
        '{"model":"nano-banana","prompt":"a fox","n":2,"size":"1536x1024"}',
        max_bytes=1 << 20,
        policy=POLICY,
    )
    assert (request.endpoint, request.prompt, request.n, request.size) == (
        "generations", "a fox", 2, "1536x1024",
    )  # fmt: skip
    image = data_uri(png_bytes(40, 30))
    edit = parse_line(
        "/v1/images/edits",
        '{"prompt":"bluer","images":[{"image_url":"' + image + '"}]}',
        max_bytes=1 << 20,
        policy=POLICY,
    )
    assert edit.endpoint == "edits" and edit.images == (image,)
    assert edit.first_image_size == (40, 30)


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("/v1/images/generations", '{"prompt":"x","stream":true}', "stream"),
        ("/v1/images/generations", '{"prompt":"x","colour":"red"}', "colour"),
        ("/v1/images/generations", '{"prompt":"x","n":"two"}', "n"),
        ("/v1/images/edits", '{"prompt":"x"}', "images"),
        ("/v1/images/edits", '{"prompt":"x","images":[{"image_url":"http://127.0.0.1/a.png"}]}',
         "images[0].image_url"),
    ],
)  # fmt: skip
def test_a_bad_line_body_names_its_parameter(endpoint: str, body: str, param: str) -> None:
    with pytest.raises(InvalidParameter) as bad:
        parse_line(endpoint, body, max_bytes=1 << 20, policy=POLICY)
    assert bad.value.param == param
