"""Exports of a job's adapter with other `ExportOptions`: request one (create or get), and the state changes of its
row, each one conditional UPDATE.

    queued -> running        `claim`, by the worker that got the message (attempt + 1); a duplicate claims nothing
    running -> running       `report`: progress and stage, which also renew the heartbeat
    running -> succeeded     `finish`, by the worker that holds it, with the published zip's path, sha256 and size
    queued | running -> failed   `fail`: the worker's error, or the sweep's after MAX_ATTEMPTS lost workers
    running -> queued        the sweep, when the heartbeat is older than the lease (the worker was lost)
    failed -> queued         `request` again with the same options: a failed export is retried, under the same id

An export is commit-then-send like a job; the sweep re-sends a queued one the broker lost. The same (job, source,
options) is one row (unique), so asking twice, or from two requests at once, answers the same export.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from drlora_core.export_options import ExportOptions
from service import doorbell
from service.artifacts import find_artifact, source_of
from service.broker import send_export
from service.db import transaction
from service.errors import InvalidRequest, NotFound
from service.ids import new_id, now
from service.settings import Settings
from service.statuses import JobStatus
from service.tables import Export, Job, RegisteredModel, Tenant

log = logging.getLogger("drlora.exports")

MAX_ATTEMPTS = 3  # lost workers before an export fails (an error in the export itself fails it at once)
FIELDS = ("layout", "dtype", "base_model_name_or_path", "max_rank")


def parse_options(layout: str | None = None, dtype: str | None = None, base_model_name_or_path: str | None = None,
                  max_rank: int | None = None) -> ExportOptions:
    """`ExportOptions` from request values (None: the default); its refusal becomes a 400 naming the parameter."""
    given: dict[str, Any] = {"layout": layout, "dtype": dtype, "base_model_name_or_path": base_model_name_or_path,
                             "max_rank": max_rank}
    try:
        return ExportOptions(**{k: v for k, v in given.items() if v is not None})
    except (TypeError, ValueError) as e:
        message = str(e)
        param = next((f for f in FIELDS if message.startswith(f)), None)
        if param is None:  # the merged-layout conflict names what to drop
            param = "max_rank" if max_rank is not None else "base_model_name_or_path"
        raise InvalidRequest(message, param=param, code="invalid_export_options") from None


def request(session: Session, job: Job, options: ExportOptions, checkpoint: str | None) -> tuple[Export, bool]:
    """The export of `job`'s adapter (or checkpoint) with `options`: (row, created). An existing row is returned as
    it is, except a failed one, which is queued again. The caller commits and then `send`s a queued row."""
    artifact = find_artifact(session, job, checkpoint)
    if options.layout == "merged":
        _require_local_base(session, job)
    source = source_of(artifact)
    row = _find(session, job.id, source, options)
    if row is None:
        row = Export(id=new_id("export"), job_id=job.id, source=source,
                     checkpoint_step=None if source == "final" else artifact.step, options=options.to_dict(),
                     options_key=options.key(), status=JobStatus.queued, progress=0.0, attempt=0, created_at=now())
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # another request created it a moment ago
            found = _find(session, job.id, source, options)
            assert found is not None
            return found, False
        return row, True
    if row.status == JobStatus.failed:
        _update(session, (Export.id == row.id) & (Export.status == JobStatus.failed), status=JobStatus.queued,
                error=None, progress=0.0, stage=None, attempt=0, worker_id=None, heartbeat_at=None,
                started_at=None, finished_at=None, dispatched_at=None)
        session.refresh(row)
    return row, False


def _find(session: Session, job_id: str, source: str, options: ExportOptions) -> Export | None:
    return session.scalar(select(Export).where(Export.job_id == job_id, Export.source == source,
                                               Export.options_key == options.key()))


def _require_local_base(session: Session, job: Job) -> None:
    model = session.get(RegisteredModel, job.model)
    if model is None or not (Path(model.path) / "config.json").is_file():
        raise InvalidRequest(f"a merged export folds the adapter into the base model's weights, and base model "
                             f"{job.model!r} is not a local model directory on this deployment; choose layout "
                             "fused or per_expert, or ask the operator to register the model's local directory",
                             param="layout", code="base_model_not_local")


def list_for(session: Session, job: Job) -> list[Export]:
    """The job's exports, newest first."""
    return list(session.scalars(select(Export).where(Export.job_id == job.id)
                                .order_by(Export.created_at.desc(), Export.id.desc())).all())


