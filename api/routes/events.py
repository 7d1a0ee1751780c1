"""A job's events (also as server-sent events with `?stream=true`) and its checkpoints.

Events are listed newest first, as OpenAI lists them (`after` pages on to older ones); the stream sends each new
event, oldest first, as `data: {json}` and ends with `data: [DONE]` once the job is finished or paused and nothing is left to send.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentTenant, SessionDep, SessionFactoryDep
from api.owned import get_owned_job
from api.presenters import checkpoint_public, event_id, event_public, parse_event_id
from api.schemas.jobs import CheckpointsPublic, EventsPublic
from service.errors import InvalidRequest, NotFound
from service.statuses import STOPPED, JobStatus
from service.tables import Checkpoint, Job, JobEvent

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

STREAM_POLL_S = 0.5


def _events_after(session: Session, job_id: str, after: int, limit: int) -> list[JobEvent]:
    return list(session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id).limit(limit)
    ).all())


def _poll(factory: sessionmaker[Session], job_id: str, after: int) -> tuple[list[JobEvent], str]:
    with factory() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id)) or JobStatus.cancelled
        return _events_after(session, job_id, after, 500), status


async def _stream(request: Request, factory: sessionmaker[Session], job_id: str, after: int) -> AsyncIterator[str]:
    while not await request.is_disconnected():
        events, status = await run_in_threadpool(_poll, factory, job_id, after)
        for event in events:
            yield f"id: {event_id(event)}\ndata: {event_public(event).model_dump_json()}\n\n"
            after = event.id
        if not events and status in STOPPED:
            yield "data: [DONE]\n\n"
            return
        if not events:
            yield ": keep-alive\n\n"
            await asyncio.sleep(STREAM_POLL_S)


@router.get("/{fine_tuning_job_id}/events", response_model=EventsPublic,
            responses={200: {"content": {"text/event-stream": {}}}})
def list_events(
    request: Request, session: SessionDep, factory: SessionFactoryDep, tenant: CurrentTenant,
    fine_tuning_job_id: str, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    stream: bool = False,
) -> EventsPublic | StreamingResponse:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    cursor = parse_event_id(after) if after else 0
    if cursor is None:
        raise InvalidRequest(f"after must be an event id such as 'ftevent-12', got {after!r}", param="after")
    if stream:
        return StreamingResponse(_stream(request, factory, job.id, cursor), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    older = select(JobEvent).where(JobEvent.job_id == job.id)
    if after:
        older = older.where(JobEvent.id < cursor)
    rows = session.scalars(older.order_by(JobEvent.id.desc()).limit(limit + 1)).all()
    return EventsPublic(data=[event_public(e) for e in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=CheckpointsPublic)
def list_checkpoints(
    session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str,
    after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> CheckpointsPublic:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if after:
        cursor = session.get(Checkpoint, after)
        if cursor is None or cursor.job_id != job.id:
            raise NotFound(f"no checkpoint with id {after!r} in job {job.id}", param="after",
                           code="checkpoint_not_found")
        query = query.where(Checkpoint.step < cursor.step)
    rows = session.scalars(query.order_by(Checkpoint.step.desc()).limit(limit + 1)).all()
    data = [checkpoint_public(job, c) for c in rows[:limit]]
    return CheckpointsPublic(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                             last_id=data[-1].id if data else None)
