"""A multipart/form-data upload read as it arrives, from the route's worker thread, never whole.

The route is a plain (sync) function, so FastAPI runs it in a worker thread and parses nothing itself; this module
pulls the body from the event loop one message at a time (`anyio.from_thread`), parses it with python-multipart's
push parser, collects the small form fields and hands the file part's bytes to a sink as they come, so the caller
can validate each line as it arrives and refuse the first bad one without reading the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anyio.from_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from service.errors import InvalidRequest, Unprocessable

MAX_FIELD_BYTES = 1024


def body_chunks(request: Request) -> Iterator[bytes]:
    """The request body, message by message, read from a worker thread."""
    async def receive() -> Message:
        return await request.receive()

    while True:
        message = anyio.from_thread.run(receive)
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


class FormReader:
    """Parses a form of small text fields named in `fields` and one file part named `file_field`, whose bytes go
    to `sink` as they arrive. Unknown or repeated fields are refused as their headers arrive."""

    def __init__(self, content_type: str, file_field: str, fields: tuple[str, ...],
                 sink: Callable[[bytes], None]) -> None:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise Unprocessable("send the upload as multipart/form-data with a `file` and a `purpose` field",
                                param="file", code="invalid_content_type")
        self.file_field, self.allowed, self.sink = file_field, (file_field, *fields), sink
        self.values: dict[str, str] = {}
        self.filename: str | None = None
        self.file_seen = False
        self.ended = False
        self._name: str | None = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._value = bytearray()
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        })

    def read(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                self._parser.write(chunk)
            self._parser.finalize()
        except MultipartParseError as e:
            raise InvalidRequest(f"the multipart body is malformed ({e}); send a multipart/form-data body",
                                 param="file", code="invalid_multipart") from None
        if not self.ended:
            raise InvalidRequest("the multipart body ended early", param="file", code="invalid_multipart")

    def _part_begin(self) -> None:
        self._headers, self._name = {}, None
        self._value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in self.allowed:
            raise Unprocessable(f"{name}: unknown form field; send only {' and '.join(self.allowed)}",
                                param=name, code="unknown_parameter")
        if name in self.values or (name == self.file_field and self.file_seen):
            raise Unprocessable(f"{name}: sent twice; send each form field once", param=name,
                                code="duplicate_parameter")
        self._name = name
        if name == self.file_field:
            self.file_seen = True
            filename = options.get(b"filename")
            self.filename = filename.decode("utf-8", "replace") if filename is not None else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == self.file_field:
            self.sink(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"{self._name}: the value is over {MAX_FIELD_BYTES} bytes", param=self._name)

    def _part_end(self) -> None:
        if self._name is not None and self._name != self.file_field:
            self.values[self._name] = self._value.decode("utf-8", "replace")

    def _end(self) -> None:
        self.ended = True
