"""Generations: a few completions by a job's adapter, asked of a worker (commit, then send the id) and polled."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import CeleryDep, CurrentTenant, SessionDep, SessionFactoryDep
from api.owned import get_owned_job
from api.schemas.generations import CompletionPublic, GenerationCreate, GenerationPublic
from api.schemas.jobs import JobError
from service import generations
from service.errors import InvalidRequest
from service.statuses import JobStatus
from service.tables import Generation

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["dr-lora"])


def generation_public(row: Generation) -> GenerationPublic:
    completions = None if row.completions is None else [
        CompletionPublic(index=i, prompt=p, text=t) for i, (p, t) in enumerate(zip(row.prompts, row.completions,
                                                                                   strict=True))]
    return GenerationPublic(
        id=row.id, fine_tuning_job_id=row.job_id, created_at=int(row.created_at),
        finished_at=None if row.finished_at is None else int(row.finished_at), status=JobStatus(row.status),
        error=JobError(**row.error) if row.error else None, checkpoint=row.checkpoint, step=row.step, chat=row.chat,
        max_new_tokens=row.max_new_tokens, temperature=row.temperature, top_p=row.top_p, seed=row.seed,
        prompts=list(row.prompts), completions=completions)


@router.post("/{fine_tuning_job_id}/generations", response_model=GenerationPublic,
             status_code=status.HTTP_201_CREATED)
def create_generation(session: SessionDep, factory: SessionFactoryDep, tenant: CurrentTenant, celery: CeleryDep,
                      fine_tuning_job_id: str, body: GenerationCreate | None = None) -> GenerationPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)  # first: another tenant's job is 404 whatever the body
    if body is None:
        raise InvalidRequest("a JSON body with `prompts` (1 to 8 strings) is required", param="prompts")
    request = generations.GenerationRequest(body.prompts, body.checkpoint, body.max_new_tokens, body.temperature,
                                            body.top_p, body.seed)
    row = generations.new_generation(session, tenant, job, request)
    session.add(row)
    session.commit()
    generations.send(factory, celery, row.id)
    session.refresh(row)
    return generation_public(row)


@router.get("/{fine_tuning_job_id}/generations/{generation_id}", response_model=GenerationPublic)
def retrieve_generation(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str,
                        generation_id: str) -> GenerationPublic:
    get_owned_job(session, tenant, fine_tuning_job_id)
    return generation_public(generations.get_owned(session, tenant, fine_tuning_job_id, generation_id))
