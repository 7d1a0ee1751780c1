"""Which stored adapter zip a request means: the job's final adapter, or a checkpoint's (by id or step number)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import Conflict, NotFound
from service.statuses import JobStatus
from service.tables import Artifact, Checkpoint, Job

INT_MAX = 2**31 - 1


def _step(text: str) -> int | None:
    """A non-negative integer in ASCII digits within INTEGER range, else None (`"²".isdigit()` is true)."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= INT_MAX else None


def find_artifact(session: Session, job: Job, checkpoint: str | None) -> Artifact:
    """The adapter artifact of `job` (None: the final one, which exists once the job succeeded)."""
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


def source_of(artifact: Artifact) -> str:
    """The name an export records for the zip it is built from: `final` or `step-N`."""
    return "final" if artifact.kind == "adapter" else f"step-{artifact.step}"


def artifact_of_source(session: Session, job_id: str, source: str) -> Artifact | None:
    """The artifact an export's `source` names (None if it is gone)."""
    query = select(Artifact).where(Artifact.job_id == job_id)
    if source == "final":
        query = query.where(Artifact.kind == "adapter")
    else:
        query = query.where(Artifact.kind == "checkpoint", Artifact.step == int(source.removeprefix("step-")))
    return session.scalar(query.order_by(Artifact.step.desc()).limit(1))
