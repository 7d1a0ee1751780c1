"""RELIABILITY.md faults 2, 3, 6, 7, 9, 10, 11, 12 and 14 (time limit), and a variant of 5 (frozen while holding
the job row's lock), with real processes and real servers.

Each test runs the API and workers as child processes against a private PostgreSQL database and a private Redis
(tests/support/private_servers.py), because several of them stop, restart, flush or cut off those servers; the
embedded variant runs on SQLite and the filesystem broker. Faults are real: SIGKILL, a server stopped by its pid,
FLUSHALL, pg_terminate_backend. Figures the docs quote (recovery times) are printed as `FIGURE name=value`
(`pytest -rP` shows them).
"""

from __future__ import annotations

import json
import pickle
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

from drlora_cli.bootstrap import migrate
from drlora_core.checkpoint import HOLD_STEP_ENV
from service.db import make_engine, make_sessionmaker, transaction
from service.keys import create_key
from service.settings import Settings
from service.sweep import reclaim_lost
from service.tables import Artifact, Checkpoint, Job, JobEvent
from tests.support.file_audit import plant_pickles, unsafe_files
from tests.support.private_servers import PostgresServer, RedisServer, private_pg, private_redis  # noqa: F401 - fixtures
from tests.support.service import (
    HANG_GUARD_S,
    STALL_FLOOR_S,
    Cluster,
    Process,
    dr_lora,
    make_settings,
    running_cluster,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]

JOBS = "/v1/fine_tuning/jobs"
SHORT: dict[str, Any] = {"max_steps": 2, "r_init": 4}  # two steps; r_init = r_target, so no growth is planned


# -- helpers ------------------------------------------------------------------------------------------------------
@pytest.fixture
def pg_redis(private_pg: PostgresServer, private_redis: RedisServer,  # noqa: F811 - fixtures
             tmp_path: Path) -> Iterator[tuple[PostgresServer, RedisServer, str]]:
    """The private servers and a fresh database on the PostgreSQL one (left running again if a test stopped it)."""
    try:
        yield private_pg, private_redis, private_pg.new_database()
    finally:
        if private_pg.proc is None:
            private_pg.start()


def settings_on(pg_redis: tuple[PostgresServer, RedisServer, str], tmp_path: Path, **extra: Any) -> Settings:
    _, redis_server, url = pg_redis
    return make_settings(tmp_path / "data", url, redis_server.url, task_queue=f"rel-{tmp_path.name}", **extra)


def figure(name: str, value: float) -> None:
    print(f"FIGURE {name}={value:.2f}")


def owner(cluster: Cluster, job_id: str) -> Process:
    """The worker process whose pid the job row names."""
    pid = int(cluster.row(job_id).worker_id.rsplit(":", 1)[1])
    return next(w for w in cluster.workers if w.pid == pid)


def running_attempt(cluster: Cluster, job_id: str, attempt: int) -> Job:
    def check() -> Job | None:
        row = cluster.row(job_id)
        return row if (row.status, row.attempt) == ("running", attempt) else None

    return cluster.wait(job_id, check, f"attempt {attempt} to run")


def steps_trained(cluster: Cluster, job_id: str, attempt: int) -> int:
    """How many optimizer steps this attempt has recorded (its metrics events)."""
    with cluster.factory() as s:
        return len(s.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.attempt == attempt,
                                                        JobEvent.type == "metrics")).all())


def assert_trained_once(cluster: Cluster, job_id: str) -> None:
    """Succeeded on its first attempt, one training run, one adapter: nothing lost, nothing doubled."""
    row = cluster.row(job_id)
    assert (row.status, row.attempt, row.lost_attempts) == ("succeeded", 1, 0), (row.status, row.error)
    assert len(cluster.attempts_started(job_id)) == 1 and cluster.adapters(job_id) == 1


def log_text(proc: Process) -> str:
    return proc.log.read_text(errors="replace")


