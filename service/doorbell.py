"""The doorbell of a worker-built resource (profiles, exports, generations): the row is the truth, the broker
message only says "look at row X". A send that fails leaves the row queued; the sweep rings again for queued rows
whose last ring is older than `redispatch_after_s`.

Each resource's table has `id`, `status` and `dispatched_at`; its module passes the table and its broker send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.ids import now
from service.statuses import JobStatus

log = logging.getLogger("drlora.doorbell")


def ring(factory: sessionmaker[Session], table: Any, row_id: str, send: Callable[[str], None]) -> bool:
    """Send the row's id to the broker, then note when; False (the row stays queued) if the broker refused."""
    try:
        send(row_id)
    except Exception as e:  # any broker failure: the sweep rings again
        log.warning("could not send %s to the broker (%s); the sweep will retry", row_id, e)
        return False
    with transaction(factory) as session:
        session.execute(update(table).where((table.id == row_id) & (table.status == JobStatus.queued))
                        .values(dispatched_at=now()))
    return True


def ring_due(factory: sessionmaker[Session], table: Any, redispatch_after_s: float,
             send: Callable[[str], None]) -> list[str]:
    """Ring again for every queued row not rung for `redispatch_after_s`; stops at the first refusal (the broker is
    down: the next sweep tries again). Returns the ids rung."""
    stale = now() - redispatch_after_s
    with factory() as session:
        due = session.scalars(select(table.id).where(
            (table.status == JobStatus.queued) & (table.dispatched_at.is_(None) | (table.dispatched_at < stale)))).all()
    rung = []
    for row_id in due:
        if not ring(factory, table, row_id, send):
            break
        rung.append(row_id)
    return rung
