"""Job state changes requested by a client: cancel, pause, resume.

    queued ──claim──> running ──> succeeded | failed | cancelled | paused
      │  ^                          (the worker sets these, fenced by its attempt)
      │  └──────── resume ──────── paused
      └── cancel ──> cancelled,  pause ──> paused  (no worker holds a queued job, so these are immediate)

A running job is owned by its worker: cancel and pause only set `requested_action`, which the worker reads with each
heartbeat and obeys at the next step (pause writes a checkpoint first). Every change is one conditional UPDATE on
the status it expects, so a client and a worker racing on the same row cannot both win.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.errors import Conflict
from service.events import add_event
from service.ids import now
from service.tables import Job
from service.webhooks import CANCELLED, enqueue_job_event

TERMINAL = ("succeeded", "failed", "cancelled")


def fine_tuned_model_name(job: Job) -> str:
    return f"ft:{job.model}:{job.suffix}:{job.id}" if job.suffix else f"ft:{job.model}:{job.id}"


def _set(session: Session, job: Job, expect_status: str, **values: object) -> bool:
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.status == expect_status).values(**values)
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    return result.rowcount == 1  # type: ignore[attr-defined]


def cancel(session: Session, job: Job) -> None:
    if job.status == "cancelled" or (job.status == "running" and job.requested_action == "cancel"):
        return
    if job.status in ("queued", "paused", "validating_files") and _set(
        session, job, job.status, status="cancelled", finished_at=now(), requested_action=None
    ):
        add_event(session, job.id, job.attempt, "Job cancelled")
        enqueue_job_event(session, job.id, CANCELLED)
        return
    if job.status == "running" and _set(session, job, "running", requested_action="cancel"):
        add_event(session, job.id, job.attempt, "Cancellation requested; the worker stops at the next step")
        return
    if job.status in TERMINAL:
        raise Conflict(f"job {job.id} is already {job.status} and cannot be cancelled", code="job_not_cancellable")
    cancel(session, job)  # the status changed under us: decide again on the fresh row


def pause(session: Session, job: Job) -> None:
    if job.status == "paused" or (job.status == "running" and job.requested_action == "pause"):
        return
    if job.status == "queued" and _set(session, job, "queued", status="paused"):
        add_event(session, job.id, job.attempt, "Job paused before it started")
        return
    if job.status == "running" and job.requested_action is None and _set(
        session, job, "running", requested_action="pause"
    ):
        add_event(session, job.id, job.attempt, "Pause requested; the worker checkpoints and releases the job")
        return
    if job.status in TERMINAL or job.requested_action == "cancel":
        raise Conflict(f"job {job.id} is {job.status} and cannot be paused", code="job_not_pausable")
    pause(session, job)


def resume(session: Session, job: Job) -> bool:
    """Returns True when the job went back to `queued` and must be dispatched after the commit."""
    if job.status in ("queued",) or (job.status == "running" and job.requested_action is None):
        return False
    if job.status == "running" and job.requested_action == "pause" and _set(
        session, job, "running", requested_action=None
    ):
        add_event(session, job.id, job.attempt, "Pause withdrawn; training continues")
        return False
    if job.status == "paused" and _set(session, job, "paused", status="queued", requested_action=None,
                                       dispatched_at=None):
        add_event(session, job.id, job.attempt, "Job resumed; it continues from its last checkpoint")
        return True
    if job.status in TERMINAL or job.requested_action == "cancel":
        raise Conflict(f"job {job.id} is {job.status} and cannot be resumed", code="job_not_resumable")
    return resume(session, job)
