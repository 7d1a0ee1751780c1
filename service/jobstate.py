r"""The job state machine: every change of a job's status is one function here, and each is one conditional UPDATE.

A job's state is its status and, while it runs, the request a client left for its worker (`requested_action`,
written `running+cancel`). Who calls what: the API and the sweep `dispatch` (after sending the job id to the
broker); a worker `claim`s a queued job, and the attempt that owns it ends it with `finish` (adapter published),
`fail`, or `release` (it stopped without a result: cancel, pause, shutdown); the sweep `reclaim`s a running job
whose lease ran out; clients `cancel`, `pause` and `resume`. These two tables are the whole machine
(tests/service/test_svc_jobstate.py tries every cell):

    from              dispatch  claim    finish     fail    release    reclaim
    validating_files  -         -        -          -       -          -
    queued            queued    running  -          -       -          -
    running           -         -        succeeded  failed  queued     queued|failed
    running+cancel    -         -        succeeded  failed  cancelled  cancelled
    running+pause     -         -        succeeded  failed  paused     paused
    paused            -         -        -          -       -          -
    succeeded         -         -        -          -       -          -
    failed            -         -        -          -       -          -
    cancelled         -         -        -          -       -          -

    from              cancel          pause          resume
    validating_files  409             409            409
    queued            cancelled       paused         =
    running           running+cancel  running+pause  =
    running+cancel    =               409            409
    running+pause     running+cancel  =              running
    paused            cancelled       =              queued
    succeeded         409             409            409
    failed            409             409            409
    cancelled         =               409            409

    state          the row moves there; `dispatch` leaves it queued and notes when it was sent
    queued|failed  back to the queue, or `failed` (worker_lost) once `max_attempts` attempts were lost
    =              accepted, nothing to change: a repeated client request answers the same
    -              refused, nothing changes: dispatch and reclaim return False, claim None, and finish, fail and
                   release raise `Fenced`
    409            refused with `Conflict` (the API answers 409)

finish, fail and release are honoured only for the attempt that holds the job (any other gets `Fenced`); reclaim
only once the lease ran out. An attempt that lets go (release) and one the sweep takes back (reclaim) end the same
way: a pending cancel or pause takes effect, otherwise the job is queued and the next attempt resumes from its last
checkpoint. Every UPDATE names the state it expects, so when a client, a worker and the sweep race on one row,
one wins and the others change nothing (a client request then decides again on the fresh row).

`validating_files` is in the enum because OpenAI's API lists it, but no job here is ever in it: a file's lines are
checked when it is uploaded, and the create request checks the job's files in the same transaction that inserts
the row, so a job is `queued` from the moment anyone can see it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from service.errors import Conflict
from service.events import add_event
from service.ids import now
from service.statuses import TERMINAL, JobStatus, RequestedAction
from service.tables import Job
from service.webhooks import STATUS_EVENTS, enqueue_job_event


class Fenced(Exception):
    """This attempt no longer owns the job: its writes are refused."""


def fine_tuned_model_name(job: Job) -> str:
    return f"ft:{job.model}:{job.suffix}:{job.id}" if job.suffix else f"ft:{job.model}:{job.id}"


# -- conditions ---------------------------------------------------------------------------------------------
def owned(job_id: str, attempt: int) -> ColumnElement[bool]:
    """The job still runs under this attempt: the condition of every write the attempt makes."""
    return (Job.id == job_id) & (Job.attempt == attempt) & (Job.status == JobStatus.running)


def lost(t: float) -> ColumnElement[bool]:
    """Running with a lease that ran out by `t`, or with none (claims always set one, so nobody renews it)."""
    return (Job.status == JobStatus.running) & ((Job.lease_expires_at < t) | Job.lease_expires_at.is_(None))


def due_for_dispatch(t: float, redispatch_after_s: float) -> ColumnElement[bool]:
    """Queued and never sent to the broker, or sent longer ago than `redispatch_after_s` and still not claimed."""
    return (Job.status == JobStatus.queued) & (
        Job.dispatched_at.is_(None) | (Job.dispatched_at < t - redispatch_after_s))


def _requested_is(action: str | None) -> ColumnElement[bool]:
    return Job.requested_action.is_(None) if action is None else Job.requested_action == action


def _update(session: Session, where: ColumnElement[bool], **values: object) -> bool:
    result = session.execute(update(Job).where(where).values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1  # type: ignore[attr-defined]


def _after_attempt(requested: str | None) -> JobStatus:
    """Where a job goes when its attempt ends without a result: a pending request takes effect, else the queue."""
    if requested == RequestedAction.cancel:
        return JobStatus.cancelled
    if requested == RequestedAction.pause:
        return JobStatus.paused
    return JobStatus.queued


def _announce(session: Session, job_id: str, status: str) -> None:
    """Queue the webhook event a final status sends (in the transaction that wrote it)."""
    if (event := STATUS_EVENTS.get(JobStatus(status))) is not None:
        enqueue_job_event(session, job_id, event)


def _stopped(status: JobStatus, t: float) -> dict[str, object]:
    """The columns of a job entering `status` from running: the attempt's hold on it, any request and the estimated
    finish are cleared; an ended job records when, one going back to the queue is due to be sent to the broker
    again."""
    when = {"finished_at": t} if status in TERMINAL else {"dispatched_at": None}
    return {"status": status, "requested_action": None, "worker_id": None, "lease_expires_at": None,
            "estimated_finish": None, **when}  # only a running job has an estimate


# -- the broker and the worker ------------------------------------------------------------------------------
def dispatch(session: Session, job_id: str) -> bool:
    """queued -> queued, noting when the broker was asked to run it (the sweep sends it again after a while)."""
    return _update(session, (Job.id == job_id) & (Job.status == JobStatus.queued), dispatched_at=now())


def claim(session: Session, job_id: str, worker_id: str, lease_s: float) -> int | None:
    """queued -> running under the next attempt number, leased for `lease_s`; returns that attempt, or None when the
    job is not queued (a duplicate or late delivery)."""
    t = now()
    attempt = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.running, attempt=Job.attempt + 1, worker_id=worker_id, heartbeat_at=t,
                lease_expires_at=t + lease_s, started_at=func.coalesce(Job.started_at, t), requested_action=None)
        .returning(Job.attempt)
    ).scalar()
    if attempt is not None:
        add_event(session, job_id, attempt, f"Attempt {attempt} started on worker {worker_id}")
    return attempt


def finish(session: Session, job_id: str, attempt: int, *, step: int, fine_tuned_model: str, message: str) -> None:
    """running -> succeeded, by the owning attempt, in the transaction that writes its adapter's row."""
    if not _update(session, owned(job_id, attempt), **_stopped(JobStatus.succeeded, now()), step=step,
                   fine_tuned_model=fine_tuned_model):
        raise Fenced(f"attempt {attempt} of job {job_id} no longer owns it; it cannot succeed")
    add_event(session, job_id, attempt, message)
    _announce(session, job_id, JobStatus.succeeded)


