"""Adapter exports and downloads on PostgreSQL and Redis, no worker: the export row's state machine, the API's
shapes (201 then 200, 202 from `/adapter` with options, 404 across tenants, 400 naming a bad option), and the
download's `Range`, `If-Range`, `ETag` and integrity checks. The rows a worker would write come from the service
layer (tests/support/exports.py)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import api.downloads
from api.main import create_app
from drlora_cli.bootstrap import new_key
from drlora_core.export_options import ExportOptions
from service import exports
from service.db import transaction
from service.ids import now
from service.settings import Settings
from service.statuses import JobStatus
from service.storage import StorageError
from service.tables import Export, Job, RegisteredModel
from tests.support.exports import build_export, random_bytes, succeed_with_artifacts

pytestmark = pytest.mark.timeout(120)

DATA = b'{"prompt": "1 + 1 =", "completion": " 2"}\n'
FUSED_BF16 = {"layout": "fused", "dtype": "bf16", "base_model_name_or_path": "org/base"}


@pytest.fixture(scope="module")
def client(pg_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(pg_settings, sweep=False)) as c:
        yield c


@pytest.fixture
def factory(client: TestClient) -> sessionmaker[Session]:
    return client.app.state.sessionmaker  # type: ignore[attr-defined,no-any-return]


class Tenant:
    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {new_key(settings, f'exp-{secrets.token_hex(4)}').key}"}

    def new_job(self) -> str:
        r = self.client.post("/v1/files", headers=self.headers, files={"file": ("t.jsonl", DATA)},
                             data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        r = self.client.post("/v1/fine_tuning/jobs", headers=self.headers,
                             json={"model": "test-model", "training_file": r.json()["id"]})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def get(self, path: str, **headers: str):  # type: ignore[no-untyped-def]
        return self.client.get(path, headers={**self.headers, **headers})

    def post(self, path: str, json: object):  # type: ignore[no-untyped-def]
        return self.client.post(path, headers=self.headers, json=json)


@pytest.fixture
def tenant(client: TestClient, pg_settings: Settings) -> Tenant:
    return Tenant(client, pg_settings)


@pytest.fixture
def job(tenant: Tenant, factory: sessionmaker[Session], pg_settings: Settings) -> tuple[str, bytes]:
    """A succeeded job with a 3 MB adapter zip (several chunks) and a checkpoint at step 2."""
    job_id, data = tenant.new_job(), random_bytes(3 << 20)
    succeed_with_artifacts(factory, pg_settings, job_id, data)
    return job_id, data


def jobs(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}"


# --- the state machine -----------------------------------------------------------------------------------------


def test_an_export_row_moves_queued_running_succeeded_and_only_its_holder_writes(
        factory: sessionmaker[Session], job: tuple[str, bytes]) -> None:
    options = ExportOptions(layout="fused", dtype="bf16")
    with transaction(factory) as s:
        row, created = exports.request(s, s.get_one(Job, job[0]), options, None)
        export_id = row.id
    assert created and row.status == JobStatus.queued and row.source == "final" and row.checkpoint_step is None
    with transaction(factory) as s:
        again, created = exports.request(s, s.get_one(Job, job[0]), ExportOptions(layout="fused", dtype="bf16"), None)
        ckpt, ckpt_created = exports.request(s, s.get_one(Job, job[0]), options, "2")
    assert again.id == export_id and not created
    assert ckpt_created and ckpt.id != export_id and ckpt.source == "step-2" and ckpt.checkpoint_step == 2
    with transaction(factory) as s:
        assert exports.claim(s, export_id, "w1") == 1
        assert exports.claim(s, export_id, "w2") is None  # a duplicate delivery claims nothing
        assert exports.report(s, export_id, "w1", 1, "merging", 1.7)  # clamped to 1
        assert not exports.report(s, export_id, "w2", 1, "merging", 0.5)
        assert not exports.finish(s, export_id, "w1", 2, "p", "0" * 64, 1)  # not this attempt's
    with factory() as s:
        row = s.get_one(Export, export_id)
        assert (row.status, row.progress, row.stage, row.attempt) == ("running", 1.0, "merging", 1)
    with transaction(factory) as s:
        assert exports.finish(s, export_id, "w1", 1, "p", "a" * 64, 10)
        assert not exports.fail(s, export_id, "w1", 1, "x", "too late")
    with factory() as s:
        row = s.get_one(Export, export_id)
        assert (row.status, row.sha256, row.bytes, row.progress) == ("succeeded", "a" * 64, 10, 1.0)


def test_a_failed_export_is_queued_again_by_the_next_request_under_the_same_id(
        factory: sessionmaker[Session], job: tuple[str, bytes]) -> None:
    options = ExportOptions(dtype="bf16")
    with transaction(factory) as s:
        export_id = exports.request(s, s.get_one(Job, job[0]), options, None)[0].id
        attempt = exports.claim(s, export_id, "w1")
        assert attempt is not None and exports.fail(s, export_id, "w1", attempt, "export_error", "boom")
    with transaction(factory) as s:
        row, created = exports.request(s, s.get_one(Job, job[0]), options, None)
        assert (row.id, created, row.status, row.error, row.attempt) == (export_id, False, "queued", None, 0)


def test_two_requests_at_once_get_one_row_from_the_unique_constraint(
        factory: sessionmaker[Session], job: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    options = ExportOptions(dtype="bf16", max_rank=3)
    with transaction(factory) as s:
        first = exports.request(s, s.get_one(Job, job[0]), options, None)[0].id
    looked = exports._find
    calls: list[int] = []

    def late(*args: object) -> Export | None:  # the second request looked before the first one committed
        calls.append(1)
        return None if len(calls) == 1 else looked(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(exports, "_find", late)
    with transaction(factory) as s:
        row, created = exports.request(s, s.get_one(Job, job[0]), options, None)
        assert s.get_one(Job, job[0]).status == "succeeded"  # the session is usable after the refused insert
    assert (row.id, created, len(calls)) == (first, False, 2)


def test_the_sweep_requeues_a_lost_worker_then_fails_after_max_attempts_and_resends_queued(
        client: TestClient, factory: sessionmaker[Session], job: tuple[str, bytes], pg_settings: Settings) -> None:
    with transaction(factory) as s:
        export_id = exports.request(s, s.get_one(Job, job[0]), ExportOptions(max_rank=2), None)[0].id
    stale = now() - pg_settings.lease_s - 1
    for attempt in range(1, exports.MAX_ATTEMPTS + 1):
        with transaction(factory) as s:
            assert exports.claim(s, export_id, f"w{attempt}") == attempt
            s.execute(update(Export).where(Export.id == export_id).values(heartbeat_at=stale))
        requeued = exports.reclaim_lost(factory, pg_settings.lease_s)
        with factory() as s:
            row = s.get_one(Export, export_id)
        if attempt < exports.MAX_ATTEMPTS:
            assert export_id in requeued and row.status == "queued" and row.worker_id is None
        else:
            assert export_id not in requeued and row.status == "failed"
            assert row.error is not None and row.error["code"] == "worker_lost"
    with transaction(factory) as s:  # asked again: queued, never sent; the sweep sends it
        exports.request(s, s.get_one(Job, job[0]), ExportOptions(max_rank=2), None)
    assert export_id in exports.sweep(factory, client.app.state.celery, pg_settings)  # type: ignore[attr-defined]
    with factory() as s:
        assert s.get_one(Export, export_id).dispatched_at is not None


# --- the API ---------------------------------------------------------------------------------------------------


def test_post_creates_201_then_answers_the_same_export_200_and_lists_it(
        tenant: Tenant, job: tuple[str, bytes]) -> None:
    first = tenant.post(f"{jobs(job[0])}/exports", FUSED_BF16)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["object"] == "fine_tuning.job.export" and body["id"].startswith("export-")
    assert (body["layout"], body["dtype"], body["base_model_name_or_path"], body["max_rank"]) == (
        "fused", "bf16", "org/base", None)
    assert body["status"] == "queued" and body["progress"] == 0 and body["checkpoint_step"] is None
    assert body["fine_tuning_job_id"] == job[0] and body["sha256"] is None
    assert body["content_url"] == f"{jobs(job[0])}/exports/{body['id']}/content"
    second = tenant.post(f"{jobs(job[0])}/exports", FUSED_BF16)
    assert second.status_code == 200 and second.json()["id"] == body["id"]
    at_ckpt = tenant.post(f"{jobs(job[0])}/exports", {**FUSED_BF16, "checkpoint": 2})
    assert at_ckpt.status_code == 201 and at_ckpt.json()["checkpoint_step"] == 2
    listed = tenant.get(f"{jobs(job[0])}/exports").json()
    assert listed["object"] == "list" and [e["id"] for e in listed["data"]] == [at_ckpt.json()["id"], body["id"]]
    assert tenant.get(f"{jobs(job[0])}/exports/{body['id']}").json() == body
    not_ready = tenant.get(f"{jobs(job[0])}/exports/{body['id']}/content")
    assert not_ready.status_code == 409 and not_ready.json()["error"]["code"] == "export_not_ready"


def test_post_with_the_options_as_trained_points_to_the_adapter(tenant: Tenant, job: tuple[str, bytes]) -> None:
    for body in ({}, {"dtype": "fp32"}, None):
        r = tenant.client.post(f"{jobs(job[0])}/exports", headers=tenant.headers, json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "export_not_needed", r.text
        assert f"{jobs(job[0])}/adapter" in r.json()["error"]["message"]
    assert tenant.get(f"{jobs(job[0])}/exports").json()["data"] == []


@pytest.mark.parametrize(("body", "param"), [
    ({"layout": "sideways"}, "layout"),
    ({"dtype": "fp8"}, "dtype"),
    ({"max_rank": 0}, "max_rank"),
    ({"base_model_name_or_path": "two\nlines"}, "base_model_name_or_path"),
    ({"layout": "merged", "max_rank": 4}, "max_rank"),
])
def test_bad_options_answer_400_naming_the_parameter(tenant: Tenant, job: tuple[str, bytes], body: dict,
                                                     param: str) -> None:
    r = tenant.post(f"{jobs(job[0])}/exports", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert r.json()["error"]["code"] == "invalid_export_options"
    query = {k: str(v) for k, v in body.items()}
    r = tenant.client.get(f"{jobs(job[0])}/adapter", params=query, headers=tenant.headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_merged_needs_the_base_model_as_a_local_directory(
        tenant: Tenant, job: tuple[str, bytes], factory: sessionmaker[Session], tmp_path: Path) -> None:
    with transaction(factory) as s:
        s.merge(RegisteredModel(id="not-local", path=str(tmp_path / "gone"), owned_by="system", created_at=now()))
        s.execute(update(Job).where(Job.id == job[0]).values(model="not-local"))
    r = tenant.post(f"{jobs(job[0])}/exports", {"layout": "merged"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "base_model_not_local", r.text
    assert r.json()["error"]["param"] == "layout" and "fused or per_expert" in r.json()["error"]["message"]


def test_another_tenants_job_and_export_answer_404(
        tenant: Tenant, job: tuple[str, bytes], client: TestClient, pg_settings: Settings) -> None:
    export_id = tenant.post(f"{jobs(job[0])}/exports", FUSED_BF16).json()["id"]
    other = Tenant(client, pg_settings)
    assert other.post(f"{jobs(job[0])}/exports", FUSED_BF16).status_code == 404
    assert other.get(f"{jobs(job[0])}/exports").status_code == 404
    for path in (f"{jobs(job[0])}/exports/{export_id}", f"{jobs(job[0])}/exports/{export_id}/content"):
        r = other.get(path)
        assert r.status_code == 404, r.text
    own_job = other.new_job()  # the export id under the other tenant's own job is unknown too
    r = other.get(f"{jobs(own_job)}/exports/{export_id}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "export_not_found"


def test_adapter_with_options_answers_202_until_built_then_the_exports_zip(
        tenant: Tenant, job: tuple[str, bytes], factory: sessionmaker[Session], pg_settings: Settings) -> None:
    params = {"layout": "fused", "dtype": "bf16", "base_model_name_or_path": "org/base"}
    r = tenant.client.get(f"{jobs(job[0])}/adapter", params=params, headers=tenant.headers)
    assert r.status_code == 202, r.text
    export = r.json()
    assert r.headers["location"] == f"{jobs(job[0])}/exports/{export['id']}" and int(r.headers["retry-after"]) >= 1
    assert export["status"] == "queued" and export["dtype"] == "bf16"
    again = tenant.client.get(f"{jobs(job[0])}/adapter", params=params, headers=tenant.headers)
    assert again.status_code == 202 and again.json()["id"] == export["id"]
    built = random_bytes(200_000)
    sha256 = build_export(factory, pg_settings, export["id"], built)
    done = tenant.client.get(f"{jobs(job[0])}/adapter", params=params, headers=tenant.headers)
    assert done.status_code == 200 and done.content == built and done.headers["etag"] == f'"{sha256}"'
    assert done.headers["content-type"] == "application/zip"
    shown = tenant.get(f"{jobs(job[0])}/exports/{export['id']}").json()
    assert (shown["status"], shown["sha256"], shown["bytes"], shown["progress"]) == ("succeeded", sha256,
                                                                                     len(built), 1.0)
    assert tenant.get(f"{jobs(job[0])}/exports/{export['id']}/content").content == built
    # the default options (and fp32, the same bytes) still answer the job's own adapter
    for query in ({}, {"dtype": "fp32"}, {"layout": "fused", "dtype": "auto"}):
        plain = tenant.client.get(f"{jobs(job[0])}/adapter", params=query, headers=tenant.headers)
        assert plain.status_code == 200 and plain.content == job[1]


# --- ranges and integrity --------------------------------------------------------------------------------------


def test_ranges_answer_206_with_the_slice_and_416_past_the_end(tenant: Tenant, job: tuple[str, bytes]) -> None:
    job_id, data = job
    whole = tenant.get(f"{jobs(job_id)}/adapter")
    sha256 = hashlib.sha256(data).hexdigest()
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["etag"] == f'"{sha256}"'
    assert whole.headers["repr-digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"
    half = len(data) // 2
    tail = tenant.get(f"{jobs(job_id)}/adapter", Range=f"bytes={half}-")
    assert tail.status_code == 206 and tail.content == data[half:]
    assert tail.headers["content-range"] == f"bytes {half}-{len(data) - 1}/{len(data)}"
    assert tail.headers["etag"] == f'"{sha256}"'  # the whole file's digest, on a part too
    middle = tenant.get(f"{jobs(job_id)}/adapter", Range="bytes=10-19")
    assert middle.status_code == 206 and middle.content == data[10:20]
    past = tenant.get(f"{jobs(job_id)}/adapter", Range=f"bytes={len(data)}-")
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    assert past.json()["error"]["code"] == "range_not_satisfiable"
    bad = tenant.get(f"{jobs(job_id)}/adapter", Range="lines=1-2")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Range"
    ckpt = tenant.client.get(f"{jobs(job_id)}/adapter", params={"checkpoint": "2"},
                             headers={**tenant.headers, "Range": "bytes=5-"})
    assert ckpt.status_code == 206 and ckpt.content == data[::-1][5:]


def test_if_range_keeps_the_range_only_for_the_same_etag(tenant: Tenant, job: tuple[str, bytes]) -> None:
    job_id, data = job
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    same = tenant.get(f"{jobs(job_id)}/adapter", Range="bytes=100-", **{"If-Range": etag})
    assert same.status_code == 206 and same.content == data[100:]
    changed = tenant.get(f"{jobs(job_id)}/adapter", Range="bytes=100-", **{"If-Range": '"' + "0" * 64 + '"'})
    assert changed.status_code == 200 and changed.content == data
    # If-Range that does not match ignores even a range past the end
    ignored = tenant.get(f"{jobs(job_id)}/adapter", Range=f"bytes={len(data) + 5}-", **{"If-Range": '"x"'})
    assert ignored.status_code == 200


def test_a_file_altered_on_disk_is_refused_before_a_byte_when_small(
        tenant: Tenant, job: tuple[str, bytes], pg_settings: Settings, factory: sessionmaker[Session]) -> None:
    job_id, data = job
    assert tenant.get(f"{jobs(job_id)}/adapter").status_code == 200  # verified once, remembered
    path = next((pg_settings.artifact_root / job_id).rglob("adapter.zip"))
    with path.open("r+b") as f:  # the same size, another content: a new mtime/ctime, so it is checked again
        f.seek(len(data) // 2)
        f.write(bytes([data[len(data) // 2] ^ 0xFF]))
    for headers in ({}, {"Range": "bytes=0-"}):
        r = tenant.get(f"{jobs(job_id)}/adapter", **headers)
        assert r.status_code == 500 and r.json()["error"]["code"] == "artifact_integrity"
        assert "x-content-sha256" not in r.headers


def test_a_large_file_is_verified_while_it_streams_and_cut_short_on_a_mismatch(
        tenant: Tenant, job: tuple[str, bytes], pg_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, data = job
    monkeypatch.setattr(api.downloads, "VERIFY_FIRST_MAX_BYTES", 1 << 20)  # the 3 MB adapter is "large"
    path = next((pg_settings.artifact_root / job_id).rglob("adapter.zip"))
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(StorageError, match="sha256"):  # the server cut the answer before its last chunk
        tenant.get(f"{jobs(job_id)}/adapter")
    path.write_bytes(data)
    r = tenant.get(f"{jobs(job_id)}/adapter")
    assert r.status_code == 200 and r.content == data
