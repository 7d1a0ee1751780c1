"""Fine-tuning jobs: create (commit, then send the job id to the broker), list, retrieve, cancel, pause, resume."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import CeleryDep, CurrentTenant, SessionDep, SessionFactoryDep, SettingsDep
from api.owned import get_owned_job
from api.presenters import job_public
from api.schemas.hyperparameters import DrLoraHyperparameters, TrainingHyperparameters
from api.schemas.jobs import JobCreate, JobEstimate, JobPublic, JobsPublic, SupervisedMethod
from drlora_core.config import Method
from service import jobstate, preflight, quota
from service.errors import InvalidRequest, Unprocessable
from service.events import add_event
from service.ids import new_id, now
from service.preflight import Preflight
from service.runconfig import build_run_config, hyperparameters_view
from service.settings import Settings
from service.statuses import JobStatus
from service.sweep import dispatch
from service.tables import File, Job, RegisteredModel, Tenant

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def _request_hash(body: JobCreate) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _replay(session: Session, tenant: Tenant, key: str, request_hash: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))
    if job is not None and job.request_hash != request_hash:
        raise Unprocessable(f"Idempotency-Key {key!r} was used with a different request body",
                            param="Idempotency-Key", code="idempotency_key_reused")
    return job


def _check_file(session: Session, tenant: Tenant, file_id: str, param: str) -> File:
    row = session.get(File, file_id)
    if row is None or row.tenant_id != tenant.id:
        raise InvalidRequest(f"no file with id {file_id!r}; upload it with POST /v1/files", param=param,
                             code="file_not_found")
    if row.purpose != "fine-tune":
        raise InvalidRequest(f"file {file_id!r} has purpose {row.purpose!r}, not 'fine-tune'", param=param,
                             code="invalid_file_purpose")
    return row


def _requested_method(body: JobCreate) -> tuple[Method, TrainingHyperparameters]:
    """The method to train and its hyperparameters; OpenAI's `supervised` and legacy top-level `hyperparameters`
    are both trained as `lora`."""
    if body.hyperparameters is not None:
        if body.method is not None:
            raise InvalidRequest("give hyperparameters either at the top level (OpenAI's legacy form, trained as "
                                 "lora) or under method.<type>.hyperparameters, not both", param="hyperparameters",
                                 code="invalid_value")
        return "lora", body.hyperparameters
    if body.method is None:
        return "dr_lora", DrLoraHyperparameters()
    if isinstance(body.method, SupervisedMethod):
        return "lora", body.method.supervised.hyperparameters
    return body.method.type, getattr(body.method, body.method.type).hyperparameters


def _new_job(session: Session, tenant: Tenant, body: JobCreate, settings: Settings) -> tuple[Job, Preflight]:
    model = session.get(RegisteredModel, body.model)
    if model is None:
        raise InvalidRequest(f"model {body.model!r} is not available; GET /v1/models lists the base models",
                             param="model", code="model_not_found")
    training_file = _check_file(session, tenant, body.training_file, "training_file")
    if body.validation_file:
        _check_file(session, tenant, body.validation_file, "validation_file")
    method, hyperparameters = _requested_method(body)
    requested = hyperparameters.model_dump()
    if requested["checkpoint_every"] is None:
        requested["checkpoint_every"] = settings.default_checkpoint_every
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    config = build_run_config(method, requested, seed, Path(model.path), training_file.lines)
    plan = preflight.check(session, settings, Path(model.path), config, requested.get("gradient_checkpointing"))
    config = plan.config
    integrations = [i.model_dump(mode="json") for i in body.integrations] if body.integrations is not None else None
    return Job(
        id=new_id("ftjob"), tenant_id=tenant.id, model=body.model, training_file=body.training_file,
        validation_file=body.validation_file, method=method,
        hyperparameters=hyperparameters_view(config, requested, Path(model.path)), run_config=config.to_dict(),
        seed=seed, suffix=body.suffix, integrations=integrations, result_files=[],
        meta=body.metadata, status=JobStatus.queued, step=0, created_at=now(), attempt=0, lost_attempts=0,
        max_attempts=settings.max_attempts, estimate=plan.estimate,
    ), plan


@router.post("", response_model=JobPublic | JobEstimate)
def create_job(
    body: JobCreate, session: SessionDep, factory: SessionFactoryDep, tenant: CurrentTenant,
    settings: SettingsDep, celery: CeleryDep, idempotency_key: IdempotencyKey = None,
) -> JobPublic | JobEstimate:
    if body.dry_run:  # validated and estimated like a create; nothing is written or queued
        job, plan = _new_job(session, tenant, body, settings)
        return JobEstimate(**plan.dry_run(job.hyperparameters))
    request_hash = _request_hash(body)
    if idempotency_key and (existing := _replay(session, tenant, idempotency_key, request_hash)):
        return job_public(existing, tenant.name)  # a replay is answered even when the quota is full
    job, plan = _new_job(session, tenant, body, settings)
    plan.require_fit()
    if settings.max_active_jobs_per_tenant:
        quota.lock_tenant(session, tenant.id)  # held until the commit: parallel creates of this tenant queue here
        if idempotency_key and (existing := _replay(session, tenant, idempotency_key, request_hash)):
            # a parallel request with this key committed while we waited
            public = job_public(existing, tenant.name)
            session.rollback()
            return public
        quota.check_active_jobs(session, tenant.id, settings.max_active_jobs_per_tenant)
    job.idempotency_key, job.request_hash = idempotency_key, request_hash
    session.add(job)
    add_event(session, job.id, 0, f"Created fine-tuning job {job.id} ({job.method} on {job.model})")
    if plan.note:
        add_event(session, job.id, 0, plan.note, level="warn")
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        session.rollback()
        existing = _replay(session, tenant, idempotency_key or "", request_hash)
        if existing is None:
            raise
        return job_public(existing, tenant.name)
    dispatch(factory, celery, job.id)
    session.refresh(job)
    return job_public(job, tenant.name)


def _metadata_filters(request: Request) -> dict[str, str]:
    return {k[len("metadata["):-1]: v for k, v in request.query_params.items()
            if k.startswith("metadata[") and k.endswith("]")}


@router.get("", response_model=JobsPublic)
def list_jobs(
    request: Request, session: SessionDep, tenant: CurrentTenant,
    after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> JobsPublic:
    query = select(Job).where(Job.tenant_id == tenant.id)
    for key, value in _metadata_filters(request).items():
        query = query.where(Job.meta[key].as_string() == value)
    if after:
        cursor = get_owned_job(session, tenant, after, param="after")
        query = query.where((Job.created_at < cursor.created_at)
                            | ((Job.created_at == cursor.created_at) & (Job.id < cursor.id)))
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    return JobsPublic(data=[job_public(j, tenant.name) for j in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{fine_tuning_job_id}", response_model=JobPublic)
def retrieve_job(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> JobPublic:
    return job_public(get_owned_job(session, tenant, fine_tuning_job_id), tenant.name)


@router.post("/{fine_tuning_job_id}/cancel", response_model=JobPublic)
def cancel_job(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> JobPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    jobstate.cancel(session, job)
    session.commit()
    return job_public(job, tenant.name)


@router.post("/{fine_tuning_job_id}/pause", response_model=JobPublic)
def pause_job(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> JobPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    jobstate.pause(session, job)
    session.commit()
    return job_public(job, tenant.name)


@router.post("/{fine_tuning_job_id}/resume", response_model=JobPublic)
def resume_job(
    session: SessionDep, factory: SessionFactoryDep, celery: CeleryDep, tenant: CurrentTenant,
    settings: SettingsDep, fine_tuning_job_id: str,
) -> JobPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    if job.status == JobStatus.paused and settings.max_active_jobs_per_tenant:  # it becomes active again: same quota
        quota.lock_tenant(session, tenant.id)
        session.refresh(job)
        if job.status == JobStatus.paused:
            quota.check_active_jobs(session, tenant.id, settings.max_active_jobs_per_tenant)
    requeued = jobstate.resume(session, job)
    session.commit()
    if requeued:
        dispatch(factory, celery, job.id)
        session.refresh(job)
    return job_public(job, tenant.name)
