"""Worker failures show the tenant a stable error code and a safe message; the detail (exception, paths) goes to the
server log with the job id (issue 10, finding 6)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

import worker.job
from service.settings import Settings
from service.statuses import JobStatus
from tests.support.job_rows import job_in, row_values, sqlite_factory
from tests.support.service import make_settings
from worker.job import run_job

pytestmark = pytest.mark.timeout(60)

SECRET = "/srv/drlora/secret/modeling_moe.py line 7: CUDA error at 0xdeadbeef"


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with sqlite_factory(tmp_path / "db.sqlite") as f:
        yield f


def test_an_unexpected_error_shows_a_code_and_a_safe_message_and_logs_the_detail(
        factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    settings: Settings = make_settings(tmp_path / "data", heartbeat_interval_s=0.5)
    job_id = job_in(factory, JobStatus.queued)

    def explode(*_: object) -> str:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(worker.job, "_train_and_finish", explode)
    with caplog.at_level(logging.ERROR, logger="drlora.worker"):
        assert run_job(job_id, factory, settings) == JobStatus.failed
    error = row_values(factory, job_id)["error"]
    assert error["code"] == "training_error"
    assert "RuntimeError" not in error["message"] and "/srv" not in error["message"] and "0xdead" not in error["message"]
    assert job_id in error["message"]  # what an operator looks for in the log
    logged = [r for r in caplog.records if job_id in r.getMessage()]
    assert logged and any(SECRET in (r.exc_text or "") or (r.exc_info and SECRET in str(r.exc_info[1]))
                          for r in logged)
