"""End to end on PostgreSQL + Redis: a real API server (uvicorn) and a real worker process training the demo model.

The openai SDK drives the main flow; then cancel, pause/resume, duplicate deliveries and a second tenant's access,
against the same server and worker.
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select

from drlora_cli.bootstrap import migrate, new_key, register_model
from service.broker import make_celery, send_train
from service.db import make_engine, make_sessionmaker
from service.settings import Settings
from service.tables import Artifact, Job
from tests.support.service import (
    HANG_GUARD_S,
    Api,
    adapter_count,
    demo_paths,
    dr_lora,
    free_port,
    job_row,
    loads_torch,
    make_settings,
    start_api,
    start_worker,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]


class Service:
    def __init__(self, settings: Settings, url: str, key: str, api_pid: int, worker_pid: int) -> None:
        self.settings, self.url, self.key = settings, url, key
        self.api_pid, self.worker_pid = api_pid, worker_pid
        self.api = Api(url, key)
        self.engine = make_engine(settings.sqlalchemy_url)
        self.factory = make_sessionmaker(self.engine)

    def row(self, job_id: str) -> Job:
        return job_row(self.factory, job_id)

    def adapters(self, job_id: str) -> int:
        return adapter_count(self.factory, job_id)

    def upload(self, path: Path) -> str:
        with open(path, "rb") as f:
            r = self.api.http.post("/v1/files", files={"file": (path.name, f)}, data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def create(self, file_id: str, method: dict[str, Any]) -> str:
        r = self.api.post("/v1/fine_tuning/jobs", {"model": "drlora-demo-moe", "training_file": file_id,
                                                   "method": method})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])


@pytest.fixture(scope="module")
def service(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("e2e-pg")
    settings = make_settings(data, pg_url, redis_url, task_queue=f"drlora-e2e-{data.name}")
    migrate(settings)
    register_model(settings, "drlora-demo-moe", demo_paths()[0])
    port = free_port()
    api = start_api(settings, port, data / "api.log")
    worker = start_worker(settings, data / "worker.log")
    svc = Service(settings, f"http://127.0.0.1:{port}", new_key(settings, "e2e-owner").key, api.pid, worker.pid)
    try:
        yield svc
    finally:
        svc.engine.dispose()
        svc.api.close()
        worker.stop()
        api.stop()


@pytest.fixture(scope="module")
def train_file_id(service: Service) -> str:
    return service.upload(demo_paths()[1])


@pytest.fixture(scope="module")
def finished_job(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The main flow, driven by the official openai SDK; returns what later tests check against."""
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=service.key, max_retries=0, timeout=30)
    _, train_path, val_path = demo_paths()
    with open(train_path, "rb") as f:
        train = client.files.create(file=f, purpose="fine-tune")
    val_lines = val_path.read_bytes().splitlines(keepends=True)[:16]
    val = client.files.create(file=("val.jsonl", b"".join(val_lines)), purpose="fine-tune")
    assert train.id.startswith("file-") and train.purpose == "fine-tune"
    assert client.models.retrieve("drlora-demo-moe").id == "drlora-demo-moe"
    job = client.fine_tuning.jobs.create(
        model="drlora-demo-moe", training_file=train.id, validation_file=val.id, suffix="e2e", seed=3,
        method=dr_lora(max_steps=8, eval_every=4),  # type: ignore[arg-type]
    )
    assert job.status == "queued" and job.object == "fine_tuning.job"

    # While it runs, its events, metrics, ranks and checkpoints are visible.
    seen = service.api.wait_step(job.id, 4)
    assert seen["status"] == "running"
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any(e.type == "metrics" for e in events)
    metrics = service.api.get(f"/v1/fine_tuning/jobs/{job.id}/metrics").json()["data"]
    assert [m["step"] for m in metrics][:3] == [1, 2, 3] and metrics[0]["train_loss"] > 0
    ranks = service.api.get(f"/v1/fine_tuning/jobs/{job.id}/ranks").json()
    assert ranks["ranks"] and all(2 <= r <= 8 for row in ranks["ranks"] for r in row)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number >= 2
    experts = service.api.get(f"/v1/fine_tuning/jobs/{job.id}/experts").json()
    assert len(experts["frequency"]) == len(ranks["ranks"])

    done = service.api.wait_status(job.id, ("succeeded",))
    final = client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "succeeded" and final.fine_tuned_model == f"ft:drlora-demo-moe:e2e:{job.id}"
    assert final.trained_tokens and final.trained_tokens > 0
    assert final.fine_tuned_model in [m.id for m in client.models.list().data]
    client.close()
    return {"id": job.id, "file_id": train.id, "job": done, "checkpoint_id": checkpoints[-1].id}


