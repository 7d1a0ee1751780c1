"""Webhook endpoints of a tenant, and the events enqueued for them.

Events have OpenAI's shape: `{"object": "event", "id", "type", "created_at", "data": {"id": <job id>, ...}}` with the
types `fine_tuning.job.succeeded | failed | cancelled` and our own `fine_tuning.job.growth` (data adds `step`,
`grown_experts`, `added_rank`). `enqueue_job_event` adds one delivery row per subscribed endpoint in the caller's
session, so an event exists exactly when the change that caused it commits; the worker's delivery loop
(service/webhook_delivery.py) sends it, and the API never waits on a receiver.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import InvalidRequest, NotFound
from service.ids import new_id, now
from service.statuses import DeliveryStatus, JobStatus
from service.tables import Job, WebhookDelivery, WebhookEndpoint
from service.webhook_signing import new_secret
from service.webhook_urls import resolve

SUCCEEDED = "fine_tuning.job.succeeded"
FAILED = "fine_tuning.job.failed"
CANCELLED = "fine_tuning.job.cancelled"
GROWTH = "fine_tuning.job.growth"
EVENT_TYPES = (SUCCEEDED, FAILED, CANCELLED, GROWTH)
# The event a job's final status sends.
STATUS_EVENTS = {JobStatus.succeeded: SUCCEEDED, JobStatus.failed: FAILED, JobStatus.cancelled: CANCELLED}

MAX_ENDPOINTS_PER_TENANT = 20


def register(session: Session, tenant_id: str, url: str, events: list[str], *,
             allow_private: bool) -> WebhookEndpoint:
    """`events` are members of EVENT_TYPES (the request schema checks them); the URL is checked here."""
    resolve(url, allow_private=allow_private)
    count = session.scalar(select(func.count()).select_from(WebhookEndpoint)
                           .where(WebhookEndpoint.tenant_id == tenant_id)) or 0
    if count >= MAX_ENDPOINTS_PER_TENANT:
        raise InvalidRequest(f"a tenant may register at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints; delete "
                             "one first", param="url", code="too_many_webhooks")
    row = WebhookEndpoint(id=new_id("wh"), tenant_id=tenant_id, url=url, events=list(dict.fromkeys(events)),
                          secret=new_secret(), created_at=now())
    session.add(row)
    return row


def endpoints_of(session: Session, tenant_id: str) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc())))


def owned_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """404 for another tenant's endpoint exactly as for an unknown id."""
    row = session.get(WebhookEndpoint, endpoint_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"no webhook endpoint with id {endpoint_id!r}", param="webhook_id", code="webhook_not_found")
    return row


def event_payload(event_type: str, job_id: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"object": "event", "id": new_id("evt"), "type": event_type, "created_at": int(now()),
            "data": {"id": job_id, **(data or {})}}


def enqueue_job_event(session: Session, job_id: str, event_type: str, data: dict[str, Any] | None = None) -> int:
    """Queue `event_type` about the job for each of its tenant's endpoints that subscribed to it, in the caller's
    transaction; answers how many deliveries were queued."""
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant_id is None:
        return 0
    endpoints = [e for e in session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id))
                 if event_type in e.events]
    if not endpoints:
        return 0
    payload, t = event_payload(event_type, job_id, data), now()
    for endpoint in endpoints:
        session.add(WebhookDelivery(id=new_id("msg"), endpoint_id=endpoint.id, event_type=event_type,
                                    payload=payload, status=DeliveryStatus.pending, attempts=0, next_attempt_at=t, created_at=t))
    return len(endpoints)
