"""Files: an upload is validated line by line while it is received, in a worker thread, and kept only when whole
and valid (`service.uploads`); a refused file leaves no row and no bytes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select

from api.deps import CurrentTenant, SessionDep, SessionFactoryDep, SettingsDep
from api.downloads import verified_download
from api.form_stream import FormReader, body_chunks
from api.handlers import service_error_response
from api.owned import get_owned_file
from api.schemas.files import FileDeleted, FilePublic, FilesPublic
from service import uploads
from service.errors import ServiceError, Unprocessable
from service.tables import File
from service.uploads import DatasetSpool, check_purpose

router = APIRouter(prefix="/v1/files", tags=["files"])

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "additionalProperties": False,
    "properties": {"file": {"type": "string", "format": "binary", "description": "the JSONL dataset"},
                   "purpose": {"type": "string", "enum": ["fine-tune"]}},
}}}}}


def file_public(row: File) -> FilePublic:
    return FilePublic(id=row.id, bytes=row.bytes, created_at=int(row.created_at), filename=row.filename,
                      purpose=row.purpose, format=row.format, lines=row.lines)


@router.post("", response_model=FilePublic, openapi_extra=UPLOAD_BODY)
def upload_file(
    request: Request, factory: SessionFactoryDep, tenant: CurrentTenant, settings: SettingsDep,
) -> FilePublic | JSONResponse:
    # A plain function: FastAPI runs it in a worker thread and reads no body for it, so parsing and validating a
    # large upload never holds up the event loop, and the first bad line stops the reading.
    spool = DatasetSpool(settings, tenant.id)
    try:
        form = FormReader(request.headers.get("content-type", ""), "file", ("purpose",), spool.write)
        form.read(body_chunks(request))
        if not form.file_seen:
            raise Unprocessable("file: field required; send the dataset as the multipart field `file`",
                                param="file", code="missing_parameter")
        row = spool.keep(factory, form.filename, check_purpose(form.values.get("purpose")))
    except ServiceError as e:
        return service_error_response(e, close=True)  # the rest of the body is not read: end the connection
    finally:
        spool.discard()
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
def file_content(request: Request, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
                 file_id: str) -> FileResponse:
    row = get_owned_file(session, tenant, file_id)
    return verified_download(request, settings.files_root, row.path, row.sha256, what=f"content of file {file_id}",
                             media_type="application/jsonl", filename=row.filename)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(session: SessionDep, tenant: CurrentTenant, settings: SettingsDep, file_id: str) -> FileDeleted:
    uploads.delete_file(session, settings.files_root, get_owned_file(session, tenant, file_id))
    return FileDeleted(id=file_id)
