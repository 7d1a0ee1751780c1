"""What the operators' `/metrics` reads from the database at scrape time: jobs by status, the workers' heartbeats,
each running job's speed and the webhook deliveries. A handful of small queries in one short session (jobs by
status use `ix_jobs_status`; the speed reads the two newest metric rows of each running job), the same on
PostgreSQL and SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.statuses import DeliveryStatus, JobStatus
from service.tables import Job, Metric, WebhookDelivery

JOB_STATUSES = tuple(JobStatus)
DELIVERY_STATUSES = tuple(DeliveryStatus)


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    worker_id: str
    heartbeat_at: float | None
    steps_per_second: float | None  # between its two newest metric rows
    tokens_per_second: float | None  # as its newest metric row reported


@dataclass(frozen=True)
class Gauges:
    jobs: dict[str, int]
    running: list[RunningJob] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)


def _counts(session: Session, column: object, names: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for name, count in session.execute(select(column, func.count()).group_by(column)):  # type: ignore[call-overload]
        counts[str(name)] = int(count)
    return counts


def _speed(session: Session, job_id: str) -> tuple[float | None, float | None]:
    rows = session.execute(select(Metric.step, Metric.created_at, Metric.tokens_per_second)
                           .where(Metric.job_id == job_id).order_by(Metric.step.desc()).limit(2)).all()
    if not rows:
        return None, None
    tokens = rows[0].tokens_per_second
    if len(rows) < 2 or rows[0].created_at <= rows[1].created_at:
        return None, tokens
    return (rows[0].step - rows[1].step) / (rows[0].created_at - rows[1].created_at), tokens


def read_gauges(session: Session) -> Gauges:
    running = []
    for job_id, worker_id, heartbeat_at in session.execute(
            select(Job.id, Job.worker_id, Job.heartbeat_at).where(Job.status == JobStatus.running).order_by(Job.id)):
        steps, tokens = _speed(session, job_id)
        running.append(RunningJob(job_id, worker_id or "", heartbeat_at, steps, tokens))
    return Gauges(jobs=_counts(session, Job.status, JOB_STATUSES), running=running,
                  deliveries=_counts(session, WebhookDelivery.status, DELIVERY_STATUSES))