def fail(session: Session, job_id: str, attempt: int, *, code: str, message: str, param: str | None = None) -> None:
    """running -> failed, by the owning attempt, with the error the client sees."""
    if not _update(session, owned(job_id, attempt), **_stopped(JobStatus.failed, now()),
                   error={"code": code, "message": message, "param": param}):
        raise Fenced(f"attempt {attempt} of job {job_id} no longer owns it; its failure is not recorded")
    add_event(session, job_id, attempt, f"Job failed: {message}", level="error")
    _announce(session, job_id, JobStatus.failed)


def release(session: Session, job_id: str, attempt: int, step: int) -> JobStatus:
    """The owning attempt stopped at `step` without a result and lets go: a pending cancel or pause takes effect,
    otherwise the job is queued to continue from its checkpoint. Returns the job's new status."""
    row = session.execute(select(Job.requested_action).where(owned(job_id, attempt))).first()
    status = _after_attempt(row.requested_action if row else None)
    if row is None or not _update(session, owned(job_id, attempt) & _requested_is(row.requested_action),
                                  **_stopped(status, now())):
        raise Fenced(f"attempt {attempt} of job {job_id} no longer owns it; it has nothing to release")
    if status == JobStatus.cancelled:
        message = f"Job cancelled at step {step}"
    elif status == JobStatus.paused:
        message = f"Job paused at step {step}; resume continues from its checkpoint"
    else:
        message = f"Attempt {attempt} stopped at step {step}; the job is queued to continue from its checkpoint"
    add_event(session, job_id, attempt, message)
    _announce(session, job_id, status)
    return status


