"""Operations end to end on PostgreSQL + Redis: a real API process and a real worker train the demo model; a receiver
on 127.0.0.1 gets the signed `growth` and `succeeded` webhooks from the worker's delivery loop, `/metrics` scrapes
while the job runs, and the JSON log lines carry the request id (API) and the job id (worker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.support.service import HANG_GUARD_S, make_settings, running_cluster
from tests.support.webhook_receiver import receiving, verify

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a process log (Celery's banner and tracebacks are the only other lines)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_webhooks_metrics_and_logs_of_a_trained_job(pg_settings: Settings, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", pg_settings.database_url, pg_settings.broker_url,
                             webhook_allow_private=True, webhook_poll_interval_s=0.2, log_level="info")
    with receiving() as receiver, running_cluster(settings, tmp_path) as c:
        r = c.api.http.post("/v1/webhooks", json={"url": receiver.url, "events": [
            "fine_tuning.job.succeeded", "fine_tuning.job.growth"]}, headers={"x-request-id": "e2e-register"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-register", r.text
        secret = r.json()["secret"]
        c.worker()
        job_id = c.create()  # 6 steps, growth every 2
        c.api.wait_step(job_id, 1)
        scraped = c.api.http.get("/metrics")
        c.api.wait_status(job_id, ("succeeded",))
        c.wait(job_id, lambda: receiver.events("fine_tuning.job.succeeded"), "the succeeded webhook")
        growth = [r for r in receiver.events("fine_tuning.job.growth") if r.event["data"]["id"] == job_id]
        [succeeded] = receiver.events("fine_tuning.job.succeeded")
        recorded = {e["step"] for e in c.api.get(f"/v1/fine_tuning/jobs/{job_id}/ranks").json()["events"]}
        worker_log = c.workers[0].log
    assert growth and all(verify(secret, r) for r in growth)
    assert sorted(r.event["data"]["step"] for r in growth) == sorted(recorded) and len(recorded) >= 2  # one a step
    assert verify(secret, succeeded) and succeeded.event["data"] == {"id": job_id}
    assert len({r.headers["webhook-id"] for r in [*growth, succeeded]}) == len(growth) + 1

    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    running = [s for s in families["drlora_jobs"].samples if s.labels["status"] == "running"]
    assert running and running[0].value >= 1
    assert [s for s in families["drlora_worker_heartbeat_age_seconds"].samples if s.labels["job_id"] == job_id]

    api_lines = json_lines(c.api_proc.log)
    assert [r for r in api_lines if r.get("request_id") == "e2e-register" and r.get("route") == "/v1/webhooks"]
    worker_lines = [r for r in json_lines(worker_log) if r.get("job_id") == job_id]
    assert any(f"job {job_id}: succeeded" in r["message"] for r in worker_lines)
    assert any(r["logger"] == "drlora.webhooks" and r.get("event_type") == "fine_tuning.job.succeeded"
               for r in worker_lines)
