"""The official `openai` SDK against the API in-process (its HTTP client is FastAPI's TestClient), every answer
validated strictly against the SDK's own types with only our documented extensions (tests/support/openai_strict.py):
files, models, jobs create/list/retrieve/cancel/pause/resume, events, checkpoints, and a finished job's result file
and checkpoint models. The job "runs" through the worker's own recorder and publish step (no engine), on PostgreSQL.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types import FileDeleted, FileObject, Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from api.main import create_app
from drlora_core.callbacks import ExpertStats, StepMetrics
from drlora_core.checkpoint import ADAPTER_DIR
from drlora_core.run import RunResult
from service.db import make_engine, make_sessionmaker
from service.settings import Settings
from tests.support.openai_strict import check, check_list
from worker.job import publish
from worker.lease import Heartbeat, claim
from worker.recorder import Recorder

pytestmark = pytest.mark.timeout(60)

DATA = b'{"prompt": "1 + 1 =", "completion": " 2"}\n{"prompt": "2 + 2 =", "completion": " 4"}\n'
RANKS = [[2, 2], [2, 2]]
QUICK = {"type": "dr_lora", "dr_lora": {"hyperparameters": {"max_steps": 4, "r_init": 2, "r_target": 4, "r_max": 8}}}


@pytest.fixture(scope="module")
def http(pg_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(pg_settings, sweep=False)) as c:
        yield c


@pytest.fixture
def sdk(http: TestClient, make_key) -> Iterator[openai.OpenAI]:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=make_key(), http_client=http, max_retries=0)
    yield client


def raw(response: Any) -> Any:
    """The JSON body of a `with_raw_response` call (what the SDK would parse)."""
    return response.http_response.json()


def upload(sdk: openai.OpenAI) -> dict[str, Any]:
    body = raw(sdk.files.with_raw_response.create(file=("train.jsonl", DATA), purpose="fine-tune"))
    check(FileObject, body)
    return dict(body)


def test_files_and_models(sdk: openai.OpenAI) -> None:
    file = upload(sdk)
    check(FileObject, raw(sdk.files.with_raw_response.retrieve(file["id"])))
    assert file["id"] in [f["id"] for f in check_list(FileObject, raw(sdk.files.with_raw_response.list()))]
    assert sdk.files.content(file["id"]).content == DATA
    check(FileDeleted, raw(sdk.files.with_raw_response.delete(file["id"])))
    check_list(Model, raw(sdk.models.with_raw_response.list()))
    check(Model, raw(sdk.models.with_raw_response.retrieve("test-model")))


def test_jobs_create_list_retrieve_pause_resume_cancel_and_events(sdk: openai.OpenAI) -> None:
    file = upload(sdk)
    jobs = sdk.fine_tuning.jobs.with_raw_response
    job = raw(jobs.create(model="test-model", training_file=file["id"], seed=3, suffix="sdk",
                          metadata={"team": "a"}, method=QUICK,  # type: ignore[arg-type]
                          integrations=[{"type": "wandb", "wandb": {"project": "p"}}]))
    check(FineTuningJob, job)
    bare = raw(jobs.create(model="test-model", training_file=file["id"]))
    check(FineTuningJob, bare)
    legacy = raw(jobs.create(model="test-model", training_file=file["id"],
                             hyperparameters={"n_epochs": "auto", "batch_size": 1, "learning_rate_multiplier": 2}))
    check(FineTuningJob, legacy)
    supervised = raw(jobs.create(model="test-model", training_file=file["id"],
                                 method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}))
    check(FineTuningJob, supervised)
    assert [j["id"] for j in check_list(FineTuningJob, raw(jobs.list(limit=10)))] == \
        [supervised["id"], legacy["id"], bare["id"], job["id"]]
    check(FineTuningJob, raw(jobs.retrieve(job["id"])))
    paused = raw(jobs.pause(job["id"]))
    check(FineTuningJob, paused)
    assert paused["status"] == "paused"
    check(FineTuningJob, raw(jobs.resume(job["id"])))
    cancelled = raw(jobs.cancel(job["id"]))
    check(FineTuningJob, cancelled)
    assert cancelled["status"] == "cancelled"
    events = check_list(FineTuningJobEvent, raw(jobs.list_events(job["id"], limit=100)))
    assert events[0]["message"] == "Job cancelled" and events[-1]["message"].startswith("Created")  # newest first
    assert check_list(FineTuningJobCheckpoint, raw(sdk.fine_tuning.jobs.checkpoints.with_raw_response.list(
        job["id"]))) == []


def run_to_success(settings: Settings, job_id: str, tmp_path: Path) -> None:
    """What a worker records for a 4-step job with a checkpoint at step 2, then its publish step."""
    engine = make_engine(settings.sqlalchemy_url)
    factory = make_sessionmaker(engine)
    try:
        owned = claim(factory, job_id, "w1", lease_s=60)
        assert owned is not None
        heartbeat = Heartbeat(factory, owned, interval_s=1, lease_s=60)
        rec = Recorder(factory, owned, heartbeat, runs_root=settings.runs_root, artifact_root=settings.artifact_root,
                       time_limit_s=3600)
        rec.on_start(total_steps=4, ranks=RANKS, start_step=0)
        attempt = settings.runs_root / job_id / "attempt-1"
        for step in range(1, 5):
            rec.on_step(StepMetrics(step=step, total_steps=4, train_loss=1.0 / step, learning_rate=1e-3,
                                    tokens_per_second=50.0, trained_tokens=32 * step, grad_norm=0.5))
            if step == 2:
                _adapter(attempt / "checkpoint-000002" / ADAPTER_DIR)
                rec.on_checkpoint(2, attempt / "checkpoint-000002")
        half = [[0.5, 0.5], [0.5, 0.5]]
        result = RunResult(status="completed", stopped=None, step=4, total_steps=4,
                           adapter_dir=_adapter(attempt / "adapter"), merged_dir=None, ranks=RANKS, growth_events=[],
                           stats=ExpertStats(4, half, half, half, RANKS))
        assert publish(factory, owned, heartbeat, result, settings) == "succeeded"
    finally:
        engine.dispose()


def _adapter(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    (path / "adapter_config.json").write_text("{}")
    return path


def test_a_finished_job_its_checkpoints_result_file_and_models(sdk: openai.OpenAI, pg_settings: Settings,
                                                                tmp_path: Path) -> None:
    file = upload(sdk)
    job_id = sdk.fine_tuning.jobs.create(model="test-model", training_file=file["id"], suffix="done",
                                         method=QUICK).id  # type: ignore[arg-type]
    run_to_success(pg_settings, job_id, tmp_path)
    job = raw(sdk.fine_tuning.jobs.with_raw_response.retrieve(job_id))
    check(FineTuningJob, job)
    assert job["status"] == "succeeded" and job["estimated_finish"] is None and job["trained_tokens"] == 128

    [result_id] = job["result_files"]
    result = raw(sdk.files.with_raw_response.retrieve(result_id))
    check(FileObject, result)
    assert result["purpose"] == "fine-tune-results" and result["filename"].endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(sdk.files.content(result_id).text)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert {"train_loss", "valid_loss", "learning_rate", "tokens_per_second", "grad_norm", "mean_rank_layer_0",
            "mean_rank_layer_1"} <= rows[0].keys()
    assert float(rows[3]["train_loss"]) == 0.25 and float(rows[3]["mean_rank_layer_0"]) == 2.0

    listed = check_list(FineTuningJobCheckpoint, raw(sdk.fine_tuning.jobs.checkpoints.with_raw_response.list(job_id)))
    assert [c["step_number"] for c in listed] == [4, 2]  # the final step is always one
    page = raw(sdk.fine_tuning.jobs.checkpoints.with_raw_response.list(job_id, limit=1, after=listed[0]["id"]))
    assert [c["step_number"] for c in check_list(FineTuningJobCheckpoint, page)] == [2]

    model = raw(sdk.models.with_raw_response.retrieve(job["fine_tuned_model"]))
    check(Model, model)
    for ckpt in listed:
        answer = raw(sdk.models.with_raw_response.retrieve(ckpt["fine_tuned_model_checkpoint"]))
        check(Model, answer)
        assert answer["id"] == ckpt["fine_tuned_model_checkpoint"] == f"{job['fine_tuned_model']}:ckpt-step-" \
            f"{ckpt['step_number']}"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(f"{job['fine_tuned_model']}:ckpt-step-3")  # no checkpoint at that step
    assert job["fine_tuned_model"] in [m["id"] for m in check_list(Model, raw(sdk.models.with_raw_response.list()))]
