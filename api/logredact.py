"""Keeps API keys out of every log line, whichever library writes it.

The service never logs the Authorization header, but a client can put a key where servers do log: in the URL (the
access log writes the path and query string) or in a body field that ends up in an error. So every log record has
anything shaped like a key masked when it is created, before any handler or formatter sees it. Only the string
arguments are rewritten, never their number, since uvicorn's access formatter unpacks its arguments as a tuple.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from service.keys import KEY_PREFIX

KEY_SHAPE = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_\-]{16,}")
MASK = KEY_PREFIX + "***"

_installed = False


def redact(value: Any) -> Any:
    return KEY_SHAPE.sub(MASK, value) if isinstance(value, str) else value


def install_key_redaction() -> None:
    """Wraps the process's log record factory once; later calls do nothing."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) for k, v in record.args.items()}
        return record

    logging.setLogRecordFactory(masked_record)
    _installed = True
