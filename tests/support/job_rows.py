"""An in-process SQLite database with the service's tables, and job rows put straight into any state: for the fast
tests of the state machine and of the worker's writes (no processes, no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker, transaction
from service.ids import new_id, now
from service.statuses import TERMINAL, JobStatus, RequestedAction
from service.tables import Base, Job, JobEvent, Tenant


@contextmanager
def sqlite_factory(path: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions on a new SQLite file at `path` (WAL, as embedded) holding the service's tables."""
    engine = make_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def job_in(factory: sessionmaker[Session], status: JobStatus, requested: RequestedAction | None = None, *,
           lease_expires_at: float | None = None, lost_attempts: int = 0, max_attempts: int = 3) -> str:
    """A job row in `status` as the service would have left it: a running one is held by attempt 1 of worker "w1"
    (its lease already ran out unless `lease_expires_at` says otherwise), an ended one has its `finished_at`."""
    t = now()
    running = status == JobStatus.running
    with transaction(factory) as s:
        tenant = Tenant(id=new_id("tenant"), name=new_id("t"), created_at=t)
        s.add(tenant)
        s.flush()  # no relationship orders the inserts: the tenant must exist first
        job = Job(id=new_id("ftjob"), tenant_id=tenant.id, model="m", training_file="file-x", method="dr_lora",
                  hyperparameters={}, seed=0, status=status, step=0, created_at=t,
                  attempt=0 if status in (JobStatus.validating_files, JobStatus.queued) else 1,
                  lost_attempts=lost_attempts, max_attempts=max_attempts, requested_action=requested,
                  worker_id="w1" if running else None, heartbeat_at=t - 2 if running else None,
                  lease_expires_at=(t - 1 if lease_expires_at is None else lease_expires_at) if running else None,
                  started_at=None if status == JobStatus.queued else t - 3,
                  finished_at=t - 1 if status in TERMINAL else None)
        s.add(job)
    return job.id


def row_values(factory: sessionmaker[Session], job_id: str) -> dict[str, Any]:
    """Every column of the job's row, read in a session of its own."""
    with factory() as s:
        job = s.get_one(Job, job_id)
        return {c.key: getattr(job, c.key) for c in inspect(Job).column_attrs}


def event_count(factory: sessionmaker[Session], job_id: str) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)) or 0


def messages(factory: sessionmaker[Session], job_id: str) -> list[str]:
    with factory() as s:
        return list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
