"""Webhook endpoints per tenant. The signing secret is answered once, by the create; events are sent by the worker
side (service/webhook_delivery.py), so no route here ever waits on a receiver."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentTenant, SessionDep, SettingsDep
from api.schemas.webhooks import WebhookCreate, WebhookCreated, WebhookDeleted, WebhookPublic, WebhooksPublic
from service import webhooks
from service.tables import WebhookEndpoint

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def webhook_public(row: WebhookEndpoint) -> WebhookPublic:
    return WebhookPublic(id=row.id, url=row.url, events=row.events,  # type: ignore[arg-type]
                         created_at=int(row.created_at))


@router.post("", response_model=WebhookCreated)
def create_webhook(body: WebhookCreate, session: SessionDep, tenant: CurrentTenant,
                   settings: SettingsDep) -> WebhookCreated:
    """Register a receiver for the given event types. Deliveries are signed per the Standard Webhooks
    specification with the `secret` of this answer, which is not shown again."""
    row = webhooks.register(session, tenant.id, body.url, list(body.events),
                            allow_private=settings.webhook_allow_private)
    session.commit()
    return WebhookCreated(**webhook_public(row).model_dump(), secret=row.secret)


@router.get("", response_model=WebhooksPublic)
def list_webhooks(session: SessionDep, tenant: CurrentTenant) -> WebhooksPublic:
    """The tenant's webhook endpoints, newest first (without their secrets)."""
    return WebhooksPublic(data=[webhook_public(r) for r in webhooks.endpoints_of(session, tenant.id)])


@router.get("/{webhook_id}", response_model=WebhookPublic)
def retrieve_webhook(webhook_id: str, session: SessionDep, tenant: CurrentTenant) -> WebhookPublic:
    """One webhook endpoint (without its secret)."""
    return webhook_public(webhooks.owned_endpoint(session, tenant.id, webhook_id))


@router.delete("/{webhook_id}", response_model=WebhookDeleted)
def delete_webhook(webhook_id: str, session: SessionDep, tenant: CurrentTenant) -> WebhookDeleted:
    """Remove the endpoint; its deliveries not yet sent are dropped with it."""
    session.delete(webhooks.owned_endpoint(session, tenant.id, webhook_id))
    session.commit()
    return WebhookDeleted(id=webhook_id)
