"""Helpers for the operations tests (webhooks, metrics, logs): a database of their own per test, so that global
counts and the delivery queue meet no other test's rows, and tenants with jobs written straight into it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from drlora_cli.bootstrap import migrate
from service.db import make_engine, make_sessionmaker, transaction
from service.ids import new_id, now
from service.keys import create_key
from service.settings import Settings
from service.tables import Job
from tests.support.service import fresh_pg_database, make_settings


@contextmanager
def own_database(kind: str, tmp_path: Path, redis_url: str, **extra: Any) -> Iterator[Settings]:
    """Migrated settings on an empty PostgreSQL database (with Redis) or an empty SQLite file."""
    if kind == "sqlite":
        settings = make_settings(tmp_path / "data", **extra)
        migrate(settings)
        yield settings
        return
    with fresh_pg_database("drlora_ops") as url:
        settings = make_settings(tmp_path / "data", url, redis_url, **extra)
        migrate(settings)
        yield settings


@contextmanager
def session_factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Tenant:
    id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def new_tenant(factory: sessionmaker[Session]) -> Tenant:
    with transaction(factory) as s:
        issued = create_key(s, new_id("ops-tenant"))
    return Tenant(issued.tenant_id, issued.key)


def add_job(factory: sessionmaker[Session], tenant: Tenant, status: str = "queued", **values: Any) -> str:
    """A job row as the API would have written it (no file or model behind it: nothing trains it)."""
    job_id = new_id("ftjob")
    with transaction(factory) as s:
        columns = {"attempt": 0, "lost_attempts": 0, "max_attempts": 3, "step": 0, **values}
        s.add(Job(id=job_id, tenant_id=tenant.id, model="m", training_file="file-x", method="dr_lora",
                  hyperparameters={}, seed=0, status=status, created_at=now(), **columns))
    return job_id
