"""`drlora worker`: one Celery worker process consuming training jobs (run one per GPU)."""

from __future__ import annotations

import os

from service.db import make_engine, make_sessionmaker
from service.settings import Settings
from worker.alive import alive_path, start_touching
from worker.app import create_worker_app
from worker.capacity import Reporter
from worker.job import worker_id


def run_worker(settings: Settings, *, loglevel: str = "INFO") -> None:
    app = create_worker_app(settings)
    reports = make_sessionmaker(make_engine(settings.sqlalchemy_url, application_name="drlora-worker-capacity"))
    reporter = Reporter(reports, worker_id(), settings.device)  # read by create's memory check
    start_touching(alive_path(settings.data_dir), settings.heartbeat_interval_s, reporter.report)  # `worker health`
    app.worker_main([
        "worker", f"--loglevel={loglevel}", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
        "--without-gossip", "--without-mingle", "--without-heartbeat", f"--queues={settings.task_queue}",
        f"--hostname=drlora-worker-{os.getpid()}@%h",
    ])
