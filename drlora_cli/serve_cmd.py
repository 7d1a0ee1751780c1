"""`drlora serve`: the whole service on one machine, embedded.

One process runs the API (uvicorn) and the sweep; a child process runs one Celery worker. They share SQLite (WAL)
and kombu's filesystem broker under the data directory, so nothing else has to be installed or started. The child
runs in its own session so that Ctrl-C reaches only this process: uvicorn stops, then the worker gets SIGTERM, lets
a running job checkpoint and requeue itself, and is killed if it has not exited after a grace period. A worker that
dies while the service runs is started again (its job comes back through the sweep).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from drlora_cli.server_cmds import UVICORN_LOGGING
from service.logsetup import configure_logging
from service.settings import Settings

WORKER_GRACE_S = 60.0
WORKER_CHECK_S = 2.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the API, one worker, SQLite and a serverless broker on this machine",
                              description="Start drlora embedded; Ctrl-C stops it.")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--data-dir", type=Path, help="where the database, broker, files and artifacts live "
                                                 "(default DRLORA_DATA_DIR or ~/.drlora)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from drlora_cli.bootstrap import first_key, migrate, register_demo_model
    from drlora_cli.server_cmds import settings_from

    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format or "text")  # a person reads it at a terminal
    migrate(settings)
    register_demo_model(settings)
    key_file = settings.data_dir / "api_key"
    key = first_key(settings, key_file)
    worker = WorkerSupervisor(settings)
    worker.start()
    url = f"http://{settings.host}:{settings.port}"
    print(f"\ndrlora is running at {url}  (data in {settings.data_dir})", flush=True)
    print(f"dashboard: {url}/ui/  (sign in with the API key)", flush=True)
    if key:
        print(f"API key (shown once, also written to {key_file}):\n{key}", flush=True)
    else:
        print(f"API key: in {key_file}", flush=True)
    print(f"\n  export DRLORA_BASE_URL={url} DRLORA_API_KEY=$(cat {key_file})\n\nCtrl-C stops it.\n", flush=True)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                    **UVICORN_LOGGING)
    finally:
        worker.stop()
    return 0


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["DRLORA_DATA_DIR"] = str(settings.data_dir.resolve())
    env["DRLORA_LOG_FORMAT"] = settings.log_format or "text"  # the same as the API's, in one terminal
    return env


class WorkerSupervisor:
    """Keeps one worker process running (restarting it if it dies, e.g. killed for memory) until `stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process = start_worker(settings)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drlora-worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(WORKER_CHECK_S):
            code = self.process.poll()
            if code is not None and not self._stopping.is_set():
                print(f"the worker exited with status {code}; starting a new one", file=sys.stderr, flush=True)
                self.process = start_worker(self.settings)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=WORKER_CHECK_S + 1)
        stop_worker(self.process)


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "worker"], env=worker_env(settings), start_new_session=True)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    print("stopping the worker (a running job checkpoints and is requeued)...", file=sys.stderr, flush=True)
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=WORKER_GRACE_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
