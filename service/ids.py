"""Public ids: a type prefix (as OpenAI's) and 24 random hex digits."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> float:
    return time.time()
