"""Claiming a job, heartbeating its lease, and fencing every write by (job id, attempt).

The claim is the state machine's (`service.jobstate.claim`: `queued -> running`, attempt + 1, one UPDATE), so of any number of deliveries of the same
job id exactly one gets the row; the rest find it no longer queued and do nothing. From then on every write of this
attempt runs in a `fenced` transaction whose first statement touches the job row only if it is still `running` under
this attempt. On PostgreSQL that UPDATE also locks the row until commit, so a sweep or a newer attempt cannot slip in
between the check and the writes; SQLite serialises writers anyway. A stale attempt (one the sweep gave up on after
its lease expired) gets `Fenced` on its next write and stops without publishing anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service import jobstate
from service.db import transaction
from service.ids import now
from service.jobstate import Fenced
from service.tables import Job

log = logging.getLogger("drlora.worker")


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    worker_id: str


def claim(factory: sessionmaker[Session], job_id: str, worker_id: str, lease_s: float) -> Claim | None:
    with transaction(factory) as session:
        attempt = jobstate.claim(session, job_id, worker_id, lease_s)
    return None if attempt is None else Claim(job_id, attempt, worker_id)


@contextmanager
def fenced(factory: sessionmaker[Session], claim: Claim) -> Iterator[Session]:
    with transaction(factory) as session:
        owned = session.execute(
            update(Job).where(jobstate.owned(claim.job_id, claim.attempt))
            .values(heartbeat_at=now()).execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if owned != 1:
            raise Fenced(f"attempt {claim.attempt} of job {claim.job_id} no longer owns it")
        yield session


class Heartbeat:
    """Extends the lease every `interval` seconds and picks up cancel/pause requests from the row.

    `fenced` becomes true when the row is no longer ours; `lost` when the database stayed unreachable for longer than
    the lease (someone else may own the job by now), in which case the worker must stop without publishing.
    """

    def __init__(self, factory: sessionmaker[Session], claim: Claim, interval_s: float, lease_s: float) -> None:
        self.factory, self.claim, self.interval_s, self.lease_s = factory, claim, interval_s, lease_s
        self.requested: str | None = None
        self.fenced = False
        self.lost = False
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{claim.job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def out_of_lease(self) -> bool:
        """Whether the lease may have expired unrenewed (no beat got through for `lease_s`); once true, stays true."""
        if not self.lost and time.monotonic() - self._last_ok > self.lease_s:
            self.lost = True
        return self.lost

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and not self.fenced:
            self.beat()

    def beat(self) -> None:
        t, started = now(), time.monotonic()  # the lease runs from before the write, as the database sees it
        try:
            with transaction(self.factory) as session:
                row = session.execute(
                    update(Job).where(jobstate.owned(self.claim.job_id, self.claim.attempt))
                    .values(heartbeat_at=t, lease_expires_at=t + self.lease_s).returning(Job.requested_action)
                ).first()
        except Exception as e:  # the database is away: keep trying until the lease would have run out
            log.warning("heartbeat of %s failed: %s", self.claim.job_id, e)
            if not self.lost and self.out_of_lease():
                log.warning("job %s attempt %s: no heartbeat got through for longer than the lease; stopping",
                            self.claim.job_id, self.claim.attempt)
            return
        self._last_ok = started
        if row is None:
            self.fenced = True
            log.warning("job %s attempt %s was taken over; stopping", self.claim.job_id, self.claim.attempt)
        else:
            self.requested = row[0]
