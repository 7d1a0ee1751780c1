"""Downloads that resume: the CLI's downloader (drlora_cli/download.py) against a real API process on PostgreSQL,
cut after half the bytes by a transport that raises, then run again: it must ask for the rest with `Range` from the
part's size and end with a file that matches the ETag. A corrupted part, a file that changed on the server, and the
`drlora adapter download` command with export options (an export already built, and one that failed) too."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from drlora_cli.bootstrap import new_key
from drlora_cli.client import ClientError, raise_for
from drlora_cli.download import DownloadError, fetch, part_paths
from drlora_core.export_options import ExportOptions
from service import exports
from service.db import make_engine, make_sessionmaker, transaction
from service.settings import Settings
from service.tables import Job
from tests.support.exports import CutAfter, build_export, random_bytes, store_file, succeed_with_artifacts
from tests.support.service import REPO, free_port, settings_env, start_api, wait_until

pytestmark = pytest.mark.timeout(240)

SIZE = 4 << 20


class Served:
    def __init__(self, settings: Settings, url: str, key: str) -> None:
        self.settings, self.url, self.key = settings, url, key
        self.engine = make_engine(settings.sqlalchemy_url)
        self.factory: sessionmaker[Session] = make_sessionmaker(self.engine)

    def http(self, transport: httpx.BaseTransport) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/v1", transport=transport,
                            headers={"Authorization": f"Bearer {self.key}"})

    def new_job(self, data: bytes) -> str:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}) as http:
            r = http.post("/v1/files", files={"file": ("t.jsonl", b'{"text": "hi"}\n')}, data={"purpose": "fine-tune"})
            r = http.post("/v1/fine_tuning/jobs", json={"model": "test-model", "training_file": r.json()["id"]})
            assert r.status_code == 200, r.text
        job_id = str(r.json()["id"])
        succeed_with_artifacts(self.factory, self.settings, job_id, data)
        return job_id


@pytest.fixture(scope="module")
def served(pg_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    logs = tmp_path_factory.mktemp("resume")
    proc = start_api(pg_settings, port := free_port(), logs / "api.log")
    server = Served(pg_settings, f"http://127.0.0.1:{port}", new_key(pg_settings, f"resume-{port}").key)
    try:
        yield server
    finally:
        proc.stop()
        server.engine.dispose()


def adapter(job_id: str) -> str:
    return f"/fine_tuning/jobs/{job_id}/adapter"


def test_a_download_cut_halfway_resumes_with_range_from_the_part_and_verifies(served: Served, tmp_path: Path) -> None:
    data = random_bytes(SIZE)
    job_id, dest = served.new_job(data), tmp_path / "adapter.zip"
    part, tag = part_paths(dest)
    cut = CutAfter(limit=SIZE // 2)
    with served.http(cut) as http, pytest.raises(httpx.ReadError):
        fetch(http, adapter(job_id), dest, raise_for=raise_for, out=io.StringIO())
    assert not dest.exists() and part.stat().st_size == SIZE // 2 and part.read_bytes() == data[: SIZE // 2]
    assert tag.read_text() == f'"{hashlib.sha256(data).hexdigest()}"'
    whole = CutAfter()
    with served.http(whole) as http:
        sha256 = fetch(http, adapter(job_id), dest, raise_for=raise_for, out=io.StringIO())
    sent = whole.requests[0].headers
    assert len(whole.requests) == 1 and sent["range"] == f"bytes={SIZE // 2}-" and sent["if-range"] == f'"{sha256}"'
    assert sha256 == hashlib.sha256(data).hexdigest() and dest.read_bytes() == data
    assert not part.exists() and not tag.exists()


def test_a_corrupted_part_is_detected_and_fetched_again_from_the_start(served: Served, tmp_path: Path) -> None:
    data = random_bytes(SIZE)
    job_id, dest = served.new_job(data), tmp_path / "adapter.zip"
    part, tag = part_paths(dest)
    bad = bytearray(data[: SIZE // 2])
    bad[1000] ^= 0xFF  # a flipped bit on disk in the part
    part.write_bytes(bytes(bad))
    tag.write_text(f'"{hashlib.sha256(data).hexdigest()}"')
    transport, out = CutAfter(), io.StringIO()
    with served.http(transport) as http:
        sha256 = fetch(http, adapter(job_id), dest, raise_for=raise_for, out=out)
    assert [r.headers.get("range") for r in transport.requests] == [f"bytes={SIZE // 2}-", None]
    assert "did not verify" in out.getvalue()
    assert sha256 == hashlib.sha256(data).hexdigest() and dest.read_bytes() == data


def test_a_part_of_another_version_gets_the_whole_new_file(served: Served, tmp_path: Path) -> None:
    data = random_bytes(SIZE)
    job_id, dest = served.new_job(data), tmp_path / "adapter.zip"
    part, tag = part_paths(dest)
    part.write_bytes(random_bytes(1000))
    tag.write_text('"' + "0" * 64 + '"')  # the ETag the part was of: the server's file changed since
    transport, out = CutAfter(), io.StringIO()
    with served.http(transport) as http:
        fetch(http, adapter(job_id), dest, raise_for=raise_for, out=out)
    assert len(transport.requests) == 1 and transport.requests[0].headers["range"] == "bytes=1000-"
    assert "downloading it whole" in out.getvalue() and dest.read_bytes() == data


def test_a_complete_part_is_verified_without_a_body_and_errors_keep_the_apis_message(
        served: Served, tmp_path: Path) -> None:
    data = random_bytes(SIZE // 4)
    job_id, dest = served.new_job(data), tmp_path / "adapter.zip"
    part, tag = part_paths(dest)
    part.write_bytes(data)
    tag.write_text(f'"{hashlib.sha256(data).hexdigest()}"')
    transport = CutAfter()
    with served.http(transport) as http:  # the server answers 416: the part already holds the whole file
        assert fetch(http, adapter(job_id), dest, raise_for=raise_for, out=io.StringIO()) == hashlib.sha256(
            data).hexdigest()
    assert dest.read_bytes() == data and len(transport.requests) == 1
    with served.http(CutAfter()) as http, pytest.raises(ClientError, match="checkpoint"):
        fetch(http, adapter(job_id), tmp_path / "x.zip", {"checkpoint": "99"}, raise_for=raise_for)
    # the file on disk no longer matches its row: nothing is kept
    store_file(served.settings, f"{job_id}/attempt-1/adapter.zip", data[::-1])
    with served.http(CutAfter()) as http, pytest.raises((ClientError, DownloadError)):
        fetch(http, adapter(job_id), tmp_path / "y.zip", raise_for=raise_for)
    assert not (tmp_path / "y.zip").exists()


def drlora(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**settings_env(served.settings), "DRLORA_BASE_URL": served.url, "DRLORA_API_KEY": served.key}
    return subprocess.run([sys.executable, "-m", "drlora_cli.main", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_the_cli_downloads_a_built_export_and_reports_a_failed_one(served: Served, tmp_path: Path) -> None:
    data = random_bytes(SIZE // 4)
    job_id = served.new_job(data)
    options = ExportOptions(layout="fused", dtype="bf16", base_model_name_or_path="org/base")
    with transaction(served.factory) as s:
        export_id = exports.request(s, s.get_one(Job, job_id), options, None)[0].id
    built = random_bytes(300_000)
    sha256 = build_export(served.factory, served.settings, export_id, built)
    dest = tmp_path / "bf16.zip"
    done = drlora(served, "adapter", "download", job_id, "--layout", "fused", "--dtype", "bf16",
                  "--base-model-name", "org/base", "-o", str(dest))
    assert done.returncode == 0, done.stdout + done.stderr
    assert dest.read_bytes() == built and sha256 in done.stdout and f"export {export_id}: succeeded" in done.stderr
    listed = drlora(served, "adapter", "exports", job_id)
    assert listed.returncode == 0 and export_id in listed.stdout and "bf16" in listed.stdout

    with transaction(served.factory) as s:
        failed = exports.request(s, s.get_one(Job, job_id), ExportOptions(max_rank=3), None)[0].id
        attempt = exports.claim(s, failed, "w")
        assert attempt is not None
        assert exports.fail(s, failed, "w", attempt, "export_error", "no space left on device")
    # the CLI's request queues the failed export again (no worker runs here): it fails once more while the CLI waits
    proc = subprocess.Popen([sys.executable, "-m", "drlora_cli.main", "adapter", "download", job_id, "--max-rank",
                             "3", "--interval", "0.2", "-o", str(tmp_path / "r3.zip")],
                            env={**settings_env(served.settings), "DRLORA_BASE_URL": served.url,
                                 "DRLORA_API_KEY": served.key}, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def claimed_again() -> bool:  # as a worker would once the CLI's request queued it again
        with transaction(served.factory) as s:
            return exports.claim(s, failed, "w2") is not None

    wait_until(claimed_again, 60, what="the CLI's request to queue the export again")
    with transaction(served.factory) as s:
        assert exports.fail(s, failed, "w2", 1, "export_error", "no space left on device")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "failed: export_error: no space left on device" in err, out + err
    assert not (tmp_path / "r3.zip").exists()
