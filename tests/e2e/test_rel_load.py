"""RELIABILITY 24b: a polling load while a job trains, on PostgreSQL + Redis and on the embedded SQLite stack.

A real API process (uvicorn) and a real worker train the demo model; 30 simulated users poll the job, its events,
metrics and ranks and the job list for 60 s (tests/service/poll_load.py). Every answer must be 2xx; the job must
keep training throughout; requests/s and latency percentiles are printed and written to
`<pytest basetemp>/load-<backend>.json`. On SQLite neither the API's nor the worker's log may say "database is locked".

The per-key rate limit is off: 30 users on one key poll far above its default (600 a minute), and the load is about
the API and the database under polling, not about the limiter (RELIABILITY 23 tests that).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.support.poll_load import LoadResult, poll
from tests.support.service import HANG_GUARD_S, Api, fresh_pg_database, make_settings, running_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]

USERS = 30
DURATION_S = 60.0
# Long enough to outlast the load on any machine; cancelled once the load ends.
TRAINING = {"max_steps": 100_000, "checkpoint_every": 10, "growth_interval": 4}


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A database of its own (no other test's rows, sweeps or workers), a queue of its own, no rate limit."""
    extra: dict[str, Any] = {"task_queue": f"drlora-load-{secrets.token_hex(4)}", "rate_limit_requests": 0}
    with contextlib.ExitStack() as stack:
        urls = ("", "")
        if request.param == "postgresql":
            urls = (stack.enter_context(fresh_pg_database("drlora_load")), request.getfixturevalue("redis_url"))
        yield make_settings(tmp_path / "data", *urls, **extra)


def step(api: Api, job_id: str) -> int:
    job = api.job(job_id)
    assert job["status"] == "running", job
    return int(job["progress"]["step"])


def record(result: LoadResult, name: str, tmp_path_factory: pytest.TempPathFactory,
           capsys: pytest.CaptureFixture[str]) -> None:
    summary = {"backend": name, **result.summary()}
    (tmp_path_factory.getbasetemp() / f"load-{name}.json").write_text(json.dumps(summary, indent=1))
    with capsys.disabled():  # the figures show in every run, captured or not
        print(f"\npolling load on {name}: {json.dumps(summary)}")


def test_polling_while_a_job_trains_answers_every_request(backend: Settings, tmp_path: Path,
                                                          tmp_path_factory: pytest.TempPathFactory,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    name = "sqlite" if backend.is_sqlite else "postgresql"
    with running_cluster(backend, tmp_path) as cluster:
        worker = cluster.worker()
        job_id = cluster.create(**TRAINING)
        cluster.api.wait_step(job_id, 1)
        first = step(cluster.api, job_id)
        result = poll(str(cluster.api.http.base_url), cluster.api.http.headers["Authorization"], job_id,
                      users=USERS, duration_s=DURATION_S)
        last = step(cluster.api, job_id)  # still training, and it went on training under the load
        assert cluster.api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
        cluster.api.wait_status(job_id, ("cancelled",))
    record(result, name, tmp_path_factory, capsys)
    assert not result.errors, f"{len(result.errors)} errors, first: {result.errors[:5]}"
    assert last > first, (first, last)
    assert result.requests > USERS * 10, result.summary()
    if backend.is_sqlite:
        for log in (cluster.api_proc.log, worker.log):
            text = log.read_text(errors="replace")
            assert "database is locked" not in text, text[-6000:]
