"""The worker's side of the database, without the engine: claim, heartbeat, fencing, and the sweep, on
PostgreSQL + Redis and on SQLite + the filesystem broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from drlora_cli.bootstrap import migrate
from service.broker import make_celery
from service.db import make_engine, make_sessionmaker, transaction
from service.ids import new_id, now
from service.keys import create_key
from service.settings import Settings
from service.sweep import dispatch, reclaim_lost, redispatch
from service.tables import Job, JobEvent
from tests.support.service import make_settings
from worker.lease import Fenced, Heartbeat, claim, fenced

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, pg_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "postgresql":
        yield pg_settings
    else:
        settings = make_settings(tmp_path / "data")
        migrate(settings)
        yield settings


@pytest.fixture
def factory(backend: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(backend.sqlalchemy_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def queued_job(factory: sessionmaker[Session], max_attempts: int = 3) -> str:
    with transaction(factory) as s:
        tenant_id = create_key(s, f"lease-{new_id('t')}").tenant_id
        job = Job(id=new_id("ftjob"), tenant_id=tenant_id, model="m", training_file="file-x", method="dr_lora",
                  hyperparameters={}, seed=0, status="queued", step=0, created_at=now(), attempt=0,
                  lost_attempts=0, max_attempts=max_attempts)
        s.add(job)
    return job.id


def row(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as s:
        return s.get_one(Job, job_id)


def test_only_one_delivery_claims_a_job(factory: sessionmaker[Session]) -> None:
    job_id = queued_job(factory)
    first = claim(factory, job_id, "w1", lease_s=30)
    assert first is not None and first.attempt == 1
    assert claim(factory, job_id, "w2", lease_s=30) is None
    assert claim(factory, job_id, "w3", lease_s=30) is None
    job = row(factory, job_id)
    assert (job.status, job.attempt, job.worker_id) == ("running", 1, "w1")


def test_a_stale_attempt_is_fenced_after_the_sweep_requeues_it(factory: sessionmaker[Session]) -> None:
    job_id = queued_job(factory)
    old = claim(factory, job_id, "w1", lease_s=0.2)
    assert old is not None
    with fenced(factory, old) as s:
        s.get_one(Job, job_id)
    time.sleep(0.3)
    reclaim_lost(factory)
    job = row(factory, job_id)
    assert (job.status, job.lost_attempts, job.lease_expires_at) == ("queued", 1, None)
    new = claim(factory, job_id, "w2", lease_s=30)
    assert new is not None and new.attempt == 2
    with pytest.raises(Fenced), fenced(factory, old) as s:
        pytest.fail("a stale attempt got a transaction")
    beat = Heartbeat(factory, old, interval_s=1, lease_s=30)
    beat.beat()
    assert beat.fenced
    current = Heartbeat(factory, new, interval_s=1, lease_s=30)
    current.beat()
    assert not current.fenced and current.requested is None


def test_heartbeat_extends_the_lease_and_carries_requests(factory: sessionmaker[Session]) -> None:
    job_id = queued_job(factory)
    owned = claim(factory, job_id, "w1", lease_s=2)
    assert owned is not None
    before = row(factory, job_id).lease_expires_at
    beat = Heartbeat(factory, owned, interval_s=0.1, lease_s=2)
    beat.start()
    try:
        time.sleep(0.5)
        with transaction(factory) as s:
            s.get_one(Job, job_id).requested_action = "pause"
        time.sleep(0.5)
        assert row(factory, job_id).lease_expires_at > before  # type: ignore[operator]
        assert beat.requested == "pause"
    finally:
        beat.stop()


def test_lost_jobs_end_failed_after_max_attempts(factory: sessionmaker[Session]) -> None:
    job_id = queued_job(factory, max_attempts=2)
    for attempt in (1, 2):
        owned = claim(factory, job_id, "w", lease_s=0.05)
        assert owned is not None and owned.attempt == attempt
        time.sleep(0.1)
        reclaim_lost(factory)
    job = row(factory, job_id)
    assert job.status == "failed" and job.error is not None and job.error["code"] == "worker_lost"
    assert claim(factory, job_id, "w", lease_s=1) is None


def test_a_cancel_or_pause_asked_of_a_lost_job_takes_effect(factory: sessionmaker[Session]) -> None:
    for action, status in (("cancel", "cancelled"), ("pause", "paused")):
        job_id = queued_job(factory)
        assert claim(factory, job_id, "w", lease_s=0.05)
        with transaction(factory) as s:
            s.get_one(Job, job_id).requested_action = action
        time.sleep(0.1)
        reclaim_lost(factory)
        assert row(factory, job_id).status == status


def test_a_never_heartbeating_running_job_is_requeued(factory: sessionmaker[Session]) -> None:
    job_id = queued_job(factory)
    assert claim(factory, job_id, "w", lease_s=0.05)
    time.sleep(0.1)
    reclaim_lost(factory)
    assert row(factory, job_id).status == "queued"
    with factory() as s:
        messages = s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert any("lost" in m for m in messages)


def test_redispatch_sends_queued_jobs_once_the_broker_is_back(factory: sessionmaker[Session],
                                                               backend: Settings) -> None:
    job_id = queued_job(factory)
    down = make_celery(backend.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    started = time.monotonic()
    assert not dispatch(factory, down, job_id)  # refused quickly, no exception, row untouched
    assert time.monotonic() - started < 10
    assert row(factory, job_id).dispatched_at is None
    up = make_celery(backend)
    assert job_id in redispatch(factory, up, backend)
    assert row(factory, job_id).dispatched_at is not None
    assert job_id not in redispatch(factory, up, backend)  # sent recently: not again
    if backend.broker.startswith("redis"):
        assert redis.Redis.from_url(backend.broker).llen(backend.task_queue) >= 1
    else:
        assert any((backend.broker_dir / "queue").iterdir())
