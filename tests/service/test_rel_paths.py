"""Downloads through the HTTP API never serve a byte from outside their root, and never serve a file that no
longer matches the sha256 recorded when it was written (RELIABILITY.md 21 and 22), on PostgreSQL.

A secret file sits in the data directory beside the files and artifact roots; every attempt below must answer
without its bytes: traversal in the ids and in `?checkpoint=`, in plain, encoded, double-encoded, absolute,
backslash and NUL forms; stored paths altered in the database; and symlinks planted in the roots."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from drlora_core.atomic import zip_files_atomic
from service.db import make_engine, make_sessionmaker
from service.ids import new_id, now
from service.settings import Settings
from service.tables import Artifact, File, Job
from worker.job import JobInputError, _inputs

pytestmark = pytest.mark.timeout(120)

DATA = b'{"prompt": "1 + 1 =", "completion": " 2"}\n'
SECRET = b"TOP-SECRET-do-not-serve\n"
TRAVERSALS = [
    "../secret.txt", "..%2Fsecret.txt", "..%2F..%2Fsecret.txt", "%2e%2e%2fsecret.txt", "%252e%252e%252fsecret.txt",
    "..%5Csecret.txt", "..\\secret.txt", "%2Fetc%2Fpasswd", "/etc/passwd", "....//secret.txt", "secret.txt%00",
    "..%00/secret.txt", "%c0%ae%c0%ae%2fsecret.txt",
]


@pytest.fixture(scope="module")
def client(pg_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(pg_settings, sweep=False)) as c:
        yield c


@pytest.fixture(scope="module")
def factory(pg_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg_settings.sqlalchemy_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def secret(pg_settings: Settings) -> Path:
    path = pg_settings.data_dir / "secret.txt"
    path.write_bytes(SECRET)
    return path


class Tenant:
    """One tenant with an uploaded file and a succeeded job whose adapter zip is published."""

    def __init__(self, client: TestClient, factory: sessionmaker[Session], settings: Settings, key: str) -> None:
        self.client, self.factory, self.settings = client, factory, settings
        self.headers = {"Authorization": f"Bearer {key}"}
        r = client.post("/v1/files", headers=self.headers, files={"file": ("t.jsonl", DATA)},
                        data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        self.file_id = r.json()["id"]
        r = client.post("/v1/fine_tuning/jobs", headers=self.headers,
                        json={"model": "test-model", "training_file": self.file_id})
        assert r.status_code == 200, r.text
        self.job_id = r.json()["id"]
        self.adapter = self._publish()

    def _publish(self) -> Path:
        member = self.settings.data_dir / f"{self.job_id}-adapter_config.json"
        member.write_text("{}")
        relative = f"{self.job_id}/attempt-1/adapter.zip"
        sha256, size = zip_files_atomic([member], self.settings.artifact_root / relative)
        with self.factory.begin() as s:
            s.execute(update(Job).where(Job.id == self.job_id).values(status="succeeded", finished_at=now()))
            s.add(Artifact(id=new_id("artifact"), job_id=self.job_id, kind="adapter", step=1, checkpoint_id=None,
                           path=relative, sha256=sha256, bytes=size, created_at=now()))
        return self.settings.artifact_root / relative

    def get(self, url: str) -> tuple[int, bytes]:
        r = self.client.get(url, headers=self.headers)
        return r.status_code, r.content

    def file_row(self) -> File:
        with self.factory() as s:
            return s.get_one(File, self.file_id)

    def downloads(self) -> list[tuple[int, bytes]]:
        return [self.get(f"/v1/files/{self.file_id}/content"), self.get(f"/v1/fine_tuning/jobs/{self.job_id}/adapter")]


@pytest.fixture
def tenant(client: TestClient, factory: sessionmaker[Session], pg_settings: Settings, make_key, secret: Path) -> Tenant:
    return Tenant(client, factory, pg_settings, make_key())


def refused_without_secret(answer: tuple[int, bytes]) -> bool:
    status, body = answer
    return status >= 400 and SECRET.strip() not in body


def test_downloads_carry_the_sha256_recorded_at_write_time(tenant: Tenant) -> None:
    for url, data in ((f"/v1/files/{tenant.file_id}/content", DATA),
                      (f"/v1/fine_tuning/jobs/{tenant.job_id}/adapter", tenant.adapter.read_bytes())):
        r = tenant.client.get(url, headers=tenant.headers)
        assert r.status_code == 200 and r.content == data
        digest = hashlib.sha256(data).hexdigest()
        assert r.headers["ETag"] == f'"{digest}"' and r.headers["X-Content-SHA256"] == digest


@pytest.mark.parametrize("payload", TRAVERSALS)
def test_traversal_in_ids_and_checkpoints_serves_nothing_from_outside(tenant: Tenant, payload: str) -> None:
    urls = [f"/v1/files/{payload}/content", f"/v1/files/{payload}", f"/v1/fine_tuning/jobs/{payload}/adapter",
            f"/v1/fine_tuning/jobs/{tenant.job_id}/adapter?checkpoint={payload}"]
    for url in urls:
        assert refused_without_secret(tenant.get(url)), url


@pytest.mark.parametrize("stored", ["../secret.txt", "../../secret.txt", "{root}/../secret.txt", "{secret}",
                                    "..\\secret.txt", "./../secret.txt"])
def test_a_stored_path_that_escapes_its_root_is_never_followed(tenant: Tenant, secret: Path, stored: str) -> None:
    stored = stored.format(root=tenant.settings.files_root, secret=secret)
    with tenant.factory.begin() as s:
        # the recorded sha256 is the secret's own, so only the path checks stand between it and the client
        s.execute(update(File).where(File.id == tenant.file_id).values(
            path=stored, sha256=hashlib.sha256(SECRET).hexdigest()))
        s.execute(update(Artifact).where(Artifact.job_id == tenant.job_id).values(
            path=stored.replace("files", "artifacts"), sha256=hashlib.sha256(SECRET).hexdigest()))
    assert all(refused_without_secret(a) for a in tenant.downloads())


def test_symlinks_planted_in_the_roots_are_never_followed(tenant: Tenant, secret: Path) -> None:
    sha = hashlib.sha256(SECRET).hexdigest()
    stored = tenant.settings.files_root / tenant.file_row().path
    stored.unlink()
    stored.symlink_to(secret)  # a link to a file whose sha256 the row now records
    tenant.adapter.unlink()
    tenant.adapter.symlink_to(secret)
    with tenant.factory.begin() as s:
        s.execute(update(File).where(File.id == tenant.file_id).values(sha256=sha))
        s.execute(update(Artifact).where(Artifact.job_id == tenant.job_id).values(sha256=sha))
    assert all(refused_without_secret(a) for a in tenant.downloads())
    # a linked folder on the way: the adapter's attempt folder replaced by a link to a folder holding the secret
    outside = tenant.settings.data_dir / f"outside-{tenant.job_id}"
    outside.mkdir()
    shutil.copy(secret, outside / "adapter.zip")
    attempt = tenant.adapter.parent
    shutil.rmtree(attempt)
    attempt.symlink_to(outside, target_is_directory=True)
    assert all(refused_without_secret(a) for a in tenant.downloads())


def test_a_file_altered_on_disk_is_refused_not_served(tenant: Tenant) -> None:
    stored = tenant.settings.files_root / tenant.file_row().path
    stored.write_bytes(DATA.replace(b"2", b"3"))
    with tenant.adapter.open("r+b") as f:
        f.seek(10)
        f.write(b"\x00\x01")
    for status, body in tenant.downloads():
        assert status == 500 and b"artifact_integrity" in body and b'" 3"' not in body


def test_the_worker_refuses_an_altered_training_file(tenant: Tenant) -> None:
    stored = tenant.settings.files_root / tenant.file_row().path
    stored.write_bytes(DATA.replace(b"2", b"3"))
    with tenant.factory() as s:
        job = s.get_one(Job, tenant.job_id)
        with pytest.raises(JobInputError, match="sha256"):
            _inputs(s, job, tenant.settings)
