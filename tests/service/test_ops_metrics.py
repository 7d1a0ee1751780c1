"""Operations: the Prometheus exposition at `/metrics`, the request id on every answer, and the log lines (JSON or
text) carrying request and job ids. On PostgreSQL and SQLite, each on a database of its own so that the job counts
are exact."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from service.db import transaction
from service.ids import now
from service.logsetup import ContextFilter, JsonFormatter, TextFormatter, configure_logging, job_context
from service.settings import Settings
from service.tables import Metric
from tests.support.ops import add_job, new_tenant, own_database, session_factory
from tests.support.service import free_port, make_settings

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(params=["postgresql", "sqlite"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    with own_database(request.param, tmp_path, redis_url) as s:
        yield s


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    with session_factory(settings) as f:
        yield f


def scrape(client: TestClient, **headers: str) -> Samples:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_count_requests_jobs_heartbeats_and_speed(settings: Settings, factory: sessionmaker[Session]) -> None:
    tenant = new_tenant(factory)
    for status in ("queued", "queued", "paused", "succeeded"):
        add_job(factory, tenant, status=status)
    t = now()
    running = add_job(factory, tenant, status="running", worker_id="host:123", heartbeat_at=t - 3, attempt=1)
    with transaction(factory) as s:  # 4 steps in 2 s; the newest row says 512 tokens/s
        s.add(Metric(job_id=running, step=10, tokens_per_second=400.0, created_at=t - 2))
        s.add(Metric(job_id=running, step=14, tokens_per_second=512.0, created_at=t))
    with TestClient(create_app(settings, sweep=False)) as client:
        for _ in range(3):
            assert client.get("/v1/models", headers=tenant.auth).status_code == 200
        assert client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=tenant.auth).status_code == 404
        assert client.get("/v1/models").status_code == 401
        assert client.get("/no/such/route").status_code == 404
        samples = scrape(client)
    requests = "drlora_http_requests_total"
    assert value(samples, requests, method="GET", route="/v1/models", status="200") == 3
    assert value(samples, requests, method="GET", route="/v1/models", status="401") == 1
    assert value(samples, requests, method="GET", route="/v1/fine_tuning/jobs/{fine_tuning_job_id}",
                 status="404") == 1  # the route template, never the id
    assert value(samples, requests, method="GET", route="unmatched", status="404") == 1
    assert not [k for k in samples if "ftjob-nope" in str(k)]
    assert value(samples, "drlora_http_request_duration_seconds_count", method="GET", route="/v1/models") == 4
    assert 0 < value(samples, "drlora_http_request_duration_seconds_sum", method="GET", route="/v1/models") < 30
    assert value(samples, "drlora_http_request_duration_seconds_bucket", method="GET", route="/v1/models",
                 le="+Inf") == 4
    assert value(samples, "drlora_database_up") == 1
    jobs = {status: value(samples, "drlora_jobs", status=status) for status in
            ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")}
    assert jobs == {"validating_files": 0, "queued": 2, "running": 1, "paused": 1, "succeeded": 1, "failed": 0,
                    "cancelled": 0}
    assert value(samples, "drlora_queue_depth") == 2
    beat = {"worker_id": "host:123", "job_id": running}
    assert value(samples, "drlora_worker_heartbeat_timestamp_seconds", **beat) == pytest.approx(t - 3)
    assert 3 <= value(samples, "drlora_worker_heartbeat_age_seconds", **beat) < 60
    assert value(samples, "drlora_job_steps_per_second", job_id=running) == pytest.approx(2.0)
    assert value(samples, "drlora_job_tokens_per_second", job_id=running) == 512.0
    assert value(samples, "drlora_webhook_deliveries", status="pending") == 0


def test_metrics_can_require_a_token_or_be_switched_off(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"metrics_token": "s3cret"}), sweep=False)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert value(scrape(client, Authorization="Bearer s3cret"), "drlora_database_up") == 1
    with TestClient(create_app(settings.model_copy(update={"metrics_enabled": False}), sweep=False)) as client:
        assert client.get("/metrics").status_code == 404
    with TestClient(create_app(settings, sweep=False)) as client:
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]  # for operators, not the API's users


def test_metrics_still_answer_when_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    with TestClient(create_app(settings, sweep=False)) as client:
        samples = scrape(client)
    assert value(samples, "drlora_database_up") == 0


# ---------------------------------------------------------------- request ids

def test_every_answer_carries_a_request_id_and_a_sane_one_from_the_client_is_kept(settings: Settings) -> None:
    app = create_app(settings, sweep=False)

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/healthz", headers={"x-request-id": "trace-42.a:b_c"}).headers["x-request-id"] \
            == "trace-42.a:b_c"
        generated = {client.get(path).headers["x-request-id"] for path in ("/healthz", "/v1/models", "/nope")}
        assert len(generated) == 3 and all(g.startswith("req_") for g in generated)
        for insane in ("x" * 129, "a b", "id\"}", "\xe4".encode("latin-1"), ""):
            answered = client.get("/healthz", headers={"x-request-id": insane}).headers["x-request-id"]
            assert answered != insane and answered.startswith("req_")
        failed = client.get("/boom", headers={"x-request-id": "crash-1"})
        assert failed.status_code == 500 and failed.headers["x-request-id"] == "crash-1"
        assert failed.headers.get_list("x-request-id") == ["crash-1"]


# ---------------------------------------------------------------- log lines

@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the root logger writes at INFO, as our JSON handler formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # one JSON object a line


def test_json_log_lines_carry_the_request_id_and_no_key(settings: Settings, factory: sessionmaker[Session],
                                                        json_lines: io.StringIO) -> None:
    tenant = new_tenant(factory)
    app: FastAPI = create_app(settings, sweep=False)
    with TestClient(app) as client:
        client.get("/v1/models", headers={**tenant.auth, "x-request-id": "req-models-1"})
        client.get(f"/v1/files/{tenant.key}", headers={"x-request-id": "req-pasted-key"})
    lines = records(json_lines)
    [access] = [r for r in lines if r.get("request_id") == "req-models-1"]
    assert access["logger"] == "drlora.access" and access["level"] == "INFO"
    assert (access["method"], access["route"], access["status"]) == ("GET", "/v1/models", 200)
    assert access["message"].startswith("GET /v1/models 200") and access["duration_ms"] >= 0
    [pasted] = [r for r in lines if r.get("request_id") == "req-pasted-key"]
    assert pasted["status"] == 401 and pasted["message"].startswith("GET /v1/files/drl-*** 401")
    served = [r for r in lines if r["logger"].startswith("drlora")]  # (the test client logs its own URLs)
    assert not [r for r in served if tenant.key in json.dumps(r)]  # api/logredact.py still applies


def test_log_lines_of_a_job_carry_its_id_from_every_thread(json_lines: io.StringIO) -> None:
    log = logging.getLogger("drlora.worker")
    with job_context("ftjob-abc", whole_process=True):
        log.info("training")
        beat = threading.Thread(target=lambda: log.warning("heartbeat failed"))  # as the heartbeat thread does
        beat.start()
        beat.join()
    log.info("idle")
    by_message = {r["message"]: r for r in records(json_lines)}
    assert by_message["training"]["job_id"] == by_message["heartbeat failed"]["job_id"] == "ftjob-abc"
    assert "job_id" not in by_message["idle"]


def test_configure_logging_writes_json_or_text(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("info", "json")
        logging.getLogger("drlora.test").info("hello %s", "there", extra={"status": 201})
        line = json.loads(capsys.readouterr().err.strip())
        assert (line["message"], line["level"], line["status"]) == ("hello there", "INFO", 201)
        configure_logging("debug", "text")
        with job_context("ftjob-t"):
            logging.getLogger("drlora.test").debug("plain")
        text = capsys.readouterr().err
        assert " DEBUG drlora.test: plain [job_id=ftjob-t]" in text and len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, TextFormatter)
        with pytest.raises(ValueError, match="log_format"):
            configure_logging("info", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
