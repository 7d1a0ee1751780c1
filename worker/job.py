"""One delivery of `drlora.train_job(job_id)`: claim, heartbeat, train, publish, set the final status.

Every outcome is written in one fenced transaction (retried across a short database outage, worker/retry.py), so it
happens exactly once and only for the attempt that owns the job: success publishes the adapter zip (written
atomically under `artifacts/<job>/attempt-<n>/` first, then its row with sha256 and the status together); a run
stopped by cancel, pause or a SIGTERM shutdown releases the job (after the engine wrote a checkpoint), and the state
machine decides where it goes; an engine error fails the job. A duplicate delivery claims nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from drlora_core.atomic import zip_dir_atomic
from drlora_core.config import ConfigError, RunConfig
from drlora_core.formats import DatasetError
from drlora_core.run import RunResult, train_run
from service import jobstate, resultfiles
from service.ids import new_id, now
from service.jobstate import Fenced, fine_tuned_model_name
from service.settings import Settings
from service.statuses import JobStatus, RequestedAction
from service.storage import StorageError, verified_path
from service.tables import Artifact, Checkpoint, File, Job, RegisteredModel
from worker.capacity import estimate_here, probe
from worker.lease import Claim, Heartbeat, claim
from worker.recorder import Recorder, add_checkpoint
from worker.retry import write_fenced
from worker.training import attempt_dir

log = logging.getLogger("drlora.worker")


@dataclass(frozen=True)
class Inputs:
    model_dir: Path
    train_file: Path
    val_file: Path | None
    resume_from: Path | None


class JobInputError(Exception):
    """The job cannot start: its model or a file is gone."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(job_id: str, factory: sessionmaker[Session], settings: Settings) -> str:
    """Returns what happened: the status this attempt left the job in, or skipped | fenced | unrecorded."""
    owned = claim(factory, job_id, worker_id(), settings.lease_s)
    if owned is None:
        log.info("job %s is not queued (a duplicate or late delivery); nothing to do", job_id)
        return "skipped"
    heartbeat = Heartbeat(factory, owned, settings.heartbeat_interval_s, settings.lease_s)
    heartbeat.start()
    try:
        return _train_and_finish(owned, heartbeat, factory, settings)
    except Fenced as e:
        log.warning("%s; its results are discarded", e)
        return "fenced"
    except ConfigError as e:  # hyperparameters the engine found impossible for this model and dataset
        return record_failure(factory, owned, heartbeat, "invalid_hyperparameters", str(e), param=e.param)
    except JobInputError as e:
        return record_failure(factory, owned, heartbeat, "invalid_input", str(e))
    except DatasetError as e:  # the tenant's own file, named by line: safe and useful to show
        return record_failure(factory, owned, heartbeat, "invalid_training_file", str(e))
    except Exception:
        # The exception can hold paths and internals: it goes to this log only, the tenant gets a code.
        log.exception("job %s attempt %s failed", job_id, owned.attempt)
        return record_failure(factory, owned, heartbeat, "training_error",
                              f"training stopped on an internal error; the operator's logs hold the details under "
                              f"job {job_id}, attempt {owned.attempt}")
    finally:
        heartbeat.stop()


def _train_and_finish(owned: Claim, heartbeat: Heartbeat, factory: sessionmaker[Session], settings: Settings) -> str:
    with factory() as session:
        job = session.get_one(Job, owned.job_id)
        inputs = _inputs(session, job, settings)
        config = RunConfig.from_dict(job.run_config or {}).on_device(settings.device)
    if line := estimate_here(inputs.model_dir, config, probe(settings.device)):
        log.info("job %s attempt %s: %s", owned.job_id, owned.attempt, line)
    out_dir = attempt_dir(settings.runs_root, owned.job_id, owned.attempt, inputs.resume_from)
    recorder = Recorder(factory, owned, heartbeat, runs_root=settings.runs_root, artifact_root=settings.artifact_root,
                        time_limit_s=settings.job_time_limit_s)
    result = train_run(str(inputs.model_dir), inputs.train_file, out_dir, config, inputs.val_file, [recorder])
    if heartbeat.fenced or heartbeat.out_of_lease():
        raise Fenced(f"attempt {owned.attempt} of job {owned.job_id} lost its lease while training")
    if result.status == "completed":
        return publish(factory, owned, heartbeat, result, settings)
    if recorder.timed_out:
        return record_failure(factory, owned, heartbeat, "timeout",
                              f"the job ran past its time limit of {settings.job_time_limit_s:.0f} s")
    return release(factory, owned, heartbeat, result.step, settings.runs_root)


