"""Base models the operator registered, and the tenant's own fine-tuned adapters and their checkpoints.

A fine-tuned model and each of its checkpoints (`<fine-tuned model id>:ckpt-step-N`, as OpenAI names them) answer
`GET /v1/models/{id}`; the list shows base models and fine-tuned ones. `owned_by` of the tenant's models is the
tenant's name, the job object's `organization_id`.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import CurrentTenant, SessionDep
from api.presenters import CHECKPOINT_MODEL, parse_int
from api.schemas.models import ModelPublic, ModelsPublic
from service.errors import NotFound
from service.jobstate import fine_tuned_model_name
from service.tables import Checkpoint, Job, RegisteredModel, Tenant

router = APIRouter(prefix="/v1/models", tags=["models"])


def _fine_tuned(job: Job, tenant: Tenant) -> ModelPublic:
    assert job.fine_tuned_model is not None
    return ModelPublic(id=job.fine_tuned_model, created=int(job.finished_at or job.created_at), owned_by=tenant.name)


def _checkpoint_model(session: Session, tenant: Tenant, model: str) -> ModelPublic | None:
    """The checkpoint `model` names, when it is one of this tenant's (running jobs' checkpoints included)."""
    name, marker, step_text = model.rpartition(CHECKPOINT_MODEL)
    step = parse_int(step_text)
    if not marker or step is None:
        return None
    job = session.get(Job, name.rpartition(":")[2])  # a fine-tuned model's id ends with its job's id
    if job is None or job.tenant_id != tenant.id or fine_tuned_model_name(job) != name:
        return None
    ckpt = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step))
    return None if ckpt is None else ModelPublic(id=model, created=int(ckpt.created_at), owned_by=tenant.name)


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep, tenant: CurrentTenant) -> ModelsPublic:
    base = session.scalars(select(RegisteredModel).order_by(RegisteredModel.id)).all()
    tuned = session.scalars(
        select(Job).where(Job.tenant_id == tenant.id, Job.fine_tuned_model.is_not(None)).order_by(Job.created_at)
    ).all()
    data = [ModelPublic(id=m.id, created=int(m.created_at), owned_by=m.owned_by) for m in base]
    return ModelsPublic(data=data + [_fine_tuned(j, tenant) for j in tuned])


@router.get("/{model:path}", response_model=ModelPublic)
def retrieve_model(session: SessionDep, tenant: CurrentTenant, model: str) -> ModelPublic:
    base = session.get(RegisteredModel, model)
    if base is not None:
        return ModelPublic(id=base.id, created=int(base.created_at), owned_by=base.owned_by)
    job = session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.fine_tuned_model == model))
    if job is not None:
        return _fine_tuned(job, tenant)
    checkpoint = _checkpoint_model(session, tenant, model)
    if checkpoint is None:
        raise NotFound(f"no model with id {model!r}", param="model", code="model_not_found")
    return checkpoint