def test_openai_sdk_flow_and_adapter_loads_with_peft(service: Service, finished_job: dict[str, Any],
                                                     tmp_path: Path) -> None:
    job_id = finished_job["id"]
    metrics = service.api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert any(m["valid_loss"] is not None for m in metrics)
    ranks = service.api.get(f"/v1/fine_tuning/jobs/{job_id}/ranks").json()
    assert ranks["step"] == 8 and ranks["events"]
    for row in ranks["ranks"]:
        assert sum(row) == 4 * len(row)  # each layer ends at exactly r_target on average
    early = service.api.get(f"/v1/fine_tuning/jobs/{job_id}/ranks", step=0).json()
    assert early["step"] == 0 and all(r == 2 for row in early["ranks"] for r in row)

    r = service.api.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    digest = hashlib.sha256(r.content).hexdigest()
    assert r.headers["x-content-sha256"] == digest and r.headers["etag"] == f'"{digest}"'
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert {"adapter_config.json", "adapter_model.safetensors", "drlora_ranks.json"} <= set(zf.namelist())
        zf.extractall(tmp_path / "adapter")
    assert service.adapters(job_id) == 1

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(demo_paths()[0])
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 9, 13]])
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, tmp_path / "adapter")
        after = model(ids).logits
    assert after.shape == before.shape and not torch.allclose(after, before)

    ckpt = service.api.get(f"/v1/fine_tuning/jobs/{job_id}/adapter", checkpoint=finished_job["checkpoint_id"])
    assert ckpt.status_code == 200 and ckpt.headers["x-content-sha256"] == hashlib.sha256(ckpt.content).hexdigest()
    with zipfile.ZipFile(io.BytesIO(ckpt.content)) as zf:  # an intermediate adapter, in the same PEFT layout
        assert set(zf.namelist()) == {"adapter_config.json", "adapter_model.safetensors", "drlora_ranks.json"}
        zf.extractall(tmp_path / "checkpoint-adapter")
    with torch.no_grad():
        mid = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_paths()[0]),
                                        tmp_path / "checkpoint-adapter")(ids).logits
    assert not torch.allclose(mid, before) and not torch.allclose(mid, after)


def test_a_second_tenant_gets_404_everywhere(service: Service, finished_job: dict[str, Any]) -> None:
    with Api(service.url, new_key(service.settings, "e2e-intruder").key) as other:
        job_id, file_id = finished_job["id"], finished_job["file_id"]
        job_paths = ["", "/events", "/checkpoints", "/ranks", "/experts", "/metrics", "/adapter"]
        for tail in job_paths:
            mine, unknown = other.get(f"/v1/fine_tuning/jobs/{job_id}{tail}"), other.get(f"/v1/fine_tuning/jobs/ftjob-0{tail}")
            assert mine.status_code == unknown.status_code == 404, tail
            assert mine.json()["error"]["type"] == unknown.json()["error"]["type"] == "not_found_error"
        for action in ("cancel", "pause", "resume"):
            assert other.post(f"/v1/fine_tuning/jobs/{job_id}/{action}").status_code == 404
        for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
            assert other.get(path).status_code == 404
        assert other.http.delete(f"/v1/files/{file_id}").status_code == 404
        assert other.get("/v1/fine_tuning/jobs").json()["data"] == []
        assert other.get("/v1/files").json()["data"] == []
        assert other.get(f"/v1/models/{finished_job['job']['fine_tuned_model']}").status_code == 404
        r = other.post("/v1/fine_tuning/jobs", {"model": "drlora-demo-moe", "training_file": file_id})
        assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    assert service.api.job(job_id)["status"] == "succeeded"  # untouched


