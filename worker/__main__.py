"""`python -m worker`: the worker with the environment's settings (what `drlora serve` starts as its child)."""

from __future__ import annotations

import logging

from service.settings import get_settings
from worker.main import run_worker

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(get_settings())