# -- 2: killed on every attempt ----------------------------------------------------------------------------------
def test_a_job_killed_on_every_attempt_fails_after_max_attempts(pg_redis: Any, tmp_path: Path) -> None:
    settings = settings_on(pg_redis, tmp_path, max_attempts=2)
    with running_cluster(settings, tmp_path) as c:
        job_id = c.create(max_steps=60, checkpoint_every=2)
        c.worker()
        c.worker()  # a standby: it takes the job when the first worker dies
        running_attempt(c, job_id, 1)
        c.wait(job_id, lambda: steps_trained(c, job_id, 1) >= 3, "attempt 1 to train 3 steps")
        owner(c, job_id).stop(signal.SIGKILL)
        killed = time.monotonic()
        running_attempt(c, job_id, 2)
        figure("worker_kill_to_next_attempt_claimed_s", time.monotonic() - killed)
        c.wait(job_id, lambda: steps_trained(c, job_id, 2) >= 1, "attempt 2 to train a step")
        figure("worker_kill_to_training_again_s", time.monotonic() - killed)
        owner(c, job_id).stop(signal.SIGKILL)
        job = c.api.wait_status(job_id, ("failed",))
        assert job["error"]["code"] == "worker_lost"
        assert "stopped heartbeating on 2 attempts (max_attempts=2)" in job["error"]["message"]
        assert len(c.attempts_started(job_id)) == 2 and c.adapters(job_id) == 0


# -- 3: longer than the visibility timeout ----------------------------------------------------------------------
def test_a_job_longer_than_the_visibility_timeout_trains_once(pg_redis: Any, tmp_path: Path) -> None:
    """With a 1 s visibility timeout, the message of a job that trains for many seconds is not handed out again
    (workers ack on receipt). Then the redelivery a lost ack would cause is made real: the message is put back as
    an unacknowledged delivery older than the timeout, the idle worker's kombu restores it and consumes it, and the
    claim makes it a no-op."""
    _, redis_server, _ = pg_redis
    visibility = 1.0
    settings = settings_on(pg_redis, tmp_path, broker_visibility_timeout_s=visibility)
    with running_cluster(settings, tmp_path) as c:
        job_id = c.create(max_steps=30, checkpoint_every=0)
        client = redis_server.client()
        raw = client.lindex(settings.task_queue, 0)
        assert raw is not None, "the job's message is in the queue"
        task_id = json.loads(raw)["headers"]["id"]
        workers = [c.worker(), c.worker()]
        row = running_attempt(c, job_id, 1)
        c.wait(job_id, lambda: time.time() - row.started_at > 4 * visibility and steps_trained(c, job_id, 1) >= 2,
               "the job to run for several visibility timeouts")

        def received() -> int:
            return sum(log_text(w).count(f"[{task_id}] received") for w in workers)

        assert received() == 1
        tag = uuid.uuid4().hex  # the state a delivery whose ack was lost leaves in kombu's Redis transport
        client.hset("unacked", tag, json.dumps([json.loads(raw), "", settings.task_queue]))
        client.zadd("unacked_index", {tag: time.time() - 60})
        c.wait(job_id, lambda: received() == 2, "the restored message to be delivered again")
        c.wait(job_id, lambda: any("is not queued (a duplicate or late delivery)" in log_text(w) for w in workers),
               "the redelivery to be skipped")
        c.api.wait_status(job_id, ("succeeded",))
        assert_trained_once(c, job_id)
        client.close()


