"""An upload over the cap, sent chunked (no Content-Length) to a real API process, is answered 413 while the
client is still sending: the server stops reading near the cap instead of swallowing the body (RELIABILITY.md 19).

The client writes a 64 MiB body in 64 KiB chunks through a raw socket and looks for the answer between chunks.
Kernel socket buffers absorb a few MiB that the server never reads, so the bound is generous, but a server that
read the whole body before answering could not answer before all 64 MiB were sent."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from tests.support.service import Process, free_port, start_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CAP = 1000
CHUNK = 64 * 1024
TOTAL = 64 * 2**20


@pytest.fixture
def api(pg_settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, int]]:
    settings = pg_settings.model_copy(update={"max_upload_bytes": CAP})
    port = free_port()
    process: Process = start_api(settings, port, tmp_path / "api.log")
    try:
        yield settings, port
    finally:
        process.stop()


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def send_until_answered(port: int, key: str) -> tuple[int, bytes]:
    """Send the oversized chunked upload; return how many body bytes were sent when the answer came, and it."""
    head = (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    preamble = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n')
    line = b'{"text": "' + b"x" * (CHUNK - 13) + b'"}\n'
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + chunked(preamble))
        while sent < TOTAL:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there while we are still sending
            try:
                sock.sendall(chunked(line))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(line)
        sock.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer and (part := sock.recv(65536)):
            answer += part
    return sent, answer


def test_a_chunked_upload_over_the_cap_is_refused_while_it_is_still_being_sent(
        api: tuple[Settings, int], make_key) -> None:
    settings, port = api
    kept_before = sorted(settings.files_root.rglob("*"))
    sent, answer = send_until_answered(port, make_key(settings))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < TOTAL // 4, f"{sent} bytes were sent before the answer"
    assert sorted(settings.files_root.rglob("*")) == kept_before  # nothing kept, not even a temporary file
