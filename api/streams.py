"""How many event streams each API key holds open in this process: a stream costs a worker thread per poll and a
connection per client, so one key may not take them all (`max_streams_per_key`; 429 above)."""

from __future__ import annotations

import threading
from collections import Counter

from service.errors import TooManyRequests

RETRY_AFTER_S = 5


class StreamSlots:
    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, key_hash: str) -> None:
        with self._lock:
            if self.per_key and self._open[key_hash] >= self.per_key:
                raise TooManyRequests(
                    f"this API key already holds {self.per_key} open event streams; close one, or poll "
                    "GET .../events with `after` instead", code="too_many_streams", retry_after=RETRY_AFTER_S)
            self._open[key_hash] += 1

    def give_back(self, key_hash: str) -> None:
        with self._lock:
            self._open[key_hash] -= 1
            if self._open[key_hash] <= 0:
                del self._open[key_hash]

    def held(self, key_hash: str) -> int:
        with self._lock:
            return self._open[key_hash]
