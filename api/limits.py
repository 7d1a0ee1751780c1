"""Upload size limit enforced while the body streams in, with or without a Content-Length.

FastAPI parses a multipart body completely before the route runs, so a check in the route alone would read (and
spool to disk) an upload of any size first. This middleware answers 413 as soon as the declared length, or the bytes
actually received, pass the cap plus a margin for the multipart framing, and stops reading there.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.handlers import error_response

MULTIPART_MARGIN = 64 * 1024


class UploadLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, paths: tuple[str, ...] = ("/v1/files",)) -> None:
        self.app, self.limit, self.paths = app, max_bytes + MULTIPART_MARGIN, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received, exceeded = 0, False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True  # stop here: the app sees a disconnect, the client gets our 413
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the upload is over the {self.limit - MULTIPART_MARGIN} byte limit",
                                  "invalid_request_error", param="file", code="file_too_large",
                                  headers={"Connection": "close"})
        await response(scope, receive, send)