def _inputs(session: Session, job: Job, settings: Settings) -> Inputs:
    model = session.get(RegisteredModel, job.model)
    if model is None:
        raise JobInputError(f"base model {job.model!r} is no longer registered")
    files = []
    for file_id in (job.training_file, job.validation_file):
        row = session.get(File, file_id) if file_id else None
        if file_id and row is None:
            raise JobInputError(f"file {file_id!r} was deleted before the job ran")
        try:
            files.append(verified_path(settings.files_root, row.path, row.sha256) if row else None)
        except StorageError as e:
            raise JobInputError(f"the stored bytes of file {file_id!r} are unusable: {e}") from None
    latest = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step.desc()))
    resume_from = settings.runs_root / latest.path if latest else None
    assert files[0] is not None
    return Inputs(Path(model.path), files[0], files[1], resume_from)


def publish(factory: sessionmaker[Session], owned: Claim, heartbeat: Heartbeat, result: RunResult,
            settings: Settings) -> JobStatus:
    """Zip the adapter and write the result file, then record them, the final step as a checkpoint (unless the
    trainer saved one there) and the job's success in one fenced transaction; a cancel asked for during the last
    step wins, and nothing is published."""
    assert result.adapter_dir is not None
    relative = f"{owned.job_id}/attempt-{owned.attempt}/adapter.zip"
    sha256, size = zip_dir_atomic(result.adapter_dir, settings.artifact_root / relative)
    adapter_path = str(result.adapter_dir.resolve().relative_to(settings.runs_root.resolve()))
    with factory() as s:
        results = resultfiles.build(s, settings.files_root, s.get_one(Job, owned.job_id))

    def write(s: Session) -> JobStatus:
        job = s.get_one(Job, owned.job_id)
        if job.requested_action == RequestedAction.cancel:
            return jobstate.release(s, owned.job_id, owned.attempt, result.step)
        s.add(Artifact(id=new_id("artifact"), job_id=owned.job_id, kind="adapter", step=result.step,
                       checkpoint_id=None, path=relative, sha256=sha256, bytes=size, created_at=now()))
        if s.scalar(select(Checkpoint.id).where(Checkpoint.job_id == owned.job_id,
                                                Checkpoint.step == result.step)) is None:
            add_checkpoint(s, owned, result.step, adapter_path, relative, sha256, size)  # OpenAI lists the final one
        resultfiles.record(s, owned.job_id, results)
        jobstate.finish(s, owned.job_id, owned.attempt, step=result.step, fine_tuned_model=fine_tuned_model_name(job),
                        message=f"Job succeeded after {result.step} steps; adapter sha256 {sha256}")
        return JobStatus.succeeded

    try:
        outcome = write_fenced(factory, owned, heartbeat, write)
    except BaseException:
        resultfiles.discard(settings.files_root, results)
        raise
    if outcome != JobStatus.succeeded:
        resultfiles.discard(settings.files_root, results)
    shutil.rmtree(settings.runs_root / owned.job_id, ignore_errors=True)
    return outcome


def release(factory: sessionmaker[Session], owned: Claim, heartbeat: Heartbeat, step: int,
            runs_root: Path) -> JobStatus:
    """The run stopped at `step` without a result (cancel, pause, shutdown): let go of the job."""
    outcome = write_fenced(factory, owned, heartbeat, lambda s: jobstate.release(s, owned.job_id, owned.attempt, step))
    if outcome == JobStatus.cancelled:
        shutil.rmtree(runs_root / owned.job_id, ignore_errors=True)  # a cancelled job never resumes
    return outcome


def record_failure(factory: sessionmaker[Session], owned: Claim, heartbeat: Heartbeat, code: str, message: str,
                   param: str | None = None) -> str:
    def write(s: Session) -> None:
        jobstate.fail(s, owned.job_id, owned.attempt, code=code, message=message, param=param)

    try:
        write_fenced(factory, owned, heartbeat, write)
    except Fenced:
        return "fenced"
    except Exception:  # the database is away too: the lease runs out and the sweep decides
        log.exception("could not record the failure of job %s", owned.job_id)
        return "unrecorded"
    return JobStatus.failed
