"""A multipart upload read as it streams: its small text fields kept, its one file part
handed on a chunk at a time, never spooled to a temporary file nor held whole.

A batch input file may be hundreds of megabytes, and a container's /tmp is often a small
memory-backed volume: Starlette's form parser spools file parts there. Here the file's
bytes go straight from the socket to the batch store (api/files.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import DomainError, invalid

MAX_FIELD_BYTES = 64 * 1024  # a text field (purpose) is a word
MAX_PARTS = 8


class StreamedForm:
    """`start` reads the body up to the file part, `file_chunks` hands on its bytes;
    `fields` holds the text fields and `filename` the file part's name. `file_field` names the
    one part that may be a file; `on_field` checks each text field as soon as it ends (a
    bad `purpose` stops the upload before the file is stored)."""

    def __init__(
        self,
        content_type: str,
        *,
        file_field: str,
        max_file_bytes: int,
        too_large: Callable[[], DomainError],
        on_field: Callable[[str, str], None],
    ) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise invalid(None, "The multipart body has no boundary in its content-type.")
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.saw_file = False
        self._file_field = file_field
        self._max_file_bytes = max_file_bytes
        self._too_large = too_large
        self._on_field = on_field
        self._file_bytes = 0
        self._parts = 0
        self._out: list[bytes] = []  # file bytes parsed and not yet handed on
        self._body: AsyncIterator[bytes] | None = None
        self._ended = False
        self._error: DomainError | None = None
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._name = ""
        self._is_file = False
        self._value = bytearray()
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }
        self._parser = MultipartParser(boundary, callbacks)

    async def start(self, body: AsyncIterator[bytes]) -> None:
        """Read the body up to the file part's headers (its name is then known), keeping
        the file bytes read so far for file_chunks."""
        self._body = body
        while not self.saw_file and not self._ended:
            await self._read()

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file part's bytes as the body arrives (a DomainError for a bad body); the
        text fields are all in `fields` once it is exhausted."""
        while True:
            if self._out:
                data = b"".join(self._out)
                self._out.clear()
                yield data
            if self._ended:
                return
            await self._read()

    async def _read(self) -> None:
        assert self._body is not None, "start() first"
        try:
            chunk = await anext(self._body)
        except StopAsyncIteration:
            chunk = None
        try:
            if chunk is None:
                self._ended = True
                self._parser.finalize()
            else:
                self._parser.write(chunk)
        except FormParserError as exc:
            raise invalid(None, f"Could not read the multipart body: {exc}") from None
        if self._error is not None:
            raise self._error

    # The parser's callbacks: they only record, and leave errors for file_chunks to raise.
    def _fail(self, error: DomainError) -> None:
        if self._error is None:
            self._error = error

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            self._fail(invalid(None, f"At most {MAX_PARTS} parts in an upload."))
        self._headers = {}
        self._value = bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._is_file = filename is not None
        if self._is_file:
            if self._name != self._file_field or self.saw_file:
                self._fail(invalid(self._name or None, f"Unexpected file part '{self._name}'."))
                return
            self.saw_file = True
            self.filename = filename.decode("utf-8", "replace") if filename else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._error is not None:
            return
        if not self._is_file:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                self._fail(invalid(self._name or None, f"The field '{self._name}' is too long."))
            return
        self._file_bytes += end - start
        if self._file_bytes > self._max_file_bytes:
            self._fail(self._too_large())
            return
        self._out.append(data[start:end])

    def _part_end(self) -> None:
        if self._error is not None or self._is_file:
            return
        value = self._value.decode("utf-8", "replace")
        self.fields[self._name] = value
        try:
            self._on_field(self._name, value)
        except DomainError as err:
            self._fail(err)
