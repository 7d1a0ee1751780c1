"""The DR-LoRA resources of a job: rank map (now or `?step=`), expert signals, metric series, adapter zip."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.deps import CurrentTenant, SessionDep, SettingsDep
from api.downloads import verified_download
from api.owned import get_owned_job
from api.presenters import INT_MAX
from api.schemas.drlora import ExpertsPublic, GrowthEventPublic, MetricPublic, MetricsPublic, RanksPublic
from service.artifacts import find_adapter
from service.tables import ExpertStat, GrowthEvent, Job, Metric, RankSnapshot

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["dr-lora"])


def _rank_bounds(job: Job) -> tuple[int, int, int]:
    """The ranks the engine runs with (stored at create; for `lora`, r_max is the reserved aligned rank)."""
    if job.run_config is None:  # a job created before run configurations were stored
        hp = job.hyperparameters
        r_target = int(hp["r_target"])
        return int(hp.get("r_init", r_target)), r_target, int(hp.get("r_max", r_target))
    lora = job.run_config["lora"]
    return int(lora["r_init"]), int(lora["r_target"]), int(lora["r_max"])


@router.get("/{fine_tuning_job_id}/ranks", response_model=RanksPublic)
def get_ranks(
    session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str,
    step: Annotated[int | None, Query(ge=0, le=INT_MAX, description="the rank map as it stood after this step")] = None,
) -> RanksPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    snapshots = select(RankSnapshot).where(RankSnapshot.job_id == job.id)
    growth = select(GrowthEvent).where(GrowthEvent.job_id == job.id)
    if step is not None:
        snapshots = snapshots.where(RankSnapshot.step <= step)
        growth = growth.where(GrowthEvent.step <= step)
    snapshot = session.scalar(snapshots.order_by(RankSnapshot.step.desc()).limit(1))
    events = session.scalars(growth.order_by(GrowthEvent.step, GrowthEvent.layer, GrowthEvent.expert)).all()
    r_init, r_target, r_max = _rank_bounds(job)
    return RanksPublic(
        method=job.method, r_init=r_init, r_target=r_target, r_max=r_max,
        step=snapshot.step if snapshot else None, ranks=snapshot.ranks if snapshot else [],
        events=[GrowthEventPublic(step=e.step, layer=e.layer, expert=e.expert, old_rank=e.old_rank,
                                  new_rank=e.new_rank, saliency=e.saliency, frequency=e.frequency,
                                  importance=e.importance) for e in events],
    )


@router.get("/{fine_tuning_job_id}/experts", response_model=ExpertsPublic)
def get_experts(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> ExpertsPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    stat = session.scalar(
        select(ExpertStat).where(ExpertStat.job_id == job.id).order_by(ExpertStat.step.desc()).limit(1)
    )
    if stat is None:
        return ExpertsPublic(step=None, frequency=[], importance=[], saliency=[], ranks=[])
    return ExpertsPublic(step=stat.step, frequency=stat.frequency, importance=stat.importance,
                         saliency=stat.saliency, ranks=stat.ranks)


@router.get("/{fine_tuning_job_id}/metrics", response_model=MetricsPublic)
def get_metrics(
    session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str,
    after: Annotated[int | None, Query(ge=0, le=INT_MAX, description="only steps after this one")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> MetricsPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    query = select(Metric).where(Metric.job_id == job.id)
    if after is not None:
        query = query.where(Metric.step > after)
    rows = session.scalars(query.order_by(Metric.step).limit(limit + 1)).all()
    data = [MetricPublic(step=m.step, train_loss=m.train_loss, valid_loss=m.valid_loss,
                         learning_rate=m.learning_rate, tokens_per_second=m.tokens_per_second,
                         grad_norm=m.grad_norm, trained_tokens=m.trained_tokens) for m in rows[:limit]]
    return MetricsPublic(data=data, has_more=len(rows) > limit)


@router.get("/{fine_tuning_job_id}/adapter", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}},
                             "description": "PEFT adapter zip; `ETag` and `Digest` carry its sha256"}})
def download_adapter(
    session: SessionDep, tenant: CurrentTenant, settings: SettingsDep, fine_tuning_job_id: str,
    checkpoint: Annotated[str | None, Query(description="checkpoint id or step number", max_length=64)] = None,
) -> FileResponse:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    artifact = find_adapter(session, job, checkpoint)
    name = f"{job.id}-adapter.zip" if checkpoint is None else f"{job.id}-step-{artifact.step}-adapter.zip"
    return verified_download(settings.artifact_root, artifact.path, artifact.sha256,
                             what=f"adapter of job {job.id}", media_type="application/zip", filename=name)
