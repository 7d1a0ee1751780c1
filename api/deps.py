"""Dependency aliases for the routes: `SessionDep`, `SettingsDep`, `CeleryDep`, `CurrentTenant`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.ratelimit import enforce
from service.errors import Unauthorized
from service.settings import Settings
from service.tables import Tenant

bearer = HTTPBearer(auto_error=False, description="An API key from `drlora keys create --tenant NAME`")


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


# Closed as soon as the route returns, before the response is sent: a streamed response (events) or a slow client
# never holds a pooled connection.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


def get_current_tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Tenant:
    """Every authenticated route depends on this, so the per-key rate limit covers each of them, new ones too. The
    key itself was checked by `api.auth.AuthGate` before the body was read (`credentials` documents the scheme)."""
    tenant: Tenant | None = getattr(request.state, "tenant", None)
    if credentials is None or tenant is None:
        raise Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    enforce(request.app.state.limiter, request.state.key_hash, request.app.state.settings)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessionmaker


SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
