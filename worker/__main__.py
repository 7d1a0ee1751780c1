"""`python -m worker`: the worker with the environment's settings (what `drlora serve` starts as its child)."""

from __future__ import annotations

from service.logsetup import configure_logging
from service.settings import get_settings
from worker.main import run_worker

if __name__ == "__main__":
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format or "json")
    run_worker(settings)
