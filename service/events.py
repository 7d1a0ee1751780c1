"""Job events: the human-readable log of a job, and the `metrics` events the SDK's event list shows."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.ids import now
from service.tables import JobEvent


def add_event(session: Session, job_id: str, attempt: int, message: str, *, level: str = "info",
              type: str = "message", data: dict[str, Any] | None = None) -> None:
    session.add(JobEvent(job_id=job_id, attempt=attempt, created_at=now(), level=level, type=type,
                         message=message, data=data))
