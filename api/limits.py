"""Request body caps enforced while the body streams in, with or without a Content-Length: uploads get
`max_upload_bytes` (plus a margin for the multipart framing), every other body `max_body_bytes`.

A route that parses its body (JSON, or a form) would otherwise read a body of any size first. This middleware
answers 413 as soon as the declared length, or the bytes actually received, pass the cap, and stops reading there.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.handlers import service_error_response
from service.errors import PayloadTooLarge
from service.uploads import too_large

# The multipart framing around the file (boundaries, part headers, the purpose field) on top of the file's own cap.
MULTIPART_MARGIN = 64 * 1024
UPLOAD_PATHS = ("/v1/files",)


def body_too_large(cap: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is over the {cap} byte limit", code="body_too_large")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_upload_bytes: int, max_body_bytes: int) -> None:
        self.app, self.upload_cap, self.body_cap = app, max_upload_bytes, max_body_bytes

    def _refusal(self, scope: Scope) -> tuple[int, PayloadTooLarge]:
        """The byte limit of this request's body, and what exceeding it answers."""
        if scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS:
            return self.upload_cap + MULTIPART_MARGIN, too_large(self.upload_cap)
        return self.body_cap, body_too_large(self.body_cap)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, refusal = self._refusal(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await service_error_response(refusal, close=True)(scope, receive, send)
            return
        received, exceeded = 0, False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
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
            await service_error_response(refusal, close=True)(scope, receive, send)
