"""Log output of the API and the worker: one JSON object a line (the default of `drlora api` and `drlora worker`,
for log collectors) or plain text (`drlora serve`, for a person at a terminal), chosen by `DRLORA_LOG_FORMAT`.

Each line carries the request id and the job id when they are known. The request id is a context variable set per
request by the API's middleware (sync routes run in a thread that copies the context). The worker runs one job per
process (the solo pool), and its heartbeat thread does not inherit a context, so the worker binds the job id to the
whole process while the job runs. Key redaction (api/logredact.py) rewrites a record when it is created, so it
applies to both formats alike.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a caller may attach with `extra=`, written as they are (values the service computed, never raw input).
EXTRA_FIELDS = ("method", "route", "status", "duration_ms", "delivery_id", "event_type", "attempt")

request_id_var: ContextVar[str | None] = ContextVar("drlora_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("drlora_job_id", default=None)
_process_job_id: str | None = None


@contextmanager
def job_context(job_id: str, *, whole_process: bool = False) -> Iterator[None]:
    """Log lines written inside carry `job_id`; with `whole_process`, those of every thread of the process too."""
    global _process_job_id
    token = job_id_var.set(job_id)
    if whole_process:
        _process_job_id = job_id
    try:
        yield
    finally:
        job_id_var.reset(token)
        if whole_process:
            _process_job_id = None


class ContextFilter(logging.Filter):
    """Stamps `request_id` and `job_id` on every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or request_id_var.get()
        record.job_id = getattr(record, "job_id", None) or job_id_var.get() or _process_job_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        for name in ("request_id", "job_id", *EXTRA_FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain format, with the ids appended when known."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [f"{name}={value}" for name in ("request_id", "job_id") if (value := getattr(record, name, None))]
        return f"{text} [{' '.join(ids)}]" if ids else text


def configure_logging(level: str, log_format: str) -> None:
    """One handler on the root logger (replacing any earlier one), to stderr, in `log_format` ("json" or "text")."""
    if log_format not in ("json", "text"):
        raise ValueError(f"log_format must be 'json' or 'text', not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
