"""A job's status and the request a client can leave for its worker, as names (standard library only).

The HTTP client (`drlora jobs watch`) reads these without loading the database layer; the transitions between them
live in `service.jobstate`. Each member's name is its value, the string stored in the row and sent to clients.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    validating_files = "validating_files"  # in OpenAI's list of statuses; no job here is ever in it (service.jobstate)
    queued = "queued"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class RequestedAction(StrEnum):
    """What a client asked of a running job; its worker reads it with each heartbeat."""

    cancel = "cancel"
    pause = "pause"


class DeliveryStatus(StrEnum):
    """A webhook delivery's state (service.webhook_delivery): pending until delivered or out of attempts."""

    pending = "pending"
    delivered = "delivered"
    failed = "failed"


# Tuples, not sets: a plain string from a row or a response must match by equality.
TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
STOPPED = (*TERMINAL, JobStatus.paused)  # nothing runs it until a client resumes it, if ever
ACTIVE = (JobStatus.queued, JobStatus.running)  # what the per-tenant quota counts
