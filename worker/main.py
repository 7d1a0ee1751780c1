"""`drlora worker`: one Celery worker process consuming training jobs (run one per GPU)."""

from __future__ import annotations

import os

from service.settings import Settings
from worker.alive import alive_path, start_touching
from worker.app import create_worker_app


def run_worker(settings: Settings, *, loglevel: str = "INFO") -> None:
    app = create_worker_app(settings)
    start_touching(alive_path(settings.data_dir))  # read by `drlora worker health`
    app.worker_main([
        "worker", f"--loglevel={loglevel}", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
        "--without-gossip", "--without-mingle", "--without-heartbeat", f"--queues={settings.task_queue}",
        f"--hostname=drlora-worker-{os.getpid()}@%h",
    ])
