"""The periodic sweep that makes the broker untrusted: it re-sends queued jobs and takes back lost running ones.

1. A `running` job whose lease expired lost its worker (killed, frozen, cut off); so did one with no lease at all,
   which no worker can be renewing (claims always set one). If a cancel or pause was asked for, that now takes
   effect; otherwise the job goes back to `queued` (the next attempt resumes from its last checkpoint) or, after
   `max_attempts` lost runs, to `failed` naming the cause.
2. A `queued` job never sent, or sent longer than `redispatch_after_s` ago without being claimed (the send failed,
   the broker lost the message, the worker died before claiming), is sent again. Duplicates are harmless: only one
   delivery can claim the row.

Each change is one conditional UPDATE of the state machine (service/jobstate.py), so sweeps running in several API
processes at once do no harm. Lost rows are locked with SKIP LOCKED (PostgreSQL): a row still locked by a frozen
worker's transaction is left for a later pass instead of stalling this one (the server ends such a transaction; see
worker/app.py).
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import exports, generations, jobstate, profiles
from service.broker import send_train
from service.db import transaction
from service.ids import now
from service.periodic import Periodic
from service.settings import Settings
from service.tables import Job

log = logging.getLogger("drlora.sweep")


def sweep_once(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    """One pass; returns the ids of the jobs it sent to the broker."""
    reclaim_lost(factory)
    profiles.sweep(factory, celery, settings)  # routing profiles: re-sent when queued too long, failed when lost
    exports.sweep(factory, celery, settings)  # adapter exports: re-sent when queued too long, requeued when lost
    generations.sweep(factory, celery, settings)  # the same for generations
    return redispatch(factory, celery, settings)


def reclaim_lost(factory: sessionmaker[Session]) -> None:
    t = now()
    with transaction(factory) as session:
        for job in session.scalars(select(Job).where(jobstate.lost(t)).with_for_update(skip_locked=True)).all():
            status = jobstate.reclaim(session, job, t)
            if status is not None:
                log.warning("sweep: %s -> %s", job.id, status)


def redispatch(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    t = now()
    with factory() as session:
        due = session.scalars(
            select(Job.id).where(jobstate.due_for_dispatch(t, settings.redispatch_after_s))).all()
    sent = []
    for job_id in due:
        if not dispatch(factory, celery, job_id):
            break  # the broker is away: the rest would fail too, each after its timeout; the next pass retries
        sent.append(job_id)
    return sent


def dispatch(factory: sessionmaker[Session], celery: Celery, job_id: str) -> bool:
    """Send the job's doorbell, then note when; a failed send leaves the row for the next sweep."""
    try:
        send_train(celery, job_id)
    except Exception as e:  # any broker failure: the row stays queued and the sweep tries again
        log.warning("could not send job %s to the broker (%s); the sweep will retry", job_id, e)
        return False
    with transaction(factory) as session:
        jobstate.dispatch(session, job_id)
    return True


def sweep_thread(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> Periodic:
    """Runs `sweep_once` every `sweep_interval_s` once started."""
    return Periodic("drlora-sweep", settings.sweep_interval_s, lambda: sweep_once(factory, celery, settings), log=log)