# -- 6: never heartbeated (SQLite) ------------------------------------------------------------------------------
def test_a_running_job_that_never_heartbeated_is_requeued_on_sqlite(tmp_path: Path) -> None:
    """Embedded (SQLite, filesystem broker): a worker whose heartbeat never comes claims the job and dies; the
    API's sweep requeues the row once its first lease runs out and another worker finishes it."""
    settings = make_settings(tmp_path / "data", task_queue=f"rel-{tmp_path.name}")
    silent = settings.model_copy(update={"heartbeat_interval_s": 3600.0})
    with running_cluster(settings, tmp_path) as c:
        job_id = c.create(max_steps=6, checkpoint_every=2)
        first = c.worker(silent)
        row = running_attempt(c, job_id, 1)
        first.stop(signal.SIGKILL)
        # The lease is still the one the claim wrote: no heartbeat ever renewed it.
        assert c.row(job_id).lease_expires_at == pytest.approx(row.started_at + settings.lease_s, abs=1e-3)
        c.worker()
        c.api.wait_status(job_id, ("succeeded",))
        assert "Worker of attempt 1 lost (no heartbeat); job requeued" in c.messages(job_id)
        row = c.row(job_id)
        assert (row.attempt, row.lost_attempts) == (2, 1) and c.adapters(job_id) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_running_row_without_any_lease_is_requeued(backend: str, private_pg: PostgresServer,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """A `running` row with no lease at all (no claim writes one; an operator's hand edit or an old version could)
    belongs to no live worker: the sweep must not leave it running forever."""
    url = private_pg.new_database() if backend == "postgresql" else ""
    settings = make_settings(tmp_path / "data", url)
    migrate(settings)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        factory = make_sessionmaker(engine)
        with transaction(factory) as s:
            tenant_id = create_key(s, "no-lease").tenant_id
            s.add(Job(id="ftjob-nolease", tenant_id=tenant_id, model="m", training_file="file-x", method="dr_lora",
                      hyperparameters={}, seed=0, status="running", step=0, created_at=time.time(), attempt=1,
                      lost_attempts=0, max_attempts=3, heartbeat_at=None, lease_expires_at=None))
        reclaim_lost(factory)
        with factory() as s:
            job = s.get_one(Job, "ftjob-nolease")
            assert (job.status, job.lost_attempts, job.worker_id) == ("queued", 1, None)
    finally:
        engine.dispose()


# -- 7: killed during a checkpoint write ------------------------------------------------------------------------
def test_a_kill_during_a_checkpoint_write_resumes_from_the_previous_one(pg_redis: Any, tmp_path: Path) -> None:
    settings = settings_on(pg_redis, tmp_path)
    with running_cluster(settings, tmp_path) as c:
        job_id = c.create(max_steps=8, checkpoint_every=2)
        writer = c.worker(extra_env={HOLD_STEP_ENV: "4"})  # the crash drill: step 4's writer stops mid-write
        partial = settings.runs_root / job_id / "attempt-1" / "checkpoints" / ".step-000004.tmp"
        # the drill holds the writer after the tensors, trainer.json and the PEFT adapter/ (published whole)
        c.wait(job_id, lambda: (partial / "adapter").is_dir(), "step 4's checkpoint to be half written")
        assert sorted(p.name for p in partial.iterdir()) == ["adapter", "adapter.safetensors", "optimizer.safetensors",
                                                             "signals.safetensors", "trainer.json"]  # no marker
        writer.stop(signal.SIGKILL)
        killed = time.monotonic()
        checkpoints = c.api.get(f"{JOBS}/{job_id}/checkpoints").json()["data"]
        assert [ck["step_number"] for ck in checkpoints] == [2]
        c.worker()
        running_attempt(c, job_id, 2)
        figure("checkpoint_kill_to_next_attempt_claimed_s", time.monotonic() - killed)
        c.wait(job_id, lambda: (settings.runs_root / job_id / "attempt-2").is_dir(), "attempt 2's folder")
        assert not partial.exists(), "the partial checkpoint was cleaned up when attempt 2 started"
        job = c.api.wait_status(job_id, ("succeeded",))
        assert job["progress"]["step"] == 8
        assert "Training 8 steps from the checkpoint at step 2" in c.messages(job_id)
        row = c.row(job_id)
        assert (row.attempt, row.lost_attempts) == (2, 1) and c.adapters(job_id) == 1
        metrics = c.api.get(f"{JOBS}/{job_id}/metrics").json()["data"]
        assert [m["step"] for m in metrics] == list(range(1, 9))


# -- 9: safe formats only, planted pickles never loaded ---------------------------------------------------------
def test_no_file_is_a_pickle_and_a_planted_pickle_is_never_executed(pg_redis: Any, tmp_path: Path) -> None:
    settings = settings_on(pg_redis, tmp_path)
    with running_cluster(settings, tmp_path) as c:
        job_id = c.create(max_steps=16, checkpoint_every=2)  # far from done when the pause lands
        c.worker()
        c.api.wait_step(job_id, 2)
        assert c.api.post(f"{JOBS}/{job_id}/pause").status_code == 200
        c.api.wait_status(job_id, ("paused",))
        with c.factory() as s:
            latest = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                               .order_by(Checkpoint.step.desc())).first()
        assert latest is not None
        assert unsafe_files(settings.data_dir) == []  # files, runs (checkpoints) and artifacts while paused
        marker = tmp_path / "unpickled"
        planted = plant_pickles(settings.runs_root / latest.path, marker)
        live = tmp_path / "live"
        pickle.loads(plant_pickles(tmp_path, live)[0].read_bytes())  # the payload does fire when unpickled
        assert live.exists() and planted
        assert c.api.post(f"{JOBS}/{job_id}/resume").status_code == 200
        c.api.wait_status(job_id, ("succeeded",))
        assert f"Training 16 steps from the checkpoint at step {latest.step}" in c.messages(job_id)
        assert not marker.exists(), "a planted pickle was unpickled"
        assert unsafe_files(settings.data_dir) == []  # files and artifacts after success
        assert c.adapters(job_id) == 1


