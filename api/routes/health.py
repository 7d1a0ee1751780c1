"""Liveness and readiness. An unreachable database makes `/readyz` answer 503 `database_unavailable` through the
one handler that decides it (api/handlers.py, on `service.db.is_unreachable`), like every other route."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep) -> dict[str, str]:
    session.execute(text("SELECT 1"))
    return {"status": "ready"}
