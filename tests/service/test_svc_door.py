"""The hardening items of issue 10 (findings 1, 3 and 8) in-process on PostgreSQL (and SQLite where marked): the
pool answers 503 when exhausted, bodies are capped, headers, safe file names, files in use, per-job event numbers,
`Last-Event-ID`, keep-alives, a pending pause, private data folders, and an OpenAPI document that describes every
operation. The load sides (streams, uploads, 200 MiB bodies on a real server) are `tests/e2e/test_rel_door.py`."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from drlora_cli.bootstrap import migrate
from service.db import make_engine, make_sessionmaker, transaction
from service.settings import Settings
from service.tables import Job
from tests.support.service import make_settings

pytestmark = pytest.mark.timeout(120)

DATA = b'{"text": "one"}\n{"text": "two"}\n'


@pytest.fixture(scope="module")
def client(pg_settings: Settings) -> Iterator[TestClient]:
    settings = pg_settings.model_copy(update={"stream_poll_s": 0.05, "stream_keepalive_s": 1.0,
                                              "max_body_bytes": 4096})
    with TestClient(create_app(settings, sweep=False)) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: TestClient, key: str, name: str = "train.jsonl") -> dict:
    r = client.post("/v1/files", headers=auth(key), files={"file": (name, DATA)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()


def new_job(client: TestClient, key: str) -> str:
    r = client.post("/v1/fine_tuning/jobs", headers=auth(key),
                    json={"model": "test-model", "training_file": upload(client, key)["id"]})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def set_status(settings: Settings, job_id: str, status: str) -> None:
    engine = make_engine(settings.sqlalchemy_url)
    with transaction(make_sessionmaker(engine)) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status, attempt=1))
    engine.dispose()


def test_every_operation_has_a_summary_and_a_description(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    operations = [(verb, path, op) for path, ops in doc["paths"].items() for verb, op in ops.items()]
    bare = [f"{verb.upper()} {path}" for verb, path, op in operations
            if not op.get("summary") or not op.get("description")]
    assert len(operations) >= 21 and not bare, f"describe these in api/operations.py: {bare}"


def test_answers_carry_nosniff_and_no_store(client: TestClient, make_key) -> None:
    key = make_key()
    file_id = upload(client, key)["id"]
    for r in (client.get("/v1/models", headers=auth(key)), client.get("/v1/models"),
              client.get(f"/v1/files/{file_id}/content", headers=auth(key))):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["cache-control"] == "no-store", r.url
    assert client.get("/healthz").headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("sent", "kept"), [
    ("../../../etc/passwd", "passwd"), ("..\\..\\win.ini", "win.ini"), ("/abs/path/data.jsonl", "data.jsonl"),
    ('evil"; filename=x.sh\r\nX-Injected: 1', None), ("..", "upload.jsonl"),
    ("données.jsonl", "données.jsonl"),
])
def test_an_uploaded_name_never_becomes_a_path(client: TestClient, make_key, sent: str, kept: str) -> None:
    key = make_key()
    row = upload(client, key, name=sent)
    assert row["filename"] == kept if kept else set('"\r\n;/\\%').isdisjoint(row["filename"])
    disposition = client.get(f"/v1/files/{row['id']}/content", headers=auth(key)).headers["content-disposition"]
    assert "/" not in disposition.replace("utf-8''", "") and ".." not in disposition and "\r" not in disposition
    assert "x-injected" not in client.get(f"/v1/files/{row['id']}/content", headers=auth(key)).headers


def test_deleting_a_file_a_job_uses_answers_409_naming_the_job(client: TestClient, make_key) -> None:
    key = make_key()
    job_id = new_job(client, key)
    file_id = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(key)).json()["training_file"]
    for status in ("queued", "paused", "running"):
        set_status(client.app.state.settings, job_id, status)
        r = client.delete(f"/v1/files/{file_id}", headers=auth(key))
        assert r.status_code == 409 and job_id in r.json()["error"]["message"], (status, r.text)
        assert r.json()["error"]["code"] == "file_in_use"
    set_status(client.app.state.settings, job_id, "cancelled")
    assert client.delete(f"/v1/files/{file_id}", headers=auth(key)).json()["deleted"] is True


def test_event_ids_number_each_jobs_own_events(client: TestClient, make_key) -> None:
    key = make_key()
    first, second = new_job(client, key), new_job(client, key)
    for job_id in (first, second):
        client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth(key))
        client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth(key))
    path = f"/v1/fine_tuning/jobs/{second}/events"
    ids = [e["id"] for e in client.get(path, headers=auth(key)).json()["data"]]
    # newest first, numbered from the job's own first event: nothing shows how many events other jobs have
    assert ids == [f"ftevent-{n}" for n in range(len(ids), 0, -1)] and len(ids) >= 3
    page = client.get(path, headers=auth(key), params={"after": ids[0], "limit": 1}).json()
    assert [e["id"] for e in page["data"]] == [ids[1]] and page["has_more"] is True
    assert client.get(path, headers=auth(key), params={"after": "ftevent-1"}).json()["data"] == []


def test_a_stream_resumes_after_its_last_event_id(client: TestClient, make_key) -> None:
    key = make_key()
    job_id = new_job(client, key)
    client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth(key))  # paused: the stream ends
    path = f"/v1/fine_tuning/jobs/{job_id}/events"
    full = client.get(path, headers=auth(key), params={"stream": "true"}).text
    resumed = client.get(path, headers={**auth(key), "Last-Event-ID": "ftevent-1"}, params={"stream": "true"}).text
    assert "id: ftevent-1\n" in full and "id: ftevent-2\n" in full
    assert "id: ftevent-1\n" not in resumed and "id: ftevent-2\n" in resumed and resumed.endswith("data: [DONE]\n\n")
    bad = client.get(path, headers={**auth(key), "Last-Event-ID": "nope"}, params={"stream": "true"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"


def test_keep_alives_come_every_stream_keepalive_s_not_every_poll(client: TestClient, make_key) -> None:
    key = make_key()
    job_id = new_job(client, key)
    threading.Timer(3.0, set_status, (client.app.state.settings, job_id, "paused")).start()
    start = time.monotonic()
    text = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth(key), params={"stream": "true"}).text
    elapsed = time.monotonic() - start
    keepalives = text.count(": keep-alive")
    # poll every 0.05 s, keep-alive every 1 s: one per second of quiet, not one per poll
    assert 1 <= keepalives <= elapsed / 1.0 + 1, (keepalives, elapsed)


def test_a_pause_asked_of_a_running_job_shows_as_pending(client: TestClient, make_key) -> None:
    key = make_key()
    job_id = new_job(client, key)
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(key)).json()["pending_action"] is None
    set_status(client.app.state.settings, job_id, "running")
    job = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth(key)).json()
    assert job["status"] == "running" and job["pending_action"] == "pause"
    messages = [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth(key))
                .json()["data"]]
    assert any(m.startswith("Pause requested") for m in messages)
    job = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth(key)).json()
    assert job["pending_action"] is None  # the pause was withdrawn


def test_a_body_over_the_cap_is_413_and_no_key_is_401_before_it(client: TestClient, make_key) -> None:
    body = {"model": "test-model", "training_file": "file-x", "metadata": {"k": "v" * 8000}}
    r = client.post("/v1/fine_tuning/jobs", headers=auth(make_key()), json=body)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/fine_tuning/jobs", headers=auth("drl-not-a-key"), json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_an_exhausted_pool_answers_503_with_retry_after(pg_settings: Settings, make_key) -> None:
    key = make_key()
    with TestClient(create_app(pg_settings.model_copy(update={"db_pool_timeout_s": 0.5}), sweep=False)) as c:
        engine = c.app.state.engine
        held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
        try:
            for path, headers in (("/v1/models", auth(key)), ("/readyz", {})):
                r = c.get(path, headers=headers)
                assert r.status_code == 503 and r.headers["retry-after"] == "1", (path, r.text)
        finally:
            for connection in held:
                connection.close()
        assert c.get("/v1/models", headers=auth(key)).status_code == 200


def test_the_data_folder_and_the_sqlite_file_are_private(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    migrate(settings)
    with TestClient(create_app(settings, sweep=False)):
        pass
    for folder in (settings.data_dir, settings.files_root, settings.artifact_root):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in settings.data_dir.glob("drlora.db*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data; boundary=b", b"not multipart at all"),
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune"),
    ("multipart/form-data; boundary=b", b"--b\r\nno headers end here"),
    ("multipart/form-data", b"--b--\r\n"),
    ("application/json", b'{"file": "x", "purpose": "fine-tune"}'),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
                                        b"--b--\r\n"),
])
def test_a_malformed_upload_answers_4xx(client: TestClient, make_key, content_type: str, body: bytes) -> None:
    r = client.post("/v1/files", headers={**auth(make_key()), "Content-Type": content_type}, content=body)
    assert 400 <= r.status_code < 500 and r.json()["error"]["param"] == "file", r.text
