"""A lean polling load: N simulated users, each a loop of GETs a dashboard makes while a job trains (the job, its
events, metrics and ranks, the job list), with a short think time; asyncio and one httpx connection pool.

Every answer that is not 2xx, and every transport error or timeout, is an error. Latency is measured per request
with a monotonic clock around the whole exchange (sending, waiting, reading the body).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

THINK_S = 0.2  # between one user's requests
TIMEOUT_S = 30.0


def polled_paths(job_id: str) -> list[str]:
    job = f"/v1/fine_tuning/jobs/{job_id}"
    return [job, f"{job}/events?limit=20", f"{job}/metrics", f"{job}/ranks", "/v1/fine_tuning/jobs?limit=20"]


@dataclass
class LoadResult:
    users: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)

    def percentile(self, q: float) -> float:
        """The nearest-rank percentile of the successful requests' latencies, in seconds."""
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.nan

    def summary(self) -> dict[str, Any]:
        return {"users": self.users, "seconds": round(self.seconds, 1), "requests": self.requests,
                "errors": len(self.errors), "requests_per_s": round(self.requests / self.seconds, 1),
                "p50_ms": round(self.percentile(50) * 1000, 1), "p95_ms": round(self.percentile(95) * 1000, 1),
                "p99_ms": round(self.percentile(99) * 1000, 1), "max_ms": round(max(self.latencies) * 1000, 1)}


async def _user(client: httpx.AsyncClient, paths: list[str], deadline: float, offset: int, result: LoadResult) -> None:
    i = offset
    while time.monotonic() < deadline:
        path = paths[i % len(paths)]
        i += 1
        start = time.monotonic()
        try:
            r = await client.get(path)
        except httpx.HTTPError as e:
            result.errors.append(f"GET {path}: {type(e).__name__}: {e}")
            continue
        if r.is_success:
            result.latencies.append(time.monotonic() - start)
        else:
            result.errors.append(f"GET {path}: {r.status_code} {r.text[:200]}")
        await asyncio.sleep(THINK_S)


async def _run(url: str, authorization: str, paths: list[str], users: int, duration_s: float) -> LoadResult:
    result = LoadResult(users=users)
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": authorization}, timeout=TIMEOUT_S,
                                 limits=limits) as client:
        start = time.monotonic()
        deadline = start + duration_s
        await asyncio.gather(*(_user(client, paths, deadline, n, result) for n in range(users)))
        result.seconds = time.monotonic() - start
    return result


def poll(url: str, authorization: str, job_id: str, *, users: int, duration_s: float) -> LoadResult:
    """Polls for `duration_s` with `users` users, each sending the `Authorization` header given."""
    return asyncio.run(_run(url, authorization, polled_paths(job_id), users, duration_s))