# -- 10: Redis down while jobs are submitted --------------------------------------------------------------------
def test_jobs_submitted_while_redis_is_down_are_accepted_and_run_once_it_is_back(pg_redis: Any,
                                                                                   tmp_path: Path) -> None:
    _, redis_server, _ = pg_redis
    settings = settings_on(pg_redis, tmp_path)
    with running_cluster(settings, tmp_path) as c:
        worker = c.worker()
        wait_until(lambda: " ready." in log_text(worker), STALL_FLOOR_S, what="the worker to consume")
        redis_server.stop()
        latencies, job_ids = [], []
        for _ in range(3):
            started = time.monotonic()
            r = c.api.post(JOBS, {"model": "drlora-demo-moe", "training_file": c.file_id,
                                  "method": dr_lora(**SHORT)})
            latencies.append(time.monotonic() - started)
            assert r.status_code == 200, r.text
            job_ids.append(r.json()["id"])
        figure("submit_with_redis_down_max_latency_s", max(latencies))
        assert max(latencies) < 1.5  # kombu used to retry each send for 2 s
        assert c.api.get(JOBS).status_code == 200
        assert [(c.row(j).status, c.row(j).dispatched_at) for j in job_ids] == [("queued", None)] * 3
        redis_server.start()
        back = time.monotonic()
        c.wait(job_ids[0], lambda: all(c.row(j).dispatched_at for j in job_ids), "the sweep to send every job")
        figure("redis_back_to_all_jobs_sent_s", time.monotonic() - back)
        for job_id in job_ids:
            c.api.wait_status(job_id, ("succeeded",))
        figure("redis_back_to_all_three_jobs_done_s", time.monotonic() - back)
        for job_id in job_ids:
            assert_trained_once(c, job_id)
        assert worker.proc.poll() is None


