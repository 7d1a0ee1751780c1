"""The API key is checked before anything reads the request body: an ASGI middleware in front of every `/v1` route.

A body is only received once the route asks for it, so a client without a valid key is answered 401 having sent
nothing that the server read, however large the body it announced (or streams). The tenant found is handed to the
routes in the request's state, so the key is looked up once per request; `api.deps.get_current_tenant` applies the
per-key rate limit.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.handlers import database_unavailable, pool_exhausted, service_error_response
from service.db import is_unreachable
from service.errors import Unauthorized
from service.keys import hash_key, tenant_for_key
from service.tables import Tenant

GUARDED_PREFIX = "/v1/"


def bearer_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() or None if scheme.lower() == "bearer" else None
    return None


def _lookup(factory: sessionmaker[Session], key: str) -> Tenant | None:
    with factory() as session:
        return tenant_for_key(session, key)  # loaded, then detached: routes read only its columns


class AuthGate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED_PREFIX):
            await self.app(scope, receive, send)
            return
        key = bearer_key(scope)
        if key is None:
            refusal = Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
            await service_error_response(refusal, close=True)(scope, receive, send)
            return
        try:
            tenant = await run_in_threadpool(_lookup, scope["app"].state.sessionmaker, key)
        except PoolTimeout:
            await pool_exhausted(close=True)(scope, receive, send)
            return
        except DBAPIError as e:
            if not is_unreachable(e):
                raise
            await database_unavailable(e, close=True)(scope, receive, send)
            return
        if tenant is None:
            refusal = Unauthorized("invalid or revoked API key", code="invalid_api_key")
            await service_error_response(refusal, close=True)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["tenant"], state["key_hash"] = tenant, hash_key(key)
        await self.app(scope, receive, send)
