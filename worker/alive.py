"""The worker's liveness file, for a container healthcheck that must answer while a job trains.

Celery's `inspect ping` goes through the consumer loop, which the solo pool blocks for a whole job, so a training
worker would look dead. Instead a daemon thread touches `<data_dir>/workers/<hostname>.alive` every few seconds for
as long as the process lives; `drlora worker health` reads its age. The same thread runs `on_tick` (the worker
passes `worker.capacity.Reporter.report`, which upserts its `workers` row with its device and memory). Standard
library only.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

TOUCH_INTERVAL_S = 10.0
log = logging.getLogger("drlora.worker")


def alive_path(data_dir: Path, host: str | None = None) -> Path:
    return data_dir / "workers" / f"{host or socket.gethostname()}.alive"


def start_touching(path: Path, interval_s: float = TOUCH_INTERVAL_S,
                   on_tick: Callable[[], None] | None = None) -> threading.Event:
    """Touch `path` (then call `on_tick`) now and every `interval_s` in a daemon thread until the returned event
    is set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def touch_until_stopped() -> None:
        while not stop.is_set():
            try:
                path.touch()
            except OSError as e:  # a full or vanished volume: the check will see the file age and say so
                log.warning("could not touch %s: %s", path, e)
            if on_tick is not None:
                on_tick()
            stop.wait(interval_s)

    threading.Thread(target=touch_until_stopped, name="drlora-alive", daemon=True).start()
    return stop


def check_alive(path: Path, max_age_s: float) -> tuple[bool, str]:
    """(healthy, why): healthy when the file was touched within `max_age_s`."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"{path} does not exist: the worker has not started (or runs with another data dir)"
    if age > max_age_s:
        return False, f"{path} is {age:.0f} s old (limit {max_age_s:.0f} s): the worker process is stuck or gone"
    return True, f"{path} touched {age:.0f} s ago"
