"""`GET /metrics`: the Prometheus exposition for operators (no `/v1`; the per-job series is `.../jobs/{id}/metrics`).

Requests are counted by method, route template (never the raw path, so ids do not multiply the series) and status,
with a latency histogram, by `api/observe.py`. The database gauges are read when Prometheus scrapes, by a custom
collector in one short session (service/gauges.py), so nothing holds a connection between scrapes and every API
process answers the same numbers. Each app has its own registry (tests build several apps in one process).

Access: open by default, as scrape targets usually are; `DRLORA_METRICS_TOKEN` requires `Authorization: Bearer
TOKEN`, and `DRLORA_METRICS_ENABLED=false` removes the route (404). The exposition names no tenant, but it does list
running job ids and worker host names, so a deployment whose API port is public should set the token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from service.errors import Unauthorized
from service.gauges import Gauges, read_gauges
from service.ids import now
from service.statuses import JobStatus

log = logging.getLogger("drlora.api")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class DatabaseCollector(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def describe(self) -> list[Metric]:
        return []  # nothing at registration: the families exist once the database is read

    def collect(self) -> Iterator[Metric]:
        try:
            with self.factory() as session:
                gauges = read_gauges(session)
        except Exception as e:  # a scrape must still answer: say the database is down
            log.warning("metrics: could not read the database: %s", type(e).__name__)
            yield GaugeMetricFamily("drlora_database_up", "Whether the last scrape could read the database", value=0)
            return
        yield GaugeMetricFamily("drlora_database_up", "Whether the last scrape could read the database", value=1)
        yield from families(gauges, now())


def families(gauges: Gauges, t: float) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("drlora_jobs", "Fine-tuning jobs by status", labels=["status"])
    for status, count in gauges.jobs.items():
        jobs.add_metric([status], count)
    yield jobs
    yield GaugeMetricFamily("drlora_queue_depth", "Jobs queued and waiting for a worker", value=gauges.jobs[JobStatus.queued])
    beat = GaugeMetricFamily("drlora_worker_heartbeat_timestamp_seconds",
                             "When the worker running a job last renewed its lease", labels=["worker_id", "job_id"])
    age = GaugeMetricFamily("drlora_worker_heartbeat_age_seconds",
                            "Seconds since the worker running a job last renewed its lease",
                            labels=["worker_id", "job_id"])
    steps = GaugeMetricFamily("drlora_job_steps_per_second", "Training steps per second of a running job",
                              labels=["job_id"])
    tokens = GaugeMetricFamily("drlora_job_tokens_per_second", "Training tokens per second of a running job",
                               labels=["job_id"])
    for job in gauges.running:
        if job.heartbeat_at is not None:
            beat.add_metric([job.worker_id, job.job_id], job.heartbeat_at)
            age.add_metric([job.worker_id, job.job_id], max(0.0, t - job.heartbeat_at))
        if job.steps_per_second is not None:
            steps.add_metric([job.job_id], job.steps_per_second)
        if job.tokens_per_second is not None:
            tokens.add_metric([job.job_id], job.tokens_per_second)
    yield from (beat, age, steps, tokens)
    deliveries = GaugeMetricFamily("drlora_webhook_deliveries", "Webhook deliveries by status", labels=["status"])
    for status, count in gauges.deliveries.items():
        deliveries.add_metric([status], count)
    yield deliveries


class ApiMetrics:
    """One app's registry: the request counter and histogram, and the database collector."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("drlora_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("drlora_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(DatabaseCollector(factory))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    if token:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("/metrics needs 'Authorization: Bearer <DRLORA_METRICS_TOKEN>'", code="invalid_token")
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
