"""Generations: a few completions of prompts by a job's adapter, run in a worker (the API never loads a model).

    queued -> running     `claim`, by the worker that got the message; a duplicate delivery claims nothing
    running -> succeeded  `finish`, by that worker, with the completions
    queued | running -> failed   `fail`: the worker's error, or the sweep's when one ran longer than
                          GENERATION_TIME_LIMIT_S (its worker was lost: generations are not retried)

Like a routing profile (service/profiles.py): commit, then send the id to the broker; the sweep re-sends a queued one
the broker lost. The adapter is resolved when the generation is asked for (`artifact_id`), so a later checkpoint or
retry of the job does not change what it answers with.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, sessionmaker

from service import doorbell
from service.artifacts import find_artifact
from service.broker import send_generation
from service.db import transaction
from service.errors import InvalidRequest, NotFound
from service.ids import new_id, now
from service.settings import Settings
from service.statuses import JobStatus
from service.tables import File, Generation, Job, Tenant

log = logging.getLogger("drlora.generations")

MAX_PROMPTS = 8
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 256
DEFAULT_MAX_NEW_TOKENS = 64
MAX_TEMPERATURE = 2.0
# A generation running this long lost its worker (it loads one model and decodes at most 8 x 256 tokens).
GENERATION_TIME_LIMIT_S = 1800.0


@dataclass(frozen=True)
class GenerationRequest:
    """What a client asks for; every bound is checked here and refused with a 400 naming the field."""

    prompts: list[str]
    checkpoint: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.prompts) <= MAX_PROMPTS:
            _refuse("prompts", f"give 1 to {MAX_PROMPTS} prompts, got {len(self.prompts)}")
        for i, prompt in enumerate(self.prompts):
            if not prompt.strip():
                _refuse(f"prompts.{i}", "the prompt is empty; write something for the model to complete")
            if len(prompt) > MAX_PROMPT_CHARS:
                _refuse(f"prompts.{i}", f"the prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
        if self.checkpoint is not None and not (self.checkpoint.strip() and len(self.checkpoint) <= 64):
            _refuse("checkpoint", "leave it out for the final adapter, or give a checkpoint id or step "
                                  "(at most 64 characters)")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            _refuse("max_new_tokens", f"must be 1 to {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            _refuse("temperature", f"must be 0 (greedy) to {MAX_TEMPERATURE}, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            _refuse("top_p", f"must be above 0 and at most 1, got {self.top_p}")
        if not 0 <= self.seed <= 2**31 - 1:
            _refuse("seed", f"must be 0 to {2**31 - 1}, got {self.seed}")


def _refuse(param: str, message: str) -> None:
    raise InvalidRequest(f"{param}: {message}", param=param, code="invalid_value")


def new_generation(session: Session, tenant: Tenant, job: Job, request: GenerationRequest) -> Generation:
    """The row of a new queued generation of `job` (already checked to be the tenant's). A job with no adapter yet
    is a 409 (adapter_not_ready); a checkpoint it does not have, a 400 naming `checkpoint`."""
    try:
        artifact = find_artifact(session, job, request.checkpoint)
    except NotFound as e:
        raise InvalidRequest(e.message, param="checkpoint", code=e.code) from None
    file = session.get(File, job.training_file)
    return Generation(
        id=new_id("ftgen"), tenant_id=tenant.id, job_id=job.id, checkpoint=request.checkpoint,
        artifact_id=artifact.id, step=artifact.step, prompts=list(request.prompts),
        max_new_tokens=request.max_new_tokens, temperature=request.temperature, top_p=request.top_p,
        seed=request.seed, chat=None if file is None else file.format == "chat", status=JobStatus.queued,
        created_at=now())


def get_owned(session: Session, tenant: Tenant, job_id: str, generation_id: str) -> Generation:
    row = session.get(Generation, generation_id)
    if row is None or row.tenant_id != tenant.id or row.job_id != job_id:
        raise NotFound(f"no generation with id {generation_id!r} in job {job_id!r}", param="generation_id",
                       code="generation_not_found")
    return row


def _update(session: Session, where: ColumnElement[bool], **values: object) -> bool:
    result = session.execute(update(Generation).where(where).values(**values)
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1  # type: ignore[attr-defined]


def claim(session: Session, generation_id: str, worker_id: str) -> bool:
    return _update(session, (Generation.id == generation_id) & (Generation.status == JobStatus.queued),
                   status=JobStatus.running, worker_id=worker_id, started_at=now())


def finish(session: Session, generation_id: str, worker_id: str, completions: list[str]) -> bool:
    return _update(session, _held(generation_id, worker_id), status=JobStatus.succeeded, completions=completions,
                   finished_at=now())


def fail(session: Session, generation_id: str, worker_id: str | None, code: str, message: str) -> bool:
    """Fails the generation held by `worker_id` (None: the sweep's, for a queued or running one)."""
    where = _held(generation_id, worker_id) if worker_id else (
        (Generation.id == generation_id) & Generation.status.in_((JobStatus.queued, JobStatus.running)))
    return _update(session, where, status=JobStatus.failed, finished_at=now(),
                   error={"code": code, "message": message, "param": None})


def _held(generation_id: str, worker_id: str) -> ColumnElement[bool]:
    return ((Generation.id == generation_id) & (Generation.status == JobStatus.running)
            & (Generation.worker_id == worker_id))


def send(factory: sessionmaker[Session], celery: Celery, generation_id: str) -> bool:
    """Ring the generation's doorbell; a failed send leaves it queued for the sweep."""
    return doorbell.ring(factory, Generation, generation_id, lambda row_id: send_generation(celery, row_id))


def sweep(factory: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    """Fail generations whose worker was lost, re-send queued ones the broker lost; returns the ids it sent."""
    t = now()
    with transaction(factory) as session:
        stale = (Generation.status == JobStatus.running) & (Generation.started_at < t - GENERATION_TIME_LIMIT_S)
        for generation_id in session.scalars(select(Generation.id).where(stale)).all():
            fail(session, generation_id, None, "worker_lost",
                 f"the generation ran longer than {GENERATION_TIME_LIMIT_S:.0f} s: its worker was lost; ask again")
    return doorbell.ring_due(factory, Generation, settings.redispatch_after_s,
                             lambda row_id: send_generation(celery, row_id))
