"""The periodic sweep that makes the broker untrusted: it re-sends queued jobs and takes back lost running ones.

1. A `running` job whose lease expired lost its worker (killed, frozen, cut off); so did one with no lease at all,
   which no worker can be renewing (claims always set one). If a cancel or pause was asked for, that now takes effect; otherwise the job goes back to `queued` (the next attempt resumes from its last
   checkpoint) or, after `max_attempts` lost runs, to `failed` naming the cause.
2. A `queued` job never sent, or sent longer than `redispatch_after_s` ago without being claimed (the send failed,
   the broker lost the message, the worker died before claiming), is sent again. Duplicates are harmless: only one
   delivery can claim the row.

Each change is one conditional UPDATE, so sweeps running in several API processes at once do no harm. Lost rows are
locked with SKIP LOCKED (PostgreSQL): a row still locked by a frozen worker's transaction is left for a later pass
instead of stalling this one (the server ends such a transaction; see worker/app.py).
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.broker import send_train
from service.db import transaction
from service.events import add_event
from service.ids import now
from service.periodic import Periodic
from service.settings import Settings
from service.tables import Job
from service.webhooks import STATUS_EVENTS, enqueue_job_event

log = logging.getLogger("drlora.sweep")


def sweep_once(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    """One pass; returns the ids of the jobs it sent to the broker."""
    reclaim_lost(factory)
    return redispatch(factory, celery, settings)


def _lease_gone(t: float) -> ColumnElement[bool]:
    return (Job.lease_expires_at < t) | Job.lease_expires_at.is_(None)


def reclaim_lost(factory: sessionmaker[Session]) -> None:
    t = now()
    with transaction(factory) as session:
        lost = session.scalars(select(Job).where(Job.status == "running", _lease_gone(t))
                               .with_for_update(skip_locked=True)).all()
        for job in lost:
            _reclaim(session, job, t)


def _reclaim(session: Session, job: Job, t: float) -> None:
    values: dict[str, object]
    if job.requested_action == "cancel":
        values = {"status": "cancelled", "finished_at": t}
        message, level = f"Job cancelled (the worker of attempt {job.attempt} had stopped)", "info"
    elif job.requested_action == "pause":
        values = {"status": "paused"}
        message, level = f"Job paused (the worker of attempt {job.attempt} had stopped)", "info"
    elif job.lost_attempts + 1 >= job.max_attempts:
        values = {"status": "failed", "finished_at": t, "lost_attempts": job.lost_attempts + 1,
                  "error": {"code": "worker_lost", "param": None,
                            "message": f"the worker stopped heartbeating on {job.lost_attempts + 1} attempts "
                                       f"(max_attempts={job.max_attempts}); last attempt {job.attempt}"}}
        message, level = "Job failed: its worker was lost too many times", "error"
    else:
        values = {"status": "queued", "dispatched_at": None, "lost_attempts": job.lost_attempts + 1}
        message, level = f"Worker of attempt {job.attempt} lost (no heartbeat); job requeued", "warn"
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempt == job.attempt, Job.status == "running", _lease_gone(t))
        .values(requested_action=None, worker_id=None, lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        add_event(session, job.id, job.attempt, message, level=level)
        if values["status"] in STATUS_EVENTS:
            enqueue_job_event(session, job.id, STATUS_EVENTS[str(values["status"])])
        log.warning("sweep: %s -> %s", job.id, values["status"])


def redispatch(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    t = now()
    with factory() as session:
        due = session.scalars(
            select(Job.id).where(
                Job.status == "queued",
                (Job.dispatched_at.is_(None)) | (Job.dispatched_at < t - settings.redispatch_after_s),
            )
        ).all()
    sent = []
    for job_id in due:
        if not dispatch(factory, celery, job_id):
            break  # the broker is away: the rest would fail too, each after its timeout; the next pass retries
        sent.append(job_id)
    return sent


def dispatch(factory: sessionmaker[Session], celery: Celery, job_id: str) -> bool:
    """Send the job's doorbell, then note when; a failed send leaves the row for the next sweep."""
    try:
        send_train(celery, job_id)
    except Exception as e:  # any broker failure: the row stays queued and the sweep tries again
        log.warning("could not send job %s to the broker (%s); the sweep will retry", job_id, e)
        return False
    with transaction(factory) as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued").values(dispatched_at=now())
            .execution_options(synchronize_session=False)
        )
    return True


def sweep_thread(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> Periodic:
    """Runs `sweep_once` every `sweep_interval_s` once started."""
    return Periodic("drlora-sweep", settings.sweep_interval_s, lambda: sweep_once(factory, celery, settings), log=log)
