"""Routing profiles: create one, and the few state changes of its row (each one conditional UPDATE).

    queued -> running     `claim`, by the worker that got the message; a duplicate delivery claims nothing
    running -> succeeded  `finish`, by that worker, with the result
    queued | running -> failed   `fail`: the worker's error, or the sweep's when a profile ran longer than
                          PROFILE_TIME_LIMIT_S (its worker died: profiles hold no lease and are not retried)

The statuses are the job's (`JobStatus`). A profile is commit-then-send like a job, and the sweep re-sends a queued
one the broker lost (`sweep`). It is short (the model's forward over a few hundred examples), so there is no
heartbeat, cancel or pause: a lost one fails and the client asks again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, sessionmaker

from drlora_core.config import RunConfig
from service import doorbell
from service.broker import send_profile
from service.db import transaction
from service.errors import InvalidRequest
from service.ids import new_id, now
from service.runconfig import build_run_config, hyperparameters_view
from service.settings import Settings
from service.statuses import JobStatus
from service.tables import File, Profile, RegisteredModel, Tenant

log = logging.getLogger("drlora.profiles")

# A profile running this long lost its worker (a real model loads in minutes and profiles a few hundred examples).
PROFILE_TIME_LIMIT_S = 3600.0
DEFAULT_MAX_EXAMPLES = 256


def new_profile(session: Session, tenant: Tenant, model_id: str, training_file: str, max_examples: int,
                hyperparameters: dict[str, Any], seed: int) -> Profile:
    """The row of a new queued profile; its ranks and batch size are resolved as a `static` job's would be."""
    model = session.get(RegisteredModel, model_id)
    if model is None:
        raise InvalidRequest(f"model {model_id!r} is not available; GET /v1/models lists the base models",
                             param="model", code="model_not_found")
    file = session.get(File, training_file)
    if file is None or file.tenant_id != tenant.id:
        raise InvalidRequest(f"no file with id {training_file!r}; upload it with POST /v1/files",
                             param="training_file", code="file_not_found")
    if file.purpose != "fine-tune":
        raise InvalidRequest(f"file {training_file!r} has purpose {file.purpose!r}, not 'fine-tune'",
                             param="training_file", code="invalid_file_purpose")
    config = build_run_config("static", hyperparameters, seed, Path(model.path), file.lines, param_prefix="")
    return Profile(id=new_id("ftprof"), tenant_id=tenant.id, model=model_id, training_file=training_file,
                   max_examples=max_examples, hyperparameters={**hyperparameters_view(config, hyperparameters, Path(model.path)),
                                                                "seed": seed},
                   run_config=config.to_dict(), status=JobStatus.queued, created_at=now())


def config_of(profile: Profile) -> RunConfig:
    return RunConfig.from_dict(profile.run_config)


def _update(session: Session, where: ColumnElement[bool], **values: object) -> bool:
    result = session.execute(update(Profile).where(where).values(**values)
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1  # type: ignore[attr-defined]


def claim(session: Session, profile_id: str, worker_id: str) -> bool:
    return _update(session, (Profile.id == profile_id) & (Profile.status == JobStatus.queued),
                   status=JobStatus.running, worker_id=worker_id, started_at=now())


def finish(session: Session, profile_id: str, worker_id: str, result: dict[str, Any]) -> bool:
    return _update(session, _held(profile_id, worker_id), status=JobStatus.succeeded, result=result,
                   finished_at=now())


def fail(session: Session, profile_id: str, worker_id: str | None, code: str, message: str,
         param: str | None = None) -> bool:
    """Fails the profile held by `worker_id` (None: the sweep's, for a queued or running one)."""
    where = _held(profile_id, worker_id) if worker_id else (
        (Profile.id == profile_id) & Profile.status.in_((JobStatus.queued, JobStatus.running)))
    return _update(session, where, status=JobStatus.failed, finished_at=now(),
                   error={"code": code, "message": message, "param": param})


def _held(profile_id: str, worker_id: str) -> ColumnElement[bool]:
    return (Profile.id == profile_id) & (Profile.status == JobStatus.running) & (Profile.worker_id == worker_id)


def send(factory: sessionmaker[Session], celery: Celery, profile_id: str) -> bool:
    """Ring the profile's doorbell; a failed send leaves it queued for the sweep."""
    return doorbell.ring(factory, Profile, profile_id, lambda row_id: send_profile(celery, row_id))


def sweep(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    """Fail profiles whose worker was lost, re-send queued ones the broker lost; returns the ids it sent."""
    t = now()
    with transaction(factory) as session:
        stale = (Profile.status == JobStatus.running) & (Profile.started_at < t - PROFILE_TIME_LIMIT_S)
        for profile_id in session.scalars(select(Profile.id).where(stale)).all():
            fail(session, profile_id, None, "worker_lost",
                 f"the profile ran longer than {PROFILE_TIME_LIMIT_S:.0f} s: its worker was lost; create it again")
    return doorbell.ring_due(factory, Profile, settings.redispatch_after_s,
                             lambda row_id: send_profile(celery, row_id))
