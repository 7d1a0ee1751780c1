"""Fenced writes that ride out a short database outage: a restart, a failover, connections ended by an admin.

Without this, the first step whose metrics cannot be written would abort a healthy run, and the job would restart
from its last checkpoint after the lease ran out. So a write is retried while the database cannot be reached, for as
long as the lease may still be ours (the heartbeat keeps retrying meanwhile). Once the heartbeat has failed for
longer than the lease, the sweep may have handed the job to another worker: the attempt gives up with `LeaseLost`
(a `Fenced`, so nothing more is written or published). An error that is not about reaching the database (or one
that persists longer than a lease while the heartbeat gets through) is raised as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service.db import is_unreachable
from service.jobstate import Fenced
from worker.lease import Claim, Heartbeat, fenced

log = logging.getLogger("drlora.worker")
T = TypeVar("T")
BACKOFF_S = (0.1, 0.2, 0.5, 1.0)


class LeaseLost(Fenced):
    """The database stayed unreachable for longer than the lease: another worker may own the job by now."""


def write_fenced(factory: sessionmaker[Session], claim: Claim, heartbeat: Heartbeat,
                 write: Callable[[Session], T]) -> T:
    """`write(session)` in a fenced transaction, retried across a database outage no longer than the lease."""
    first_failure: float | None = None
    tries = 0
    while True:
        if heartbeat.out_of_lease():
            raise LeaseLost(f"attempt {claim.attempt} of job {claim.job_id} could not reach the database for longer "
                            f"than its lease ({heartbeat.lease_s:.0f} s); stopping without publishing")
        try:
            with fenced(factory, claim) as session:
                return write(session)
        except DBAPIError as e:
            if not is_unreachable(e):
                raise
            first_failure = first_failure if first_failure is not None else time.monotonic()
            if time.monotonic() - first_failure > heartbeat.lease_s and not heartbeat.out_of_lease():
                raise
            log.warning("job %s: database unreachable (%s); retrying", claim.job_id, type(e.orig).__name__)
            time.sleep(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
            tries += 1
