"""Routing profiles: create (commit, then send the profile id to the broker) and retrieve."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from api.deps import CeleryDep, CurrentTenant, SessionDep, SessionFactoryDep
from api.schemas.jobs import JobError
from api.schemas.profiles import ProfileCreate, ProfilePublic
from service import profiles
from service.errors import NotFound
from service.statuses import JobStatus
from service.tables import Profile, Tenant

router = APIRouter(prefix="/v1/fine_tuning/profiles", tags=["dr-lora"])

RESOLVED = ("max_seq_len", "batch_size", "r_init", "r_target", "r_max")


def profile_public(row: Profile) -> ProfilePublic:
    result = row.result or {}
    return ProfilePublic(
        id=row.id, created_at=int(row.created_at), finished_at=None if row.finished_at is None else int(row.finished_at),
        status=JobStatus(row.status), error=JobError(**row.error) if row.error else None, model=row.model,
        training_file=row.training_file, max_examples=row.max_examples, hyperparameters=row.hyperparameters,
        **result,
    )


def get_owned_profile(session: Session, tenant: Tenant, profile_id: str) -> Profile:
    row = session.get(Profile, profile_id)
    if row is None or row.tenant_id != tenant.id:
        raise NotFound(f"no routing profile with id {profile_id!r}", param="profile_id", code="profile_not_found")
    return row


@router.post("", response_model=ProfilePublic)
def create_profile(body: ProfileCreate, session: SessionDep, factory: SessionFactoryDep, tenant: CurrentTenant,
                   celery: CeleryDep) -> ProfilePublic:
    """Profile the base model's routing on the training file in a worker (no training); poll the profile until it
    has `succeeded`."""
    hyperparameters = body.model_dump(include=set(RESOLVED))
    row = profiles.new_profile(session, tenant, body.model, body.training_file, body.max_examples, hyperparameters,
                               body.seed)
    session.add(row)
    session.commit()
    profiles.send(factory, celery, row.id)
    session.refresh(row)
    return profile_public(row)


@router.get("/{profile_id}", response_model=ProfilePublic)
def retrieve_profile(session: SessionDep, tenant: CurrentTenant, profile_id: str) -> ProfilePublic:
    return profile_public(get_owned_profile(session, tenant, profile_id))