def test_cancel_a_running_job(service: Service, train_file_id: str) -> None:
    job_id = service.create(train_file_id, dr_lora(max_steps=400, checkpoint_every=0))
    service.api.wait_step(job_id, 1)
    asked = time.monotonic()
    first = service.api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()
    second = service.api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()
    assert first["status"] in ("running", "cancelled") and second["status"] in ("running", "cancelled")
    job = service.api.wait_status(job_id, ("cancelled",))
    assert time.monotonic() - asked < service.api.pace.allow(30, 10)  # seen at a heartbeat, acted on at a step
    assert job["progress"]["step"] < 400 and job["fine_tuned_model"] is None
    assert service.adapters(job_id) == 0
    assert service.api.get(f"/v1/fine_tuning/jobs/{job_id}/adapter").status_code == 409
    assert service.api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_a_cancelled_queued_job_never_starts(service: Service, train_file_id: str) -> None:
    running = service.create(train_file_id, dr_lora(max_steps=400, checkpoint_every=0))
    service.api.wait_step(running, 1)
    queued = service.create(train_file_id, dr_lora())  # one worker, busy: this one waits in the broker
    assert service.api.post(f"/v1/fine_tuning/jobs/{queued}/cancel").json()["status"] == "cancelled"
    assert service.api.post(f"/v1/fine_tuning/jobs/{queued}/cancel").json()["status"] == "cancelled"
    started = time.monotonic()
    service.api.post(f"/v1/fine_tuning/jobs/{running}/cancel")
    service.api.wait_status(running, ("cancelled",))
    assert time.monotonic() - started < service.api.pace.allow(10, 3)  # within a few heartbeats (and a step)
    # the worker now takes the queued job's message, and must leave it alone
    after = service.create(train_file_id, {"type": "lora", "lora": {"hyperparameters": {"max_steps": 1, "r_target": 2}}})
    service.api.wait_status(after, ("succeeded",))
    row = service.row(queued)
    assert (row.status, row.attempt, row.started_at) == ("cancelled", 0, None) and service.adapters(queued) == 0
    events = service.api.get(f"/v1/fine_tuning/jobs/{queued}/events", limit=1000).json()["data"]
    assert not [e for e in events if e["message"].startswith("Attempt ")]


def test_pause_and_resume_continue_from_the_checkpoint(service: Service, train_file_id: str) -> None:
    steps = 80  # enough that the pause (seen at the next 0.5 s heartbeat) lands well before the end
    job_id = service.create(train_file_id, dr_lora(max_steps=steps, checkpoint_every=0))
    service.api.wait_step(job_id, 2)
    service.api.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    paused = service.api.wait_status(job_id, ("paused",))
    step = paused["progress"]["step"]
    assert 2 <= step < steps
    checkpoints = service.api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in checkpoints] == [step]
    resumed = service.api.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()
    assert resumed["status"] in ("queued", "running")
    service.api.wait_status(job_id, ("succeeded",))
    messages = [e["message"] for e in service.api.get(f"/v1/fine_tuning/jobs/{job_id}/events", limit=1000)
                .json()["data"]]
    assert f"Training {steps} steps from the checkpoint at step {step}" in messages
    metrics = service.api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert service.row(job_id).attempt == 2 and service.adapters(job_id) == 1


def test_duplicate_deliveries_train_once(service: Service, train_file_id: str) -> None:
    celery = make_celery(service.settings)
    job_id = service.create(train_file_id, dr_lora())
    for _ in range(3):
        send_train(celery, job_id)
    service.api.wait_status(job_id, ("succeeded",))
    for _ in range(2):  # and once more after success
        send_train(celery, job_id)
    # A second job runs only after the worker consumed the duplicates before it.
    other = service.create(train_file_id, {"type": "lora", "lora": {"hyperparameters": {"max_steps": 1, "r_target": 2}}})
    service.api.wait_status(other, ("succeeded",))
    row = service.row(job_id)
    assert (row.status, row.attempt) == ("succeeded", 1) and service.adapters(job_id) == 1
    starts = [e for e in service.api.get(f"/v1/fine_tuning/jobs/{job_id}/events", limit=1000).json()["data"]
              if e["message"].startswith("Attempt ")]
    assert len(starts) == 1


def test_the_api_process_never_loads_torch(service: Service, finished_job: dict[str, Any]) -> None:
    assert service.api.job(finished_job["id"])["status"] == "succeeded"  # it served a whole training job
    assert not loads_torch(service.api_pid)
    assert loads_torch(service.worker_pid)  # the check can see torch where it is loaded


def test_an_adapter_altered_on_disk_is_refused(service: Service, finished_job: dict[str, Any]) -> None:
    job_id = finished_job["id"]
    with service.factory() as s:
        artifact = s.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "adapter")).one()
    path = service.settings.artifact_root / artifact.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    r = service.api.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")
    assert r.status_code == 500 and r.json()["error"]["code"] == "artifact_integrity"
    assert "x-content-sha256" not in r.headers
