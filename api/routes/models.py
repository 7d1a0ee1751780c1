"""Base models the operator registered, and the tenant's own fine-tuned adapters."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import CurrentTenant, SessionDep
from api.schemas.models import ModelPublic, ModelsPublic
from service.errors import NotFound
from service.tables import Job, RegisteredModel

router = APIRouter(prefix="/v1/models", tags=["models"])


def _fine_tuned(job: Job, tenant_name: str) -> ModelPublic:
    assert job.fine_tuned_model is not None
    return ModelPublic(id=job.fine_tuned_model, created=int(job.finished_at or job.created_at), owned_by=tenant_name)


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep, tenant: CurrentTenant) -> ModelsPublic:
    base = session.scalars(select(RegisteredModel).order_by(RegisteredModel.id)).all()
    tuned = session.scalars(
        select(Job).where(Job.tenant_id == tenant.id, Job.fine_tuned_model.is_not(None)).order_by(Job.created_at)
    ).all()
    data = [ModelPublic(id=m.id, created=int(m.created_at), owned_by=m.owned_by) for m in base]
    return ModelsPublic(data=data + [_fine_tuned(j, tenant.name) for j in tuned])


@router.get("/{model:path}", response_model=ModelPublic)
def retrieve_model(session: SessionDep, tenant: CurrentTenant, model: str) -> ModelPublic:
    base = session.get(RegisteredModel, model)
    if base is not None:
        return ModelPublic(id=base.id, created=int(base.created_at), owned_by=base.owned_by)
    job = session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.fine_tuned_model == model))
    if job is None:
        raise NotFound(f"no model with id {model!r}", param="model", code="model_not_found")
    return _fine_tuned(job, tenant.name)
