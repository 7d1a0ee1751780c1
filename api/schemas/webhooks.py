from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.webhook_urls import MAX_URL_LENGTH

EventType = Literal["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled",
                    "fine_tuning.job.growth"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH,
                              description="an http(s) URL on a public address that accepts POSTed events")]
    events: Annotated[list[EventType], Field(min_length=1, max_length=4, description="the event types to send")]


class WebhookPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[EventType]
    created_at: int


class WebhookCreated(WebhookPublic):
    secret: Annotated[str, Field(description="the signing secret (`whsec_...`); shown only in this answer")]


class WebhooksPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookPublic]
    has_more: bool = False


class WebhookDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: bool = True
