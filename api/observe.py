"""Every HTTP request gets a request id, an access log line and its request metrics.

The id is the client's `x-request-id` when it is sane (1 to 128 characters of letters, digits and `._:-`, so
nothing a client sends can forge a log field or blow up a header), otherwise a new random one. It is answered in the
`x-request-id` header, kept in the request's state (the handler of unexpected errors, which runs outside this
middleware, answers it too) and stamped on every log line written while the request runs (service/logsetup.py).
The access line names the path without its query string; uvicorn's own access log is switched off in its favour.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import ApiMetrics
from service.logsetup import request_id_var

log = logging.getLogger("drlora.access")

HEADER = "x-request-id"
SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED = "unmatched"  # the route label of requests no route matched (404s of unknown paths)


def request_id_for(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == HEADER.encode():
            sent = value.decode("latin-1")
            if SANE_ID.fullmatch(sent):
                return sent
            break
    return "req_" + secrets.token_hex(12)


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _route_template(scope: Scope) -> str:
    """The matched route's path template; for a request answered before routing (the key check refuses it first),
    the documented path template it would have reached."""
    if (route := scope.get("route")) is not None:
        return str(getattr(route, "path", UNMATCHED))
    app = scope.get("app")
    if app is None:
        return UNMATCHED
    if not hasattr(app.state, "path_templates"):
        app.state.path_templates = [(t, re.compile(re.sub(r"\{[^}]+\}", "[^/]+", t))) for t in app.openapi()["paths"]]
    return next((t for t, pattern in app.state.path_templates if pattern.fullmatch(scope["path"])), UNMATCHED)


class Observe:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.observe(scope["method"], route, status, seconds)
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000,
                     extra={"method": scope["method"], "route": route, "status": status,
                            "duration_ms": round(seconds * 1000, 1)})
            request_id_var.reset(token)