# -- 11: Redis restarted or flushed with jobs queued and running ------------------------------------------------
@pytest.mark.parametrize("fault", ["restart", "flushall"])
def test_redis_restarted_or_flushed_under_load_loses_and_doubles_nothing(fault: str, pg_redis: Any,
                                                                          tmp_path: Path) -> None:
    _, redis_server, _ = pg_redis
    settings = settings_on(pg_redis, tmp_path)
    with running_cluster(settings, tmp_path) as c:
        first = c.create(max_steps=20, checkpoint_every=0)
        queued = [c.create(**SHORT), c.create(**SHORT)]
        worker = c.worker()
        running_attempt(c, first, 1)
        c.wait(first, lambda: steps_trained(c, first, 1) >= 2, "the first job to train")
        assert [c.row(j).status for j in queued] == ["queued", "queued"]
        client = redis_server.client()
        assert client.llen(settings.task_queue) >= 2
        client.close()
        if fault == "restart":
            redis_server.restart()
        else:
            redis_server.flushall()
        client = redis_server.client()
        assert client.llen(settings.task_queue) == 0  # the queued jobs' messages are gone
        client.close()
        assert c.row(first).status == "running"  # the fault hit mid-run
        for job_id in [first, *queued]:
            c.api.wait_status(job_id, ("succeeded",))
        for job_id in [first, *queued]:
            assert_trained_once(c, job_id)
        assert worker.proc.poll() is None  # the same worker reconnected and ran them all


# -- 12: PostgreSQL cut off and restarted mid-job ---------------------------------------------------------------
def test_postgres_cut_and_restarted_mid_job_recovers_within_seconds(pg_redis: Any, tmp_path: Path) -> None:
    pg, _, url = pg_redis
    settings = settings_on(pg_redis, tmp_path, lease_s=15.0)  # the restart must stay well inside the lease
    with running_cluster(settings, tmp_path) as c:
        job_id = c.create(max_steps=30, checkpoint_every=4)
        worker = c.worker()
        c.api.wait_step(job_id, 2)
        assert pg.terminate_connections(url) >= 1
        assert c.api.get(f"{JOBS}/{job_id}").status_code == 200  # stale pooled connections are replaced at once
        step = c.api.job(job_id)["progress"]["step"]
        c.api.wait_step(job_id, step + 1)  # training goes on

        went_down = time.monotonic()
        pg.stop()
        outage = [_timed_get(c, f"{JOBS}/{job_id}") for _ in range(3)]
        # The database is down, so the row cannot show progress: a plain deadline, many heartbeats long.
        wait_until(lambda: "heartbeat of" in log_text(worker) and "database unreachable" in log_text(worker), 60,
                   what="the worker's heartbeat and its training writes to fail (and be retried)")
        pg.start()
        up = time.monotonic()
        wait_until(lambda: _timed_get(c, f"{JOBS}/{job_id}")[0] == 200, 30, interval=0.05,
                   what="the API to answer again")
        recovered = time.monotonic()
        figure("pg_restart_api_recovery_after_server_up_s", recovered - up)
        figure("pg_restart_api_outage_total_s", recovered - went_down)
        figure("pg_down_max_response_s", max(t for _, t in outage))
        assert [code for code, _ in outage] == [503] * 3 and max(t for _, t in outage) < 5
        assert recovered - up < 5
        c.api.wait_status(job_id, ("succeeded",))
        row = c.row(job_id)
        assert (row.attempt, row.lost_attempts) == (1, 0) and c.adapters(job_id) == 1
        metrics = c.api.get(f"{JOBS}/{job_id}/metrics").json()["data"]
        assert [m["step"] for m in metrics] == list(range(1, 31))


def test_a_worker_cut_off_from_postgres_past_its_lease_stops_without_publishing(pg_redis: Any,
                                                                               tmp_path: Path) -> None:
    pg, _, _ = pg_redis
    settings = settings_on(pg_redis, tmp_path)
    with running_cluster(settings, tmp_path) as c:
        job_id = c.create(max_steps=14, checkpoint_every=2)
        worker = c.worker()
        c.api.wait_step(job_id, 3)
        pg.stop()
        # The database is down: the worker's log is the progress (it gives up once its lease is out).
        wait_until(lambda: "stopping without publishing" in log_text(worker), STALL_FLOOR_S,
                   what="the worker to give up")
        pg.start()
        job = c.api.wait_status(job_id, ("succeeded",))  # the sweep requeues; attempt 2 ends it
        assert job["progress"]["step"] == 14 and worker.proc.poll() is None
        row = c.row(job_id)
        assert (row.attempt, row.lost_attempts) == (2, 1)
        with c.factory() as s:
            paths = s.scalars(select(Artifact.path).where(Artifact.job_id == job_id, Artifact.kind == "adapter"))
            assert list(paths) == [f"{job_id}/attempt-2/adapter.zip"]
        assert not (settings.artifact_root / job_id / "attempt-1" / "adapter.zip").exists()


