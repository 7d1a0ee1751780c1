"""The per-tenant quota on active jobs (queued or running; paused jobs hold no worker and do not count).

Counting and then inserting is a race: twenty parallel submits would all count below the quota. So the caller first
takes `lock_tenant`, which serializes every job-creating transaction of one tenant until it commits or rolls back,
and counts inside it. One no-op UPDATE does this on both databases: PostgreSQL locks the tenant row (other tenants
are not held up); SQLite takes its single write lock, as BEGIN IMMEDIATE would (pysqlite opens the transaction at
this first write, so no stale read snapshot has to be upgraded).
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.errors import TooManyRequests
from service.statuses import ACTIVE
from service.tables import Job, Tenant

QUOTA_RETRY_AFTER_S = 30


def lock_tenant(session: Session, tenant_id: str) -> None:
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name)
                    .execution_options(synchronize_session=False))


def active_jobs(session: Session, tenant_id: str) -> int:
    query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    return session.scalar(query) or 0


def check_active_jobs(session: Session, tenant_id: str, limit: int) -> None:
    """Raises 429 when one more active job would pass `limit` (0: no quota); call it under `lock_tenant`."""
    if limit and (count := active_jobs(session, tenant_id)) >= limit:
        raise TooManyRequests(
            f"this tenant already has {count} active jobs (queued or running), the most allowed at once is "
            f"{limit}; wait for a job to finish, or pause or cancel one, then retry",
            code="concurrency_quota_exceeded", retry_after=QUOTA_RETRY_AFTER_S)
