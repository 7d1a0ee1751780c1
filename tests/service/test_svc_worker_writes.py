"""The worker's database writes on SQLite, in-process and without the engine: the `Recorder` the engine reports to,
and the end of an attempt (publish the adapter, release the job, record a failure), each fenced by the attempt."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from drlora_core.callbacks import ExpertStats, GrowthEvent, StepMetrics
from drlora_core.checkpoint import ADAPTER_DIR as CHECKPOINT_ADAPTER
from drlora_core.run import RunResult
from service.db import transaction
from service.jobstate import Fenced
from service.settings import Settings
from service.statuses import JobStatus, RequestedAction
from service.tables import Artifact, Checkpoint, ExpertStat, File, Job, Metric, RankSnapshot
from service.tables import GrowthEvent as GrowthRow
from tests.support.job_rows import job_in, messages, row_values, sqlite_factory
from tests.support.service import make_settings
from worker.job import publish, record_failure, release
from worker.lease import Claim, Heartbeat, claim
from worker.recorder import Recorder, shutdown_requested

pytestmark = pytest.mark.timeout(60)

RANKS = [[2, 2], [2, 2]]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with sqlite_factory(tmp_path / "db.sqlite") as f:
        yield f


@pytest.fixture
def owned(factory: sessionmaker[Session]) -> Claim:
    result = claim(factory, job_in(factory, JobStatus.queued), "w1", lease_s=30)
    assert result is not None
    return result


def heartbeat(factory: sessionmaker[Session], owned: Claim) -> Heartbeat:
    return Heartbeat(factory, owned, interval_s=1, lease_s=30)  # not started: the tests set what it saw


def recorder(factory: sessionmaker[Session], owned: Claim, settings: Settings, time_limit_s: float = 3600) -> Recorder:
    return Recorder(factory, owned, heartbeat(factory, owned), runs_root=settings.runs_root,
                    artifact_root=settings.artifact_root, time_limit_s=time_limit_s)


def stats(step: int, ranks: list[list[int]] = RANKS) -> ExpertStats:
    half = [[0.5, 0.5], [0.5, 0.5]]
    return ExpertStats(step=step, frequency=half, importance=half, saliency=half, ranks=ranks)


def metrics(step: int, total: int = 10) -> StepMetrics:
    return StepMetrics(step=step, total_steps=total, train_loss=2.0 / step, learning_rate=1e-3,
                       tokens_per_second=100.0, trained_tokens=64 * step, grad_norm=1.0)


def steps_of(factory: sessionmaker[Session], table: type[Metric] | type[Checkpoint], job_id: str) -> list[int]:
    with factory() as s:
        return list(s.scalars(select(table.step).where(table.job_id == job_id).order_by(table.step)))


def adapter_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(b"weights")
    (root / "adapter_config.json").write_text("{}")
    return root


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the Recorder -------------------------------------------------------------------------------------------------
def test_recorder_writes_steps_evals_growth_and_the_end(factory: sessionmaker[Session], owned: Claim,
                                                        settings: Settings) -> None:
    rec = recorder(factory, owned, settings)
    rec.on_start(total_steps=10, ranks=RANKS, start_step=0)
    for step in (1, 2):
        rec.on_step(metrics(step))
    rec.on_eval(2, valid_loss=1.5)
    rec.on_eval(3, valid_loss=1.4)  # a validation pass on a step with no training metrics yet
    grown = [[2, 4], [2, 2]]
    rec.on_growth([GrowthEvent(step=2, layer=0, expert=1, old_rank=2, new_rank=4, saliency=0.9, frequency=0.5,
                               importance=0.5)], stats(2, grown))
    rec.on_end(3, stats(3, grown), None)
    job = row_values(factory, owned.job_id)
    assert (job["step"], job["total_steps"], job["trained_tokens"]) == (2, 10, 128)
    assert job["estimated_finish"] is not None
    with factory() as s:
        assert s.get_one(Metric, (owned.job_id, 2)).valid_loss == 1.5
        assert s.get_one(Metric, (owned.job_id, 3)).train_loss is None
        assert [g.new_rank for g in s.scalars(select(GrowthRow).where(GrowthRow.job_id == owned.job_id))] == [4]
        assert s.get_one(RankSnapshot, (owned.job_id, 0)).ranks == RANKS
        assert s.get_one(RankSnapshot, (owned.job_id, 2)).ranks == grown
        assert s.get_one(ExpertStat, (owned.job_id, 3)).ranks == grown
    log = messages(factory, owned.job_id)
    assert "Training 10 steps from the start" in log and "Step 2: validation loss=1.5000" in log
    assert "Step 2: grew 1 experts by 2 rank slices in total" in log


def test_recorder_publishes_each_checkpoint_once(factory: sessionmaker[Session], owned: Claim,
                                                 settings: Settings) -> None:
    rec = recorder(factory, owned, settings)
    rec.on_start(total_steps=10, ranks=RANKS, start_step=0)
    rec.on_step(metrics(4))
    path = settings.runs_root / owned.job_id / "attempt-1" / "checkpoint-000004"
    adapter_dir(path / CHECKPOINT_ADAPTER)
    rec.on_checkpoint(4, path)
    rec.on_checkpoint(4, path)  # written again (a retried write): still one checkpoint and one download
    with factory() as s:
        ckpt = s.scalars(select(Checkpoint).where(Checkpoint.job_id == owned.job_id)).one()
        artifact = s.scalars(select(Artifact).where(Artifact.job_id == owned.job_id)).one()
    assert (ckpt.step, ckpt.attempt, ckpt.path) == (4, 1, f"{owned.job_id}/attempt-1/checkpoint-000004")
    assert ckpt.metrics == {"step": 4, "train_loss": 0.5, "valid_loss": None}
    assert (artifact.kind, artifact.checkpoint_id, artifact.step) == ("checkpoint", ckpt.id, 4)
    zipped = settings.artifact_root / artifact.path
    assert artifact.sha256 == sha256_of(zipped) and artifact.bytes == zipped.stat().st_size
    assert sorted(zipfile.ZipFile(zipped).namelist()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_a_resumed_attempt_forgets_what_the_lost_one_recorded_after_its_checkpoint(
        factory: sessionmaker[Session], owned: Claim, settings: Settings) -> None:
    first = recorder(factory, owned, settings)
    first.on_start(total_steps=10, ranks=RANKS, start_step=0)
    for step in range(1, 6):
        first.on_step(metrics(step))
    for step in (2, 4):
        path = settings.runs_root / owned.job_id / f"checkpoint-{step}"
        adapter_dir(path / CHECKPOINT_ADAPTER)
        first.on_checkpoint(step, path)
    recorder(factory, owned, settings).on_start(total_steps=10, ranks=RANKS, start_step=2)
    assert steps_of(factory, Metric, owned.job_id) == [1, 2]
    assert steps_of(factory, Checkpoint, owned.job_id) == [2]
    assert row_values(factory, owned.job_id)["step"] == 2
    assert "Training 10 steps from the checkpoint at step 2" in messages(factory, owned.job_id)


def test_should_stop_answers_requests_shutdown_and_the_time_limit(factory: sessionmaker[Session], owned: Claim,
                                                                  settings: Settings) -> None:
    rec = recorder(factory, owned, settings)
    assert rec.should_stop(1) is None
    rec.heartbeat.requested = RequestedAction.pause
    assert rec.should_stop(1) == "pause"
    rec.heartbeat.requested = RequestedAction.cancel
    assert rec.should_stop(1) == "cancel"
    shutdown_requested.set()
    try:
        assert rec.should_stop(1) == "shutdown"  # the job goes back to the queue even with a cancel pending
    finally:
        shutdown_requested.clear()
    rec.heartbeat.fenced = True
    assert rec.should_stop(1) == "shutdown"
    late = recorder(factory, owned, settings, time_limit_s=0)
    assert late.should_stop(1) == "shutdown" and late.timed_out


def test_a_stale_attempts_recorder_writes_nothing(factory: sessionmaker[Session], owned: Claim,
                                                  settings: Settings) -> None:
    rec = recorder(factory, owned, settings)
    rec.on_start(total_steps=10, ranks=RANKS, start_step=0)
    with transaction(factory) as s:
        s.get_one(Job, owned.job_id).attempt = 2  # the sweep took the job back and attempt 2 claimed it
    with pytest.raises(Fenced):
        rec.on_step(metrics(1))
    path = settings.runs_root / owned.job_id / "checkpoint-1"
    adapter_dir(path / CHECKPOINT_ADAPTER)
    with pytest.raises(Fenced):
        rec.on_checkpoint(1, path)
    assert steps_of(factory, Metric, owned.job_id) == [] and steps_of(factory, Checkpoint, owned.job_id) == []
    rec.heartbeat.fenced = True
    rec.on_end(1, stats(1), None)  # a fenced attempt's end is silent
    assert rec.should_stop(1) == "shutdown"


# -- the end of an attempt ----------------------------------------------------------------------------------------
def completed(settings: Settings, owned: Claim, step: int = 6) -> RunResult:
    adapter = adapter_dir(settings.runs_root / owned.job_id / "attempt-1" / "adapter")
    return RunResult(status="completed", stopped=None, step=step, total_steps=step, adapter_dir=adapter,
                     merged_dir=None, ranks=RANKS, growth_events=[], stats=stats(step))


def adapters(factory: sessionmaker[Session], job_id: str) -> list[Artifact]:
    with factory() as s:
        return list(s.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "adapter")))


def test_publish_records_the_adapter_and_success_together(factory: sessionmaker[Session], owned: Claim,
                                                          settings: Settings) -> None:
    result = completed(settings, owned)
    assert publish(factory, owned, heartbeat(factory, owned), result, settings) == JobStatus.succeeded
    job = row_values(factory, owned.job_id)
    assert (job["status"], job["step"], job["worker_id"]) == (JobStatus.succeeded, 6, None)
    assert job["fine_tuned_model"] == f"ft:m:{owned.job_id}" and job["finished_at"] is not None
    [artifact] = adapters(factory, owned.job_id)
    zipped = settings.artifact_root / artifact.path
    assert artifact.path == f"{owned.job_id}/attempt-1/adapter.zip" and artifact.sha256 == sha256_of(zipped)
    assert not (settings.runs_root / owned.job_id).exists()  # the run's scratch space is gone
    assert messages(factory, owned.job_id)[-1] == f"Job succeeded after 6 steps; adapter sha256 {artifact.sha256}"


def test_a_cancel_asked_during_the_last_step_wins_over_publishing(factory: sessionmaker[Session], owned: Claim,
                                                                  settings: Settings) -> None:
    with transaction(factory) as s:
        s.get_one(Job, owned.job_id).requested_action = RequestedAction.cancel
    result = completed(settings, owned)
    assert publish(factory, owned, heartbeat(factory, owned), result, settings) == JobStatus.cancelled
    assert row_values(factory, owned.job_id)["status"] == JobStatus.cancelled
    assert adapters(factory, owned.job_id) == []


def test_a_stale_attempt_publishes_nothing(factory: sessionmaker[Session], owned: Claim, settings: Settings) -> None:
    with transaction(factory) as s:
        s.get_one(Job, owned.job_id).attempt = 2
    before = row_values(factory, owned.job_id)
    with pytest.raises(Fenced):
        publish(factory, owned, heartbeat(factory, owned), completed(settings, owned), settings)
    assert adapters(factory, owned.job_id) == [] and row_values(factory, owned.job_id) == before


@pytest.mark.parametrize(("requested", "status", "keeps_checkpoints"), [
    (None, JobStatus.queued, True),  # a shutdown: the next attempt continues from the checkpoint
    (RequestedAction.pause, JobStatus.paused, True),
    (RequestedAction.cancel, JobStatus.cancelled, False),  # a cancelled job never resumes
])
def test_release_lets_the_pending_request_decide(factory: sessionmaker[Session], owned: Claim, settings: Settings,
                                                 requested: RequestedAction | None, status: JobStatus,
                                                 keeps_checkpoints: bool) -> None:
    with transaction(factory) as s:
        s.get_one(Job, owned.job_id).requested_action = requested
    checkpoint = settings.runs_root / owned.job_id / "attempt-1" / "checkpoint-000002"
    checkpoint.mkdir(parents=True)
    assert release(factory, owned, heartbeat(factory, owned), 2, settings.runs_root) == status
    job = row_values(factory, owned.job_id)
    assert (job["status"], job["requested_action"], job["lease_expires_at"]) == (status, None, None)
    assert checkpoint.exists() == keeps_checkpoints


def test_record_failure_fails_the_job_once_and_only_for_its_owner(factory: sessionmaker[Session], owned: Claim,
                                                                  ) -> None:
    beat = heartbeat(factory, owned)
    assert record_failure(factory, owned, beat, "invalid_input", "file gone") == JobStatus.failed
    job = row_values(factory, owned.job_id)
    assert job["status"] == JobStatus.failed
    assert job["error"] == {"code": "invalid_input", "message": "file gone", "param": None}
    assert record_failure(factory, owned, beat, "training_error", "late") == "fenced"  # no longer running
    assert row_values(factory, owned.job_id)["error"]["code"] == "invalid_input"


# -- what OpenAI's users expect of a finished job (issue 10) ----------------------------------------------------
def checkpoints(factory: sessionmaker[Session], job_id: str) -> list[tuple[int, str | None]]:
    """(step, the zip its adapter downloads from) of each checkpoint."""
    with factory() as s:
        rows = s.execute(select(Checkpoint.step, Artifact.path).join(Artifact, Artifact.checkpoint_id == Checkpoint.id,
                                                                     isouter=True)
                         .where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
    return [(step, path) for step, path in rows]


def test_a_job_shorter_than_checkpoint_every_lists_its_final_step(factory: sessionmaker[Session], owned: Claim,
                                                                  settings: Settings) -> None:
    rec = recorder(factory, owned, settings)
    rec.on_start(total_steps=6, ranks=RANKS, start_step=0)
    rec.on_step(metrics(6, total=6))
    assert publish(factory, owned, heartbeat(factory, owned), completed(settings, owned), settings) == "succeeded"
    [adapter] = adapters(factory, owned.job_id)
    assert checkpoints(factory, owned.job_id) == [(6, adapter.path)]  # the final adapter is its download
    with factory() as s:
        ckpt = s.scalars(select(Checkpoint).where(Checkpoint.job_id == owned.job_id)).one()
    assert ckpt.metrics == {"step": 6, "train_loss": pytest.approx(2.0 / 6), "valid_loss": None}


def test_the_final_checkpoint_is_not_recorded_twice(factory: sessionmaker[Session], owned: Claim,
                                                    settings: Settings) -> None:
    rec = recorder(factory, owned, settings)
    rec.on_start(total_steps=6, ranks=RANKS, start_step=0)
    path = settings.runs_root / owned.job_id / "attempt-1" / "checkpoint-000006"
    adapter_dir(path / CHECKPOINT_ADAPTER)
    rec.on_checkpoint(6, path)
    saved = checkpoints(factory, owned.job_id)
    publish(factory, owned, heartbeat(factory, owned), completed(settings, owned), settings)
    assert checkpoints(factory, owned.job_id) == saved


def test_publish_lists_the_metric_series_as_a_result_file(factory: sessionmaker[Session], owned: Claim,
                                                          settings: Settings) -> None:
    rec = recorder(factory, owned, settings)
    rec.on_start(total_steps=3, ranks=RANKS, start_step=0)
    rec.on_step(metrics(1, total=3))
    rec.on_growth([GrowthEvent(step=2, layer=0, expert=1, old_rank=2, new_rank=6, saliency=0.9, frequency=0.5,
                               importance=0.5)], stats(2, [[2, 6], [2, 2]]))
    rec.on_step(metrics(2, total=3))
    rec.on_step(metrics(3, total=3))
    rec.on_eval(3, valid_loss=0.25)
    publish(factory, owned, heartbeat(factory, owned), completed(settings, owned, step=3), settings)
    [file_id] = row_values(factory, owned.job_id)["result_files"]
    with factory() as s:
        row = s.get_one(File, file_id)
    assert (row.purpose, row.format, row.lines) == ("fine-tune-results", "csv", 3)
    assert row.tenant_id == row_values(factory, owned.job_id)["tenant_id"]
    stored = settings.files_root / row.path
    assert sha256_of(stored) == row.sha256
    lines = stored.read_text().splitlines()
    assert lines[0] == ("step,train_loss,valid_loss,learning_rate,tokens_per_second,grad_norm,"
                        "mean_rank_layer_0,mean_rank_layer_1")
    assert lines[1] == "1,2.0,,0.001,100.0,1.0,2.0,2.0"  # ranks as they started
    assert lines[2].endswith(",4.0,2.0") and lines[3] == "3,0.6666666666666666,0.25,0.001,100.0,1.0,4.0,2.0"


def test_a_job_that_does_not_succeed_keeps_no_result_file(factory: sessionmaker[Session], owned: Claim,
                                                          settings: Settings) -> None:
    with transaction(factory) as s:
        s.get_one(Job, owned.job_id).requested_action = RequestedAction.cancel
    publish(factory, owned, heartbeat(factory, owned), completed(settings, owned), settings)
    assert row_values(factory, owned.job_id)["result_files"] is None
    assert not settings.files_root.exists() or not any(p.is_file() for p in settings.files_root.rglob("*"))
