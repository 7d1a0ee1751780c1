"""Upload size limit enforced while the body streams in, with or without a Content-Length.

FastAPI parses a multipart body completely before the route runs, so a check in the route alone would read (and
spool to disk) an upload of any size first. This middleware answers 413 as soon as the declared length, or the bytes
actually received, pass the cap plus a margin for the multipart framing, and stops reading there.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.handlers import error_response
from service.errors import PayloadTooLarge

# The multipart framing around the file (boundaries, part headers, the purpose field) on top of the file's own cap.
MULTIPART_MARGIN = 64 * 1024


def too_large(cap: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload is over the {cap} byte limit", param="file", code="file_too_large")


def refuse_over_cap(size: int, cap: int) -> None:
    """The file itself (framing excluded) against the cap, once the middleware has bounded the whole request."""
    if size > cap:
        raise too_large(cap)


class UploadLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, paths: tuple[str, ...] = ("/v1/files",)) -> None:
        self.app, self.cap, self.paths = app, max_bytes, paths
        self.limit = max_bytes + MULTIPART_MARGIN

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
        refusal = too_large(self.cap)
        response = error_response(refusal.status_code, refusal.message, refusal.type, param=refusal.param,
                                  code=refusal.code, headers={"Connection": "close"})
        await response(scope, receive, send)
