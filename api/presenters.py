"""Rows to public bodies: the one place that decides which columns a client sees (never attempt, lease, paths)."""

from __future__ import annotations

from api.schemas.jobs import CheckpointPublic, EventPublic, Integration, JobError, JobProgress, JobPublic
from service.jobstate import fine_tuned_model_name
from service.statuses import JobStatus
from service.tables import Checkpoint, Job, JobEvent


def _int(t: float | None) -> int | None:
    return None if t is None else int(t)


def job_public(job: Job, organization: str) -> JobPublic:
    """`organization` is the owning tenant's name (OpenAI's `organization_id`; the tenant id stays internal)."""
    return JobPublic(
        id=job.id, created_at=int(job.created_at), finished_at=_int(job.finished_at), model=job.model,
        fine_tuned_model=job.fine_tuned_model, status=JobStatus(job.status),
        training_file=job.training_file, validation_file=job.validation_file, hyperparameters=job.hyperparameters,
        method={"type": job.method, job.method: {"hyperparameters": job.hyperparameters}}, seed=job.seed,
        trained_tokens=job.trained_tokens, error=JobError(**job.error) if job.error else None,
        result_files=list(job.result_files or []), estimated_finish=_int(job.estimated_finish), metadata=job.meta,
        organization_id=organization,
        integrations=None if job.integrations is None else [Integration(**i) for i in job.integrations],
        progress=JobProgress(step=job.step, total_steps=job.total_steps), estimate=job.estimate,
        pending_action=job.requested_action if job.status == JobStatus.running else None,
    )


# Steps and event ids are INTEGER columns: a larger number in a query would be a database error, not a miss.
INT_MAX = 2**31 - 1


def parse_int(text: str) -> int | None:
    """A non-negative integer written in ASCII digits within INTEGER range, else None (`"²".isdigit()` is true)."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= INT_MAX else None


def parse_event_id(value: str) -> int | None:
    return parse_int(value.removeprefix("ftevent-"))


def event_public(event: JobEvent, number: int) -> EventPublic:
    """`number`: the event's place in its job's own sequence (1-based), which its public id shows."""
    return EventPublic(id=f"ftevent-{number}", created_at=int(event.created_at), level=event.level,
                       message=event.message, type=event.type, data=event.data)  # type: ignore[arg-type]


CHECKPOINT_MODEL = ":ckpt-step-"


def checkpoint_model_name(job: Job, step: int) -> str:
    """The model id of a checkpoint, as OpenAI names them: the fine-tuned model's id, then `:ckpt-step-N`."""
    return f"{fine_tuned_model_name(job)}{CHECKPOINT_MODEL}{step}"


def checkpoint_public(job: Job, ckpt: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic(
        id=ckpt.id, created_at=int(ckpt.created_at), fine_tuning_job_id=job.id, step_number=ckpt.step,
        fine_tuned_model_checkpoint=checkpoint_model_name(job, ckpt.step),
        metrics=dict(ckpt.metrics or {}),
    )
