"""The batch input check: every problem code on its line, chunking, huge and blank files."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from gateway.batch.jsonl import MAX_ERRORS, InputCheck, check_file

GEN = "/v1/images/generations"
EDITS = "/v1/images/edits"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="


def req(cid: str, url: str = GEN, **body: object) -> str:
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": url, "body": body or {"prompt": "a cat"}}
    )


def run(
    text: bytes | str, endpoint: str = GEN, max_lines: int = 1000, max_line_bytes: int = 10_000
):
    data = text.encode() if isinstance(text, str) else text
    return check_file(endpoint, [data], max_lines=max_lines, max_line_bytes=max_line_bytes)


def test_good_generations_file() -> None:
    text = "\n".join(req(f"r{i}", prompt=f"cat {i}", n=1) for i in range(3)) + "\n"
    lines, errors = run(text)
    assert errors == []
    assert [(ln.index, ln.custom_id) for ln in lines] == [(1, "r0"), (2, "r1"), (3, "r2")]
    assert lines[0].body == '{"prompt":"cat 0","n":1}'


def test_good_edits_file_with_crlf_and_blank_lines() -> None:
    text = "\r\n".join(
        [
            req("e1", EDITS, prompt="hat", images=[{"image_url": PNG}]),
            "  ",
            req("e2", EDITS, prompt="é"),
        ]
    )
    lines, errors = run(text, EDITS)
    assert errors == []
    assert [ln.index for ln in lines] == [1, 3]
    assert json.loads(lines[0].body)["images"][0]["image_url"] == PNG
    assert lines[1].body == '{"prompt":"é"}'


BAD = [
    ("not json", "invalid_json_line", None),
    ("[1, 2]", "invalid_json_line", None),
    (
        '{"method": "POST", "url": "/v1/images/generations", "body": {}}',
        "missing_required_parameter",
        "custom_id",
    ),
    (
        '{"custom_id": "a", "url": "/v1/images/generations", "body": {}}',
        "missing_required_parameter",
        "method",
    ),
    ('{"custom_id": "a", "method": "POST", "body": {}}', "missing_required_parameter", "url"),
    (
        '{"custom_id": "a", "method": "POST", "url": "/v1/images/generations"}',
        "missing_required_parameter",
        "body",
    ),
    (
        '{"custom_id": "a", "method": "GET", "url": "/v1/images/generations", "body": {}}',
        "invalid_request",
        "method",
    ),
    (
        '{"custom_id": "a", "method": "POST", "url": "/v1/images/edits", "body": {}}',
        "invalid_url",
        "url",
    ),
    (
        '{"custom_id": "", "method": "POST", "url": "/v1/images/generations", "body": {}}',
        "invalid_request",
        "custom_id",
    ),
    (req("x" * 513), "invalid_request", "custom_id"),
    (
        '{"custom_id": "a", "method": "POST", "url": "/v1/images/generations", "body": 3}',
        "invalid_request",
        "body",
    ),
    (
        '{"custom_id": "a", "method": "POST", "url": "/v1/images/generations", "body": {}, "x": 1}',
        "invalid_request",
        "x",
    ),
]


@pytest.mark.parametrize(("line", "code", "param"), BAD)
def test_each_problem_on_its_line(line: str, code: str, param: str | None) -> None:
    lines, errors = run(req("ok") + "\n\n" + line + "\n" + req("ok2"))
    assert [(e.code, e.line, e.param) for e in errors] == [(code, 3, param)]
    assert [ln.index for ln in lines] == [1, 4]


def test_url_message_names_the_endpoint() -> None:
    _, errors = run(req("a", EDITS))
    assert GEN in errors[0].message


def test_duplicate_names_first_line() -> None:
    _, errors = run("\n".join([req("a"), req("b"), req("a")]))
    assert [(e.code, e.line) for e in errors] == [("duplicate_custom_id", 3)]
    assert "line 1" in errors[0].message


def test_invalid_encoding() -> None:
    _, errors = run(req("a").encode() + b"\n" + b'{"custom_id": "\xff"}\n')
    assert [(e.code, e.line) for e in errors] == [("invalid_encoding", 2)]


def test_too_many_requests_once() -> None:
    _, errors = run("\n".join(req(f"r{i}") for i in range(5)), max_lines=3)
    assert [(e.code, e.line) for e in errors] == [("too_many_requests", 4)]


def test_line_too_long_in_one_chunk_and_rest_read() -> None:
    text = "\n".join([req("a"), req("b", prompt="x" * 200), req("c")])
    lines, errors = run(text, max_line_bytes=150)
    assert [(e.code, e.line) for e in errors] == [("line_too_long", 2)]
    assert [ln.custom_id for ln in lines] == ["a", "c"]


@pytest.mark.parametrize("text", ["", "\n\n  \n", "\r\n\t\n"])
def test_empty_file(text: str) -> None:
    lines, errors = run(text)
    assert lines == [] and [e.code for e in errors] == ["empty_file"]


def test_more_than_100_problems_keep_100_and_count_the_rest() -> None:
    check = InputCheck(GEN, max_lines=1000, max_line_bytes=1000)
    check.feed(b"nope\n" * 130)
    check.end()
    assert len(check.errors) == MAX_ERRORS and check.problems == 130 and check.failed
    assert "30 more" in check.errors[-1].message


def test_every_split_position_gives_the_same_result() -> None:
    data = "\r\n".join(
        [req("a"), "", "bad", req("b", prompt="é" * 30), req("a"), req("c", EDITS), "   "]
    ).encode()
    data += b"\n" + b'{"custom_id": "\xfe"}' + b"\n" + req("d").encode()
    want = run(data, max_line_bytes=120)
    assert [e.code for e in want[1]] == [
        "invalid_json_line",
        "line_too_long",
        "duplicate_custom_id",
        "invalid_url",
        "invalid_encoding",
    ]
    for i in range(len(data) + 1):
        for j in (i, min(len(data), i + 7)):
            got = check_file(
                GEN, [data[:i], data[i:j], data[j:]], max_lines=1000, max_line_bytes=120
            )
            assert got == want, (i, j)


def _huge(n: int, piece: bytes, chunk: int = 1 << 16) -> Iterator[bytes]:
    yield req("a").encode() + b"\n" + b'{"custom_id": "big", "body": "'
    block = piece * (chunk // len(piece))
    for _ in range(n // len(block)):
        yield block
    yield b'"}\n' + req("b").encode() + b"\n"


def test_100_mb_line_is_skipped_in_little_memory() -> None:
    check = InputCheck(GEN, max_lines=1000, max_line_bytes=1 << 20)
    lines = []
    tracemalloc.start()
    try:
        for chunk in _huge(100 << 20, b"abcdefgh"):
            lines += check.feed(chunk)
        lines += check.end()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert [(e.code, e.line) for e in check.errors] == [("line_too_long", 2)]
    assert [ln.custom_id for ln in lines] == ["a", "b"]


def test_a_million_empty_lines_are_quick() -> None:
    began = time.perf_counter()
    check = InputCheck(GEN, max_lines=1000, max_line_bytes=1000)
    data = b"\n" * 1_000_000
    for k in range(0, len(data), 1 << 16):
        assert check.feed(data[k : k + (1 << 16)]) == []
    assert check.end() == []
    assert time.perf_counter() - began < 2
    assert [e.code for e in check.errors] == ["empty_file"]
