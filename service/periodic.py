"""A daemon thread that calls one function every interval until stopped: the API's sweep, the workers' webhook
delivery loop. A failing call is logged and tried again at the next interval, never fatal."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Periodic:
    def __init__(self, name: str, interval_s: float, work: Callable[[], object], *, log: logging.Logger,
                 stop_timeout_s: float = 10.0) -> None:
        self.name, self.interval_s, self.work, self.log = name, interval_s, work, log
        self.stop_timeout_s = stop_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ends the loop; waits for a call in progress (at most `stop_timeout_s`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.stop_timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.work()
            except Exception:
                self.log.exception("%s failed; trying again in %.1f s", self.name, self.interval_s)
