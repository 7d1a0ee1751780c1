"""A job's events (also as server-sent events with `?stream=true`) and its checkpoints.

Event ids number a job's own events (`ftevent-1` is its first), so they reveal nothing about other jobs; `after`
(and a stream's `Last-Event-ID`) is such a number. Events are append-only, so a number always names the same event.
Events are listed newest first, as OpenAI lists them (`after` pages on to older ones); the stream sends each new
event, oldest first, as `data: {json}` with its `id:`, a comment line every `stream_keepalive_s` while nothing happens, and ends
with `data: [DONE]` once the job is finished or paused and nothing is left to send.

A stream holds no database connection while it waits: ownership is checked in the request's own short session,
and each poll opens and closes one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentTenant, SessionDep, SessionFactoryDep, SettingsDep
from api.owned import get_owned_job
from api.presenters import checkpoint_public, event_public, parse_event_id
from api.schemas.jobs import CheckpointsPublic, EventsPublic
from api.streams import StreamSlots
from service.errors import InvalidRequest, NotFound
from service.settings import Settings
from service.statuses import STOPPED, JobStatus
from service.tables import Checkpoint, Job, JobEvent

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

POLL_BATCH = 500
Numbered = list[tuple[int, JobEvent]]


def _events_after(session: Session, job_id: str, after: int, limit: int) -> Numbered:
    """The job's events numbered after+1, after+2, ... (its own 1-based sequence)."""
    rows = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id).offset(after).limit(limit)
    ).all()
    return [(after + i, row) for i, row in enumerate(rows, start=1)]


def _events_before(session: Session, job_id: str, before: int | None, limit: int) -> Numbered:
    """Up to `limit` of the job's events numbered below `before` (from its newest when None), newest first."""
    top = max(0, before - 1) if before is not None else session.scalar(
        select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)) or 0
    start = max(0, top - limit)
    rows = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id).offset(start).limit(top - start)
    ).all()
    return [(start + i, row) for i, row in enumerate(rows, start=1)][::-1]


def _poll(factory: sessionmaker[Session], job_id: str, after: int) -> tuple[Numbered, str]:
    with factory() as session:
        # The status first: a job seen stopped has every event it wrote before stopping visible to the next query.
        status = session.scalar(select(Job.status).where(Job.id == job_id)) or JobStatus.cancelled
        return _events_after(session, job_id, after, POLL_BATCH), status


async def _stream(request: Request, factory: sessionmaker[Session], job_id: str, after: int, settings: Settings,
                  release: Callable[[], None]) -> AsyncIterator[str]:
    try:
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            events, status = await run_in_threadpool(_poll, factory, job_id, after)
            for number, event in events:
                yield f"id: ftevent-{number}\ndata: {event_public(event, number).model_dump_json()}\n\n"
                after = number
            if events:
                quiet_since = time.monotonic()
                continue
            if status in STOPPED:
                yield "data: [DONE]\n\n"
                return
            if time.monotonic() - quiet_since >= settings.stream_keepalive_s:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(settings.stream_poll_s)
    finally:
        release()


def _cursor(after: str | None, last_event_id: str | None) -> int:
    """`after`, else the `Last-Event-ID` a reconnecting EventSource sends, as an event number (0: from the start)."""
    given, param = (after, "after") if after else (last_event_id, "Last-Event-ID")
    if not given:
        return 0
    cursor = parse_event_id(given)
    if cursor is None:
        raise InvalidRequest(f"{param} must be an event id such as 'ftevent-12', got {given!r}", param=param)
    return cursor


@router.get("/{fine_tuning_job_id}/events", response_model=EventsPublic,
            responses={200: {"content": {"text/event-stream": {}}}})
def list_events(
    request: Request, session: SessionDep, factory: SessionFactoryDep, tenant: CurrentTenant, settings: SettingsDep,
    fine_tuning_job_id: str, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    stream: bool = False, last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
) -> EventsPublic | StreamingResponse:
    job = get_owned_job(session, tenant, fine_tuning_job_id)
    cursor = _cursor(after, last_event_id)
    if stream:
        slots: StreamSlots = request.app.state.stream_slots
        key_hash = request.state.key_hash
        slots.take(key_hash)
        return StreamingResponse(_stream(request, factory, job.id, cursor, settings, lambda: slots.give_back(key_hash)),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    rows = _events_before(session, job.id, cursor if after else None, limit)
    return EventsPublic(data=[event_public(e, n) for n, e in rows], has_more=bool(rows) and rows[-1][0] > 1)


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
