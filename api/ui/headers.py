"""Security headers on every answer: a strict Content-Security-Policy (this origin only, no inline code), no
framing, no MIME sniffing, no referrer; and `Cache-Control: no-store` on the API's answers (tenants' data stays out
of shared caches) unless a route set its own. A pure ASGI middleware, so server-sent event streams pass unbuffered."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# data: and blob: images cover Swagger UI's inline icons and the downloads the dashboard builds in memory.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
API_ONLY = [(b"cache-control", b"no-store")]
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        extra = HEADERS + API_ONLY if scope["path"].startswith("/v1/") else HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
