"""Exports of a job's adapter with other options (layout, dtype, base model name, rank cap): request one (a worker
builds it), list them, retrieve one, download its zip. The download with options on `.../adapter` is in drlora.py."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.orm import Session

from api.deps import CeleryDep, CurrentTenant, SessionDep, SessionFactoryDep, SettingsDep
from api.downloads import verified_download
from api.owned import get_owned_job
from api.schemas.exports import ExportCreate, ExportPublic, ExportsPublic
from api.schemas.jobs import JobError
from drlora_core.export_options import ExportOptions
from service import exports
from service.errors import Conflict, InvalidRequest
from service.statuses import JobStatus
from service.tables import Export, Job, Tenant

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["dr-lora"])

RETRY_AFTER_S = 2


def export_url(row: Export) -> str:
    return f"/v1/fine_tuning/jobs/{row.job_id}/exports/{row.id}"


def export_public(row: Export) -> ExportPublic:
    options = exports.options_of(row)
    return ExportPublic(
        id=row.id, fine_tuning_job_id=row.job_id, checkpoint_step=row.checkpoint_step, layout=options.layout,
        dtype=options.dtype, base_model_name_or_path=options.base_model_name_or_path, max_rank=options.max_rank,
        status=JobStatus(row.status), progress=row.progress, stage=row.stage,
        error=JobError(**row.error) if row.error else None, bytes=row.bytes, sha256=row.sha256,
        content_url=f"{export_url(row)}/content", created_at=int(row.created_at),
        finished_at=None if row.finished_at is None else int(row.finished_at))


def request_export(session: Session, factory: SessionFactoryDep, celery: CeleryDep, job: Job,
                   options: ExportOptions, checkpoint: str | None) -> tuple[Export, bool]:
    """Create or get the export, commit, and ring the worker's doorbell for a queued one."""
    row, created = exports.request(session, job, options, checkpoint)
    session.commit()
    if row.status == JobStatus.queued:
        exports.send(factory, celery, row.id)
        session.refresh(row)
    return row, created


def pending_answer(row: Export) -> JSONResponse:
    """202: the export is being built; poll `Location` (the export), then download again."""
    return JSONResponse(export_public(row).model_dump(mode="json"), status_code=202,
                        headers={"Location": export_url(row), "Retry-After": str(RETRY_AFTER_S)})


def serve_export(request: Request, settings: SettingsDep, row: Export) -> FileResponse:
    if row.status != JobStatus.succeeded or row.path is None or row.sha256 is None:
        raise Conflict(f"export {row.id} is {row.status}; its zip can be downloaded once it has succeeded"
                       + (f" (it failed: {row.error['message']}; request it again to retry)"
                          if row.status == JobStatus.failed and row.error else ""), code="export_not_ready")
    step = "" if row.checkpoint_step is None else f"-step-{row.checkpoint_step}"
    name = f"{row.job_id}{step}-{exports.options_of(row).layout}-{row.id.removeprefix('export-')[:8]}.zip"
    return verified_download(request, settings.artifact_root, row.path, row.sha256, what=f"export {row.id}",
                             media_type="application/zip", filename=name)


def owned_export(session: Session, tenant: Tenant, job_id: str, export_id: str) -> Export:
    get_owned_job(session, tenant, job_id)
    return exports.get_owned(session, tenant, job_id, export_id)


@router.post("/{fine_tuning_job_id}/exports", response_model=ExportPublic, status_code=201,
             responses={200: {"model": ExportPublic, "description": "the export with these options already existed"}})
def create_export(response: Response, session: SessionDep, factory: SessionFactoryDep, tenant: CurrentTenant,
                  celery: CeleryDep, fine_tuning_job_id: str, body: ExportCreate | None = None) -> ExportPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)  # first: another tenant's job is 404 whatever the body
    body = body or ExportCreate()
    options = exports.parse_options(body.layout, body.dtype, body.base_model_name_or_path, body.max_rank)
    if options.is_default:
        raise InvalidRequest("these options are the adapter as trained: download it from "
                             f"/v1/fine_tuning/jobs/{job.id}/adapter; an export needs another layout, dtype, "
                             "base_model_name_or_path or max_rank", param="layout", code="export_not_needed")
    checkpoint = None if body.checkpoint is None else str(body.checkpoint)
    row, created = request_export(session, factory, celery, job, options, checkpoint)
    response.status_code = 201 if created else 200
    return export_public(row)


@router.get("/{fine_tuning_job_id}/exports", response_model=ExportsPublic)
def list_exports(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> ExportsPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    return ExportsPublic(data=[export_public(row) for row in exports.list_for(session, job)])


@router.get("/{fine_tuning_job_id}/exports/{export_id}", response_model=ExportPublic)
def retrieve_export(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str,
                    export_id: str) -> ExportPublic:
    return export_public(owned_export(session, tenant, fine_tuning_job_id, export_id))


@router.get("/{fine_tuning_job_id}/exports/{export_id}/content", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}},
                             "description": "the export's zip; `ETag` and `Digest` carry its sha256"},
                       206: {"description": "the requested byte range (`Range: bytes=N-`)"},
                       416: {"description": "the range starts past the end of the file"}})
def export_content(request: Request, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
                   fine_tuning_job_id: str, export_id: str) -> FileResponse:
    return serve_export(request, settings, owned_export(session, tenant, fine_tuning_job_id, export_id))
