"""Which stored adapter zip a request means: a job's final adapter, or a checkpoint's (by id or step)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import Conflict, NotFound
from service.statuses import JobStatus
from service.tables import Artifact, Checkpoint, Job


def find_adapter(session: Session, job: Job, checkpoint: str | None) -> Artifact:
    """The artifact row; `Conflict` (adapter_not_ready) before a job without `checkpoint` has succeeded,
    `NotFound` (param `checkpoint`) for a checkpoint the job does not have."""
    query = select(Artifact).where(Artifact.job_id == job.id)
    if checkpoint is None:
        if job.status != JobStatus.succeeded:
            raise Conflict(f"job {job.id} is {job.status}; its adapter exists once it has succeeded "
                           "(use ?checkpoint= for an intermediate one)", code="adapter_not_ready")
        query = query.where(Artifact.kind == "adapter")
    else:
        ckpt = session.get(Checkpoint, checkpoint)
        if ckpt is None and (step := _step(checkpoint)) is not None:
            ckpt = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step))
        if ckpt is None or ckpt.job_id != job.id:
            raise NotFound(f"no checkpoint {checkpoint!r} in job {job.id}", param="checkpoint",
                           code="checkpoint_not_found")
        query = query.where(Artifact.kind == "checkpoint", Artifact.checkpoint_id == ckpt.id)
    artifact = session.scalar(query.order_by(Artifact.step.desc()).limit(1))
    if artifact is None:
        raise NotFound(f"no adapter stored for job {job.id}" + (f" at checkpoint {checkpoint!r}" if checkpoint
                       else ""), param="checkpoint" if checkpoint else None, code="adapter_not_found")
    return artifact


def _step(text: str) -> int | None:
    """A checkpoint given as its step number (plain decimal digits, within a 32-bit integer)."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= 2**31 - 1 else None
