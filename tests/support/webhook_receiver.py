"""A webhook receiver on 127.0.0.1 for the tests, and a Standard Webhooks signature check written from the
specification (not the service's signing code), so a test can tell a correct signature from one merely consistent
with our own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.service import free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def verify(secret: str, received: Received, tolerance_s: float = 300.0) -> bool:
    """Standard Webhooks: base64 HMAC-SHA256, keyed by the secret's base64 payload after `whsec_`, over
    `{webhook-id}.{webhook-timestamp}.{body}`; any of the space-separated `v1,` signatures may match."""
    msg_id, stamp = received.headers["webhook-id"], received.headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > tolerance_s:
        return False
    key = base64.b64decode(secret[len("whsec_"):])
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + received.body,
                                         hashlib.sha256).digest()).decode()
    offered = [s.split(",", 1)[1] for s in received.headers["webhook-signature"].split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, s) for s in offered)


class Receiver:
    """Records every POST; answers the statuses in `answers` in turn, then 200."""

    def __init__(self, port: int | None = None, answers: tuple[int, ...] = ()) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/drlora"
        self.received: list[Received] = []
        self._answers = list(answers)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver._answers.pop(0) if receiver._answers else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, event_type: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.event["type"] == event_type]


@contextmanager
def receiving(answers: tuple[int, ...] = ()) -> Iterator[Receiver]:
    receiver = Receiver(answers=answers)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
