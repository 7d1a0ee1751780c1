"""One delivery of `drlora.generate(generation_id)`: claim the row, complete its prompts with the job's adapter,
write the completions or the error.

The adapter is the zip the generation resolved when it was asked for (the final adapter or a checkpoint's), checked
against its recorded sha256 and extracted to a temporary folder; the base is the job's registered model. The claim
is one conditional UPDATE (queued -> running), so a duplicate or late delivery does nothing.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from drlora_core.adapter_files import AdapterFilesError
from drlora_core.decode import Sampling
from drlora_core.generate import generate
from service import generations
from service.db import transaction
from service.settings import Settings
from service.statuses import JobStatus
from service.storage import StorageError, verified_path
from service.tables import Artifact, Generation, Job, RegisteredModel
from worker.job import JobInputError, worker_id

log = logging.getLogger("drlora.worker")


def run_generation(generation_id: str, factory: sessionmaker[Session], settings: Settings) -> str:
    """Returns what happened: succeeded | failed | skipped (not queued) | lost (no longer held when it ended)."""
    me = worker_id()
    with transaction(factory) as session:
        if not generations.claim(session, generation_id, me):
            log.info("generation %s is not queued (a duplicate or late delivery); nothing to do", generation_id)
            return "skipped"
    try:
        with factory() as session:
            row = session.get_one(Generation, generation_id)
            model_dir, zip_path = _inputs(session, row, settings)
            prompts, chat = list(row.prompts), row.chat
            sampling = Sampling(max_new_tokens=row.max_new_tokens, temperature=row.temperature, top_p=row.top_p,
                                seed=row.seed)
        with tempfile.TemporaryDirectory(prefix="drlora-gen-") as tmp:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
            result = generate(Path(tmp), prompts, sampling, model=str(model_dir), chat=chat, device=settings.device)
    except (AdapterFilesError, JobInputError, ValueError) as e:
        return _fail(factory, generation_id, me, "invalid_input", str(e))
    except Exception as e:
        log.exception("generation %s failed", generation_id)
        return _fail(factory, generation_id, me, "generation_error", f"{type(e).__name__}: {e}")
    with transaction(factory) as session:
        done = generations.finish(session, generation_id, me, result.completions)
    return JobStatus.succeeded if done else "lost"


def _inputs(session: Session, row: Generation, settings: Settings) -> tuple[Path, Path]:
    job = session.get_one(Job, row.job_id)
    model = session.get(RegisteredModel, job.model)
    if model is None:
        raise JobInputError(f"base model {job.model!r} is no longer registered")
    artifact = session.get(Artifact, row.artifact_id)
    if artifact is None:
        raise JobInputError(f"the adapter of job {row.job_id} at step {row.step} is no longer stored")
    try:
        return Path(model.path), verified_path(settings.artifact_root, artifact.path, artifact.sha256)
    except StorageError as e:
        raise JobInputError(f"the stored adapter of job {row.job_id} is unusable: {e}") from None


def _fail(factory: sessionmaker[Session], generation_id: str, me: str, code: str, message: str) -> str:
    with transaction(factory) as session:
        done = generations.fail(session, generation_id, me, code, message)
    return JobStatus.failed if done else "lost"
