"""No id, filter or name the API takes may contain a NUL character: PostgreSQL text cannot hold one, so a NUL in
the path or the query string would surface as a database error (500). Refused here, before routing, with 400, on
every route and on both databases alike. JSON bodies are checked by their models (`api.schemas.jobs.Text`)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.handlers import error_response


def holds_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"\x00" in query or b"%00" in query


class RefuseNul:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and holds_nul(scope):
            response = error_response(400, "the URL holds a NUL character (%00), which no id or parameter may contain",
                                      "invalid_request_error", code="invalid_characters")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