def reclaim(session: Session, job: Job, t: float) -> JobStatus | None:
    """The sweep takes back a job whose attempt lost its lease by `t` (`job` as the sweep read it): a pending cancel
    or pause takes effect; otherwise it is queued again, or failed once `max_attempts` attempts were lost. Returns
    the new status, or None when the row had changed since it was read."""
    status, level, lost_attempts = _after_attempt(job.requested_action), "info", job.lost_attempts + 1
    values: dict[str, object] = {}
    if status == JobStatus.cancelled:
        message = f"Job cancelled (the worker of attempt {job.attempt} had stopped)"
    elif status == JobStatus.paused:
        message = f"Job paused (the worker of attempt {job.attempt} had stopped)"
    elif lost_attempts < job.max_attempts:
        values = {"lost_attempts": lost_attempts}
        message, level = f"Worker of attempt {job.attempt} lost (no heartbeat); job requeued", "warn"
    else:
        status = JobStatus.failed
        values = {"lost_attempts": lost_attempts,
                  "error": {"code": "worker_lost", "param": None,
                            "message": f"the worker stopped heartbeating on {lost_attempts} attempts "
                                       f"(max_attempts={job.max_attempts}); last attempt {job.attempt}"}}
        message, level = "Job failed: its worker was lost too many times", "error"
    where = (Job.id == job.id) & (Job.attempt == job.attempt) & lost(t) & _requested_is(job.requested_action)
    if not _update(session, where, **_stopped(status, t), **values):
        return None
    add_event(session, job.id, job.attempt, message, level=level)
    _announce(session, job.id, status)
    return status


# -- client requests ---------------------------------------------------------------------------------------------
# A request's step from the state the job was read in: the event and the columns to write, None when there is
# nothing to change; a state the request does not apply to raises Conflict.
Step = tuple[str, dict[str, object]] | None


def _ask(session: Session, job: Job, decide: Callable[[Job], Step]) -> bool:
    """One conditional UPDATE from the state `job` was read in; when the row changed under it, `job` is refreshed and
    the request decided again. Returns whether the row moved."""
    while (step := decide(job)) is not None:
        message, values = step
        if _update(session, (Job.id == job.id) & (Job.status == job.status) & _requested_is(job.requested_action),
                   **values):
            add_event(session, job.id, job.attempt, message)
            session.refresh(job)
            _announce(session, job.id, job.status)
            return True
        session.refresh(job)  # the row changed under us: decide again on the fresh one
    return False


def _cancel_step(job: Job) -> Step:
    if job.status == JobStatus.cancelled or job.requested_action == RequestedAction.cancel:
        return None
    if job.status in (JobStatus.queued, JobStatus.paused):
        return "Job cancelled", {"status": JobStatus.cancelled, "finished_at": now()}
    if job.status == JobStatus.running:
        return ("Cancellation requested; the worker stops at the next step",
                {"requested_action": RequestedAction.cancel})
    raise Conflict(f"job {job.id} is {job.status} and cannot be cancelled", code="job_not_cancellable")


def _pause_step(job: Job) -> Step:
    if job.status == JobStatus.paused or job.requested_action == RequestedAction.pause:
        return None
    if job.status == JobStatus.queued:
        return "Job paused before it started", {"status": JobStatus.paused}
    if job.status == JobStatus.running and job.requested_action is None:
        return ("Pause requested; the worker checkpoints and releases the job",
                {"requested_action": RequestedAction.pause})
    raise Conflict(f"job {job.id} is {job.status} and cannot be paused", code="job_not_pausable")


def _resume_step(job: Job) -> Step:
    if job.status == JobStatus.queued or (job.status == JobStatus.running and job.requested_action is None):
        return None
    if job.status == JobStatus.paused:
        return ("Job resumed; it continues from its last checkpoint",
                {"status": JobStatus.queued, "dispatched_at": None})
    if job.status == JobStatus.running and job.requested_action == RequestedAction.pause:
        return "Pause withdrawn; training continues", {"requested_action": None}
    raise Conflict(f"job {job.id} is {job.status} and cannot be resumed", code="job_not_resumable")


def cancel(session: Session, job: Job) -> None:
    """queued or paused -> cancelled; running -> running+cancel (the worker stops at its next step)."""
    _ask(session, job, _cancel_step)


def pause(session: Session, job: Job) -> None:
    """queued -> paused; running -> running+pause (the worker checkpoints, then releases the job)."""
    _ask(session, job, _pause_step)


def resume(session: Session, job: Job) -> bool:
    """paused -> queued; running+pause -> running (the request is withdrawn). Returns True when the job went back
    to the queue and must be dispatched after the commit."""
    return _ask(session, job, _resume_step) and job.status == JobStatus.queued