def _timed_get(cluster: Cluster, path: str) -> tuple[int, float]:
    started = time.monotonic()
    code = cluster.api.get(path).status_code
    return code, time.monotonic() - started


# -- 14: the job time limit -------------------------------------------------------------------------------------
def test_a_job_past_its_time_limit_fails_and_the_worker_takes_the_next(pg_redis: Any, tmp_path: Path) -> None:
    limit = 20.0
    settings = settings_on(pg_redis, tmp_path, job_time_limit_s=limit)
    with running_cluster(settings, tmp_path) as c:
        endless = c.create(max_steps=2000, checkpoint_every=0)
        short = c.create(**SHORT)
        worker = c.worker()
        job = c.api.wait_status(endless, ("failed",))
        assert job["error"]["code"] == "timeout" and "time limit of 20 s" in job["error"]["message"]
        c.api.wait_status(short, ("succeeded",))
        row = c.row(endless)
        assert limit <= row.finished_at - row.started_at < limit + 30
        assert worker.proc.poll() is None and c.adapters(endless) == 0 and c.adapters(short) == 1
        [first], [second] = c.attempts_started(endless), c.attempts_started(short)
        assert first.endswith(f":{worker.pid}") and second.endswith(f":{worker.pid}")  # the same worker ran both


# -- 5 (a variant test_svc_faults cannot pin down): frozen while holding the job's row lock ----------------------
def test_a_worker_frozen_inside_a_transaction_neither_stalls_the_sweep_nor_keeps_its_job(pg_redis: Any,
                                                                                       tmp_path: Path) -> None:
    """SIGSTOP lands while the worker is inside a fenced write, so its session holds the job row's lock. The sweep's
    requeue of that row (an UPDATE) would wait for the lock for as long as the worker stays frozen: the server ends
    a worker session idle in a transaction, and the sweep skips rows it cannot lock instead of waiting on them."""
    pg, _, url = pg_redis
    settings = settings_on(pg_redis, tmp_path)
    with running_cluster(settings, tmp_path) as c:
        job_id = c.create(max_steps=40, checkpoint_every=5)
        frozen = c.worker()
        c.api.wait_step(job_id, 2)
        try:
            freeze_inside_a_write(frozen, pg, url)
            c.worker()
            running_attempt(c, job_id, 2)
        finally:
            frozen.send(signal.SIGCONT)
        c.api.wait_status(job_id, ("succeeded",))
        row = c.row(job_id)
        assert (row.attempt, row.lost_attempts) == (2, 1) and c.adapters(job_id) == 1
        assert frozen.proc.poll() is None


def freeze_inside_a_write(worker: Process, pg: PostgresServer, url: str, tries: int = 2000) -> None:
    """SIGSTOP the worker at a moment its session holds an open write transaction (it has an xid), retrying
    (SIGCONT, a few ms, SIGSTOP again) until one lands there."""
    name = url.rsplit("/", 1)[1]
    query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'idle in transaction' "
             "AND backend_xid IS NOT NULL AND application_name = 'drlora-worker'")
    with psycopg.connect(pg.admin_url(), autocommit=True, connect_timeout=5) as admin:
        for _ in range(tries):
            worker.send(signal.SIGSTOP)
            time.sleep(0.05)  # let the server settle the statement in flight
            if admin.execute(query, (name,)).fetchone() == (1,):
                return
            worker.send(signal.SIGCONT)
            time.sleep(0.003 * (_ % 7))
    raise AssertionError("never caught the worker inside a write transaction")
