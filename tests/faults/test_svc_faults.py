"""Workers that die, freeze or are told to stop, on PostgreSQL + Redis: the job continues from its last recorded
checkpoint on the next worker, with a new attempt number, and publishes exactly one adapter; a frozen worker that
wakes up after losing its lease has every write refused."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from service.tables import JobEvent
from tests.support.service import HANG_GUARD_S, Cluster, make_settings, running_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]


@pytest.fixture
def cluster(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    settings = make_settings(tmp_path / "data", pg_url, redis_url, task_queue=f"drlora-faults-{tmp_path.name}")
    with running_cluster(settings, tmp_path) as c:
        yield c


def test_sigkill_mid_training_resumes_from_the_last_checkpoint(cluster: Cluster) -> None:
    job_id = cluster.create(max_steps=10, checkpoint_every=3)
    first = cluster.worker()
    cluster.api.wait_step(job_id, 5)
    first.stop(signal.SIGKILL)
    checkpoint_steps = [c["step_number"] for c in cluster.api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")
                        .json()["data"]]
    assert checkpoint_steps and max(checkpoint_steps) >= 3
    cluster.worker()  # the sweep sees the lease expire, requeues the job and sends it again
    job = cluster.api.wait_status(job_id, ("succeeded",))
    assert job["progress"]["step"] == 10
    row = cluster.row(job_id)
    assert (row.attempt, row.lost_attempts) == (2, 1) and cluster.adapters(job_id) == 1
    resumed = [m for m in cluster.messages(job_id) if m.startswith("Training 10 steps from the checkpoint at step")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= 3
    metrics = cluster.api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, 11))


def test_sigterm_checkpoints_and_requeues_for_the_next_worker(cluster: Cluster) -> None:
    job_id = cluster.create(max_steps=10, checkpoint_every=0)
    first = cluster.worker()
    cluster.api.wait_step(job_id, 2)
    first.send(signal.SIGTERM)
    assert first.proc.wait(timeout=60) == 0
    row = cluster.row(job_id)
    assert row.status == "queued" and row.lost_attempts == 0
    step = max(c["step_number"] for c in cluster.api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")
               .json()["data"])
    assert step >= 2
    cluster.worker()
    cluster.api.wait_status(job_id, ("succeeded",))
    assert f"Training 10 steps from the checkpoint at step {step}" in cluster.messages(job_id)
    assert cluster.row(job_id).attempt == 2 and cluster.adapters(job_id) == 1


def test_a_frozen_worker_past_its_lease_is_fenced_when_it_wakes(cluster: Cluster) -> None:
    job_id = cluster.create(max_steps=10, checkpoint_every=3)
    frozen = cluster.worker()
    cluster.api.wait_step(job_id, 4)
    frozen.send(signal.SIGSTOP)
    try:
        # The lease runs out, the sweep requeues the job and a second worker takes attempt 2.
        cluster.worker()
        cluster.wait(job_id, lambda: cluster.row(job_id).attempt == 2, "attempt 2 to start")
    finally:
        frozen.send(signal.SIGCONT)
    job = cluster.api.wait_status(job_id, ("succeeded",))
    assert job["progress"]["step"] == 10
    row = cluster.row(job_id)
    assert (row.attempt, row.lost_attempts) == (2, 1) and cluster.adapters(job_id) == 1
    with cluster.factory() as s:
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
    takeover = next(e.id for e in events if e.message.startswith("Attempt 2 started"))
    assert [e.message for e in events if e.attempt == 1 and e.id > takeover] == []  # no late write got through
    assert frozen.proc.poll() is None  # the woken worker refused its stale job and went on serving
    assert "no longer owns it" in frozen.output() or "was taken over" in frozen.output()
