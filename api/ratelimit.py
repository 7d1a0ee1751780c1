"""Per-API-key rate limits: a burst of `rate_limit_requests`, then that many per `rate_limit_window_s`.

The limit is GCRA (a token bucket kept as one timestamp, the "theoretical arrival time"), so it has no window
boundary where twice the limit gets through, and the wait it reports is exact. With a Redis broker every API process
shares one bucket per key in Redis (a Lua script, on Redis's clock, so several hosts agree); embedded, the bucket
lives in this process. Buckets are keyed by the key's sha256, never the key itself.

If Redis is unreachable the limiter fails open to this process's buckets for a few seconds: a broker outage must not
turn every request into a 500 or a hang (submissions must be accepted while Redis is down).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Protocol

import redis

from service.errors import TooManyRequests
from service.settings import Settings

log = logging.getLogger("drlora.ratelimit")

REDIS_PREFIX = "drlora:ratelimit:"
REDIS_TIMEOUT_S = 0.5
REDIS_RETRY_S = 5.0  # after a Redis error, limit in-process this long before trying Redis again
LOCAL_PRUNE_AT = 10_000

# KEYS[1]: the bucket; ARGV: interval, window. Returns the seconds to wait as a string (0 = allowed, counted).
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[1])
local tat = math.max(stored and tonumber(stored) or now, now)
local wait = tat + interval - window - now
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tat + interval - now) * 1000))
return '0'
"""


class RateLimiter(Protocol):
    def hit(self, key_hash: str) -> float:
        """Counts one request; answers 0 when it may proceed, else the seconds until one would be allowed."""
        ...

    def close(self) -> None: ...


def gcra(tat: float | None, now: float, interval: float, window: float) -> tuple[float | None, float]:
    """(the bucket's new arrival time, or None when refused; the wait). The same arithmetic as `GCRA_LUA`."""
    tat = max(tat if tat is not None else now, now)
    wait = tat + interval - window - now
    return (None, wait) if wait > 0 else (tat + interval, 0.0)


class NoLimit:
    def hit(self, key_hash: str) -> float:
        return 0.0

    def close(self) -> None:
        pass


class LocalLimiter:
    """Buckets in this process (embedded mode, and the fallback while Redis is away)."""

    def __init__(self, requests: int, window_s: float) -> None:
        self.interval, self.window = window_s / requests, window_s
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def hit(self, key_hash: str) -> float:
        now = time.monotonic()
        with self._lock:
            tat, wait = gcra(self._tats.get(key_hash), now, self.interval, self.window)
            if tat is not None:
                self._tats[key_hash] = tat
            if len(self._tats) > LOCAL_PRUNE_AT:  # forget full buckets so that the dict stays small
                self._tats = {k: v for k, v in self._tats.items() if v > now}
            return wait

    def close(self) -> None:
        pass


class RedisLimiter:
    """Buckets in Redis, shared by every API process that uses the same Redis database."""

    def __init__(self, url: str, requests: int, window_s: float) -> None:
        self.interval, self.window = window_s / requests, window_s
        self.client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S,
                                           socket_timeout=REDIS_TIMEOUT_S)
        self._script = self.client.register_script(GCRA_LUA)
        self._fallback = LocalLimiter(requests, window_s)
        self._redis_down_until = 0.0

    def hit(self, key_hash: str) -> float:
        if time.monotonic() >= self._redis_down_until:
            try:
                return float(self._script(keys=[REDIS_PREFIX + key_hash], args=[self.interval, self.window]))
            except redis.RedisError as e:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_S
                log.warning("rate limiter: Redis failed (%s); limiting in this process for %.0f s",
                            type(e).__name__, REDIS_RETRY_S)
        return self._fallback.hit(key_hash)

    def close(self) -> None:
        self.client.close()


def make_limiter(settings: Settings) -> RateLimiter:
    """Chosen once at startup: Redis when the broker is Redis, else this process; none when disabled."""
    if settings.rate_limit_requests <= 0:
        return NoLimit()
    if settings.broker.startswith(("redis://", "rediss://")):
        return RedisLimiter(settings.broker, settings.rate_limit_requests, settings.rate_limit_window_s)
    return LocalLimiter(settings.rate_limit_requests, settings.rate_limit_window_s)


def enforce(limiter: RateLimiter, key_hash: str, settings: Settings) -> None:
    """Raises 429 with Retry-After (whole seconds, at least 1) when the key is over its limit."""
    wait = limiter.hit(key_hash)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise TooManyRequests(
            f"rate limit reached for this API key ({settings.rate_limit_requests} requests per "
            f"{settings.rate_limit_window_s:g} s); retry after {seconds} s", code="rate_limit_exceeded",
            retry_after=seconds)
