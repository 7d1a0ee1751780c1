"""Look-ups by id that answer 404 for another tenant's rows exactly as for unknown ids."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.errors import NotFound
from service.tables import File, Job, Tenant


def get_owned_file(session: Session, tenant: Tenant, file_id: str, *, param: str = "file_id") -> File:
    row = session.get(File, file_id)
    if row is None or row.tenant_id != tenant.id:
        raise NotFound(f"no file with id {file_id!r}", param=param, code="file_not_found")
    return row


def get_owned_job(session: Session, tenant: Tenant, job_id: str, *, param: str = "fine_tuning_job_id") -> Job:
    row = session.get(Job, job_id)
    if row is None or row.tenant_id != tenant.id:
        raise NotFound(f"no fine-tuning job with id {job_id!r}", param=param, code="job_not_found")
    return row
