"""Checking a batch's input file (OpenAI's batch JSONL format) as its chunks go by: the file
may be 200 MB, so it is never held whole, and a line longer than the limit is skipped
without being buffered. Pure; table-tested in tests/test_batch_jsonl.py."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from .store import BatchError, Line

MAX_ERRORS = 100  # as OpenAI: a batch's errors list the first problems, not all
MAX_CUSTOM_ID = 512
_KEYS = ("custom_id", "method", "url", "body")
_BOM = b"\xef\xbb\xbf"


class InputCheck:
    """Feed the file's chunks in order; each call returns the valid request lines it
    completed. After end(), `errors` holds the first MAX_ERRORS problems (the last one's
    message says how many more there were) and `failed` says whether the batch must fail."""

    def __init__(self, endpoint: str, *, max_lines: int, max_line_bytes: int) -> None:
        self.endpoint = endpoint
        self.max_lines = max_lines
        self.max_line_bytes = max_line_bytes
        self.errors: list[BatchError] = []
        self.problems = 0  # every problem seen, kept or not
        self.requests = 0  # non-blank lines
        self._line = 0  # physical lines completed so far
        self._pending = bytearray()  # the current line's bytes so far
        self._skipping = False  # the current line is over the limit: drop until "\n"
        # 16-byte digests, not the ids themselves: 50,000 ids of 512 chars stay small.
        self._seen: dict[bytes, int] = {}
        self._ended = False

    @property
    def failed(self) -> bool:
        return self.problems > 0

    def _error(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        self.problems += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(BatchError(code, message, line, param))

    def feed(self, chunk: bytes) -> list[Line]:
        out: list[Line] = []
        start = 0
        size = len(chunk)
        while start < size:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                self._partial(chunk, start, size)
                break
            self._line += 1
            if self._skipping:
                self._skipping = False
                self._pending.clear()
            elif self._pending:
                self._pending += chunk[start:nl]
                segment = bytes(self._pending)
                self._pending.clear()
                self._complete(segment, out)
            else:
                segment = chunk[start:nl]
                if segment and not segment.isspace():
                    self._complete(segment, out)
            start = nl + 1
        return out

    def _partial(self, chunk: bytes, start: int, end: int) -> None:
        """The tail of a chunk with no newline: keep it, unless the line is already over
        the limit, then report it once and drop its bytes until the next newline."""
        if self._skipping:
            return
        if len(self._pending) + (end - start) > self.max_line_bytes + 1:
            # (+1: a CRLF line's "\r" is not part of its length.)
            self._skipping = True
            self._pending.clear()
            self.requests += 1
            self._too_long(self._line + 1)
            return
        self._pending += chunk[start:end]

    def _too_long(self, line: int) -> None:
        self._error(
            "line_too_long",
            f"Line {line} is longer than the limit of {self.max_line_bytes} bytes.",
            line,
        )

    def end(self) -> list[Line]:
        out: list[Line] = []
        if self._ended:
            return out
        self._ended = True
        if self._pending and not self._skipping:
            self._line += 1
            segment = bytes(self._pending)
            self._pending.clear()
            if not segment.isspace():
                self._complete(segment, out)
        if self.requests == 0:
            self._error("empty_file", "The input file has no request line.", None)
        if self.problems > len(self.errors):
            last = self.errors[-1]
            more = self.problems - len(self.errors)
            self.errors[-1] = BatchError(
                last.code, f"{last.message} (and {more} more problems)", last.line, last.param
            )
        return out

    def _complete(self, segment: bytes, out: list[Line]) -> None:
        line = self._line
        if segment.endswith(b"\r"):
            segment = segment[:-1]
        if line == 1 and segment.startswith(_BOM):
            segment = segment[len(_BOM) :]
        if segment.isspace() or not segment:
            return
        self.requests += 1
        if len(segment) > self.max_line_bytes:
            self._too_long(line)
            return
        if self.requests > self.max_lines:
            if self.requests == self.max_lines + 1:
                self._error(
                    "too_many_requests",
                    f"The file has more than {self.max_lines} requests.",
                    line,
                )
            return
        checked = self._check(segment, line)
        if checked is not None:
            out.append(checked)

    def _check(self, segment: bytes, line: int) -> Line | None:
        value = self._object(segment, line)
        if value is None:
            return None
        problem = _field_problem(value, self.endpoint, line)
        if problem is not None:
            code, message, param = problem
            self._error(code, message, line, param)
            return None
        custom_id = value["custom_id"]
        digest = hashlib.blake2b(custom_id.encode("utf-8"), digest_size=16).digest()
        first = self._seen.get(digest)
        if first is not None:
            self._error(
                "duplicate_custom_id",
                f"Line {line}: custom_id {custom_id!r} is already used on line {first}.",
                line,
                "custom_id",
            )
            return None
        self._seen[digest] = line
        compact = json.dumps(value["body"], separators=(",", ":"), ensure_ascii=False)
        return Line(index=line, custom_id=custom_id, body=compact)

    def _object(self, segment: bytes, line: int) -> dict[str, Any] | None:
        """The line as a JSON object, or None (and the problem recorded)."""
        try:
            text = segment.decode("utf-8")
        except UnicodeDecodeError:
            self._error("invalid_encoding", f"Line {line} is not valid UTF-8.", line)
            return None
        try:
            value: Any = json.loads(text)
        except (ValueError, RecursionError):
            self._error("invalid_json_line", f"Line {line} is not valid JSON.", line)
            return None
        if not isinstance(value, dict):
            self._error("invalid_json_line", f"Line {line} is not a JSON object.", line)
            return None
        return value


def _field_problem(
    value: dict[str, Any], endpoint: str, line: int
) -> tuple[str, str, str | None] | None:
    """What is wrong with a request line's fields, as (code, message, param); None when
    nothing is. Pure."""
    unknown = sorted(k for k in value if k not in _KEYS)
    if unknown:
        return "invalid_request", f"Line {line} has unknown keys: {', '.join(unknown)}.", unknown[0]
    for key in _KEYS:
        if key not in value:
            return (
                "missing_required_parameter",
                f"Line {line} is missing required parameter '{key}'.",
                key,
            )
    custom_id = value["custom_id"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return (
            "invalid_request",
            f"Line {line}: custom_id must be a non-empty string of at most {MAX_CUSTOM_ID}"
            " characters.",
            "custom_id",
        )
    if value["method"] != "POST":
        return "invalid_request", f"Line {line}: method must be POST.", "method"
    if value["url"] != endpoint:
        return "invalid_url", f"Line {line}: url must be this batch's endpoint, {endpoint}.", "url"
    if not isinstance(value["body"], dict):
        return "invalid_request", f"Line {line}: body must be a JSON object.", "body"
    return None


def check_file(
    endpoint: str, chunks: Iterable[bytes], *, max_lines: int, max_line_bytes: int
) -> tuple[list[Line], list[BatchError]]:
    """The whole check in one call (tests, small files)."""
    check = InputCheck(endpoint, max_lines=max_lines, max_line_bytes=max_line_bytes)
    lines: list[Line] = []
    for chunk in chunks:
        lines += check.feed(chunk)
    lines += check.end()
    return lines, check.errors
