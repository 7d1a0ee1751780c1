"""The export task in this process (worker/export.py) on PostgreSQL: a real stored adapter (the engine's writer on
a tiny Qwen3-MoE, no training) zipped as a job's artifact, exported fused in bf16 with another base model name by
`drlora_core.exporting.export_stored`, zipped to the artifact root with its sha256; and the ways it fails."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from drlora_cli.bootstrap import new_key
from drlora_core.atomic import zip_dir_atomic
from drlora_core.export import export_peft
from drlora_core.export_options import ExportOptions
from service import exports
from service.db import make_engine, make_sessionmaker, transaction
from service.ids import new_id, now
from service.settings import Settings
from service.statuses import JobStatus
from service.tables import Artifact, Export, File, Job, Tenant
from tests.support.engine import adapted
from tests.support.exports import succeed_with_artifacts
from worker.export import run_export

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def factory(pg_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg_settings.sqlalchemy_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def adapter_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("stored")
    _, adapter = adapted("qwen3_moe")
    export_peft(adapter, folder / "adapter", base_model="qwen3_moe")
    zip_dir_atomic(folder / "adapter", folder / "adapter.zip")
    return (folder / "adapter.zip").read_bytes()


def new_job(factory: sessionmaker[Session], settings: Settings, data: bytes) -> str:
    tenant_name = f"worker-{new_id('t')}"
    new_key(settings, tenant_name)
    with transaction(factory) as s:
        tenant = s.scalars(select(Tenant).where(Tenant.name == tenant_name)).one()
        file = File(id=new_id("file"), tenant_id=tenant.id, filename="t.jsonl", purpose="fine-tune", bytes=1,
                    format="text", lines=1, sha256="0" * 64, path="none", created_at=now())
        s.add(file)
        s.flush()
        job = Job(id=new_id("ftjob"), tenant_id=tenant.id, model="test-model", training_file=file.id,
                  method="dr_lora", hyperparameters={}, seed=0, status=JobStatus.queued, step=0, created_at=now(),
                  attempt=1, max_attempts=3)
        s.add(job)
    succeed_with_artifacts(factory, settings, job.id, data)
    return job.id


def request(factory: sessionmaker[Session], job_id: str, options: ExportOptions, checkpoint: str | None = None) -> str:
    with transaction(factory) as s:
        return exports.request(s, s.get_one(Job, job_id), options, checkpoint)[0].id


def safetensors_dtypes(data: bytes) -> set[str]:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_a_bf16_fused_export_is_built_zipped_with_its_sha256_and_recorded(
        factory: sessionmaker[Session], pg_settings: Settings, adapter_zip: bytes) -> None:
    job_id = new_job(factory, pg_settings, adapter_zip)
    options = ExportOptions(layout="fused", dtype="bf16", base_model_name_or_path="my-org/base-moe")
    export_id = request(factory, job_id, options)
    assert run_export(export_id, factory, pg_settings) == "succeeded"
    assert run_export(export_id, factory, pg_settings) == "skipped"  # a duplicate delivery does nothing
    with factory() as s:
        row = s.get_one(Export, export_id)
    assert row.path == f"{job_id}/exports/{export_id}/attempt-1.zip" and row.progress == 1.0
    path = pg_settings.artifact_root / row.path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256 and path.stat().st_size == row.bytes
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        config = json.loads(zf.read("adapter_config.json"))
        assert config["base_model_name_or_path"] == "my-org/base-moe"
        weights = zf.getinfo("adapter_model.safetensors")
        assert weights.compress_type == zipfile.ZIP_STORED
        assert safetensors_dtypes(zf.read("adapter_model.safetensors")) == {"BF16"}
        assert "drlora_ranks.json" in zf.namelist()


def test_a_source_altered_on_disk_fails_the_export_naming_it(
        factory: sessionmaker[Session], pg_settings: Settings, adapter_zip: bytes) -> None:
    job_id = new_job(factory, pg_settings, adapter_zip)
    export_id = request(factory, job_id, ExportOptions(dtype="bf16"))
    with factory() as s:
        artifact = s.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "adapter")).one()
    (pg_settings.artifact_root / artifact.path).write_bytes(adapter_zip[::-1])
    assert run_export(export_id, factory, pg_settings) == "failed"
    with factory() as s:
        row = s.get_one(Export, export_id)
    assert row.status == "failed" and row.error is not None and row.error["code"] == "invalid_input"
    assert "sha256" in row.error["message"] and row.path is None


def test_a_source_that_is_not_an_adapter_fails_with_the_engines_error(
        factory: sessionmaker[Session], pg_settings: Settings, adapter_zip: bytes) -> None:
    job_id = new_job(factory, pg_settings, adapter_zip)
    export_id = request(factory, job_id, ExportOptions(dtype="bf16"), checkpoint="2")  # its zip is noise
    assert run_export(export_id, factory, pg_settings) == "failed"
    with factory() as s:
        row = s.get_one(Export, export_id)
    assert row.error is not None and row.error["code"] == "export_error" and "zip" in row.error["message"].lower()
    assert not list((pg_settings.artifact_root / job_id).glob("exports/**/*.zip"))


def test_unzipping_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    from worker.zipstream import unzip_flat

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
        zf.writestr("adapter_config.json", "{}")
    unzip_flat(evil, tmp_path / "in")
    assert not (tmp_path / "outside.txt").exists() and (tmp_path / "in" / "adapter_config.json").is_file()


def test_the_streamed_zip_is_a_valid_zip_whose_sha256_is_its_bytes(tmp_path: Path) -> None:
    from worker.zipstream import zip_dir_hashed

    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 5000)
    (src / "adapter_config.json").write_text('{"r": 4}')
    seen: list[float] = []
    sha256, size = zip_dir_hashed(src, tmp_path / "out" / "x.zip", seen.append)
    data = (tmp_path / "out" / "x.zip").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256 and len(data) == size and seen[-1] == 1.0
    with zipfile.ZipFile(tmp_path / "out" / "x.zip") as zf:
        assert zf.testzip() is None and zf.read("adapter_config.json") == b'{"r": 4}'
        assert zf.getinfo("adapter_model.safetensors").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("adapter_config.json").compress_type == zipfile.ZIP_DEFLATED
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.zip"]  # no temporary left