def get_owned(session: Session, tenant: Tenant, job_id: str, export_id: str) -> Export:
    """404 for an unknown export, another job's, and (through the job) another tenant's."""
    row = session.get(Export, export_id)
    job = session.get(Job, job_id)
    if row is None or job is None or row.job_id != job.id or job.tenant_id != tenant.id:
        raise NotFound(f"no export {export_id!r} of fine-tuning job {job_id!r}", param="export_id",
                       code="export_not_found")
    return row


def options_of(row: Export) -> ExportOptions:
    return ExportOptions(**row.options)


def _update(session: Session, where: ColumnElement[bool], **values: object) -> bool:
    result = session.execute(update(Export).where(where).values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1  # type: ignore[attr-defined]


def _held(export_id: str, worker_id: str, attempt: int) -> ColumnElement[bool]:
    return ((Export.id == export_id) & (Export.status == JobStatus.running) & (Export.worker_id == worker_id)
            & (Export.attempt == attempt))


def claim(session: Session, export_id: str, worker_id: str) -> int | None:
    """queued -> running for this worker; returns the attempt number it now holds, or None."""
    row = session.get(Export, export_id)
    if row is None:
        return None
    attempt = row.attempt + 1
    t = now()
    won = _update(session, (Export.id == export_id) & (Export.status == JobStatus.queued)
                  & (Export.attempt == row.attempt), status=JobStatus.running, worker_id=worker_id, attempt=attempt,
                  started_at=t, heartbeat_at=t, progress=0.0, stage="starting")
    return attempt if won else None


def report(session: Session, export_id: str, worker_id: str, attempt: int, stage: str | None = None,
           progress: float | None = None) -> bool:
    """Progress (clamped to [0, 1]) and stage of a held export, and its heartbeat; False when no longer held."""
    values: dict[str, object] = {"heartbeat_at": now()}
    if stage is not None:
        values["stage"] = stage[:200]
    if progress is not None:
        values["progress"] = min(1.0, max(0.0, progress))
    return _update(session, _held(export_id, worker_id, attempt), **values)


def finish(session: Session, export_id: str, worker_id: str, attempt: int, path: str, sha256: str,
           size: int) -> bool:
    return _update(session, _held(export_id, worker_id, attempt), status=JobStatus.succeeded, path=path,
                   sha256=sha256, bytes=size, progress=1.0, stage="done", finished_at=now())


def fail(session: Session, export_id: str, worker_id: str | None, attempt: int | None, code: str, message: str,
         param: str | None = None) -> bool:
    """Fails the export held by (`worker_id`, `attempt`); with None, the sweep's, for a queued or running one."""
    if worker_id is not None and attempt is not None:
        where = _held(export_id, worker_id, attempt)
    else:
        where = (Export.id == export_id) & Export.status.in_((JobStatus.queued, JobStatus.running))
    return _update(session, where, status=JobStatus.failed, finished_at=now(),
                   error={"code": code, "message": message, "param": param})


def send(factory: sessionmaker[Session], celery: Celery, export_id: str) -> bool:
    """Ring the export's doorbell; a failed send leaves it queued for the sweep."""
    return doorbell.ring(factory, Export, export_id, lambda row_id: send_export(celery, row_id))


def reclaim_lost(factory: sessionmaker[Session], stale_s: float) -> list[str]:
    """Running exports whose heartbeat is older than `stale_s` lost their worker: queued again, or failed after
    MAX_ATTEMPTS. Returns the ids requeued."""
    t = now()
    requeued = []
    with transaction(factory) as session:
        lost = session.scalars(select(Export).where((Export.status == JobStatus.running)
                                                    & (Export.heartbeat_at < t - stale_s))).all()
        for row in lost:
            held = (Export.id == row.id) & (Export.status == JobStatus.running) & (Export.attempt == row.attempt)
            if row.attempt >= MAX_ATTEMPTS:
                _update(session, held, status=JobStatus.failed, finished_at=t, error={
                    "code": "worker_lost", "param": None,
                    "message": f"the export lost its worker {row.attempt} times; request it again to retry"})
            elif _update(session, held, status=JobStatus.queued, worker_id=None, heartbeat_at=None,
                         dispatched_at=None, stage="requeued: its worker was lost"):
                requeued.append(row.id)
    return requeued


def sweep(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    """Requeue exports whose worker was lost, re-send queued ones the broker lost; returns the ids it sent."""
    reclaim_lost(factory, settings.lease_s)
    return doorbell.ring_due(factory, Export, settings.redispatch_after_s,
                             lambda row_id: send_export(celery, row_id))
