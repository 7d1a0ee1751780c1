"""Uploads are validated whole before anything is kept: a refused file leaves no row and no bytes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.deps import CurrentTenant, SessionDep, SettingsDep
from api.downloads import verified_download
from api.limits import refuse_over_cap
from api.owned import get_owned_file
from api.schemas.files import FileDeleted, FilePublic, FilesPublic
from drlora_core.atomic import write_atomic
from drlora_core.formats import DatasetError, validate_jsonl
from service.errors import InvalidRequest, Unprocessable
from service.ids import new_id, now
from service.tables import File

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)
UPLOAD_FIELDS = ("file", "purpose")


def file_public(row: File) -> FilePublic:
    return FilePublic(id=row.id, bytes=row.bytes, created_at=int(row.created_at), filename=row.filename,
                      purpose=row.purpose, format=row.format, lines=row.lines)


@router.post("", response_model=FilePublic)
async def upload_file(
    request: Request, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
    file: UploadFile, purpose: Annotated[str, Form()],
) -> FilePublic:
    # Form fields beyond these would be silently dropped; refuse them so that nobody believes they set e.g. a tenant.
    if unknown := sorted(set((await request.form()).keys()) - set(UPLOAD_FIELDS)):
        raise Unprocessable(f"{unknown[0]}: unknown form field; send only {' and '.join(UPLOAD_FIELDS)}",
                            param=unknown[0], code="unknown_parameter")
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose", code="invalid_purpose")
    data = await file.read()  # bounded: api.limits.UploadLimit refused any request over the cap plus its framing
    refuse_over_cap(len(data), settings.max_upload_bytes)
    try:
        summary = validate_jsonl(data, max_bytes=settings.max_upload_bytes, max_lines=settings.max_dataset_lines,
                                 max_line_bytes=settings.max_line_bytes)
    except DatasetError as e:
        raise InvalidRequest(f"invalid training file: {e}", param="file", code="invalid_file", line=e.line) from None
    file_id = new_id("file")
    relative = f"{tenant.id}/{file_id}.jsonl"
    sha256, size = write_atomic(settings.files_root / relative, [data])
    row = File(id=file_id, tenant_id=tenant.id, filename=(file.filename or "upload.jsonl")[:500], purpose=purpose,
               bytes=size, format=summary.format, lines=summary.lines, sha256=sha256, path=relative,
               created_at=now())
    session.add(row)
    session.commit()
    return file_public(row)


@router.get("", response_model=FilesPublic)
def list_files(
    session: SessionDep, tenant: CurrentTenant,
    after: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100, purpose: str | None = None,
) -> FilesPublic:
    query = select(File).where(File.tenant_id == tenant.id)
    if purpose:
        query = query.where(File.purpose == purpose)
    if after:
        cursor = get_owned_file(session, tenant, after, param="after")
        query = query.where((File.created_at < cursor.created_at)
                            | ((File.created_at == cursor.created_at) & (File.id < cursor.id)))
    rows = session.scalars(query.order_by(File.created_at.desc(), File.id.desc()).limit(limit + 1)).all()
    data = [file_public(r) for r in rows[:limit]]
    return FilesPublic(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                       last_id=data[-1].id if data else None)


@router.get("/{file_id}", response_model=FilePublic)
def retrieve_file(session: SessionDep, tenant: CurrentTenant, file_id: str) -> FilePublic:
    return file_public(get_owned_file(session, tenant, file_id))


@router.get("/{file_id}/content", response_class=FileResponse,
            responses={200: {"content": {"application/jsonl": {}},
                             "description": "the uploaded bytes; `ETag` and `Digest` carry their sha256"}})
def file_content(session: SessionDep, tenant: CurrentTenant, settings: SettingsDep, file_id: str) -> FileResponse:
    row = get_owned_file(session, tenant, file_id)
    return verified_download(settings.files_root, row.path, row.sha256, what=f"content of file {file_id}",
                             media_type="application/jsonl", filename=row.filename)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(session: SessionDep, tenant: CurrentTenant, settings: SettingsDep, file_id: str) -> FileDeleted:
    row = get_owned_file(session, tenant, file_id)
    session.delete(row)
    session.commit()
    (settings.files_root / row.path).unlink(missing_ok=True)
    return FileDeleted(id=file_id)
