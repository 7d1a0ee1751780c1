"""One delivery of `drlora.export_adapter(export_id)`: claim the row, build the export, publish it, record it.

The source adapter zip (the job's final one or a checkpoint's) is checked against its sha256 and unpacked into a
temporary folder; `drlora_core.exporting.export_stored` writes the export beside it (a merged model reads the
registered base model's local directory); the result is zipped straight to `exports/<export>/attempt-<n>.zip` under
the artifact root while its sha256 is computed (one write, no read back), and published atomically before the row
records it. A heartbeat thread renews the claim while the engine works, and every progress report renews it too, so
the sweep requeues only an export whose worker is gone. The row is written only while this attempt still holds it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from drlora_core.export_options import ExportOptions
from drlora_core.exporting import export_stored
from service import exports
from service.artifacts import artifact_of_source
from service.db import transaction
from service.periodic import Periodic
from service.settings import Settings
from service.statuses import JobStatus
from service.storage import StorageError, verified_path
from service.tables import Export, Job, RegisteredModel
from worker.job import JobInputError, worker_id
from worker.zipstream import unzip_flat, zip_dir_hashed

log = logging.getLogger("drlora.worker")

# The share of the progress bar each phase takes: unpacking the source, the engine's export, zipping the result.
UNPACKED, EXPORTED = 0.02, 0.85
REPORT_EVERY_S = 1.0


@dataclass(frozen=True)
class Held:
    export_id: str
    worker_id: str
    attempt: int


@dataclass(frozen=True)
class Source:
    zip_path: Path
    options: ExportOptions
    base_model_dir: Path | None
    relative_out: str  # where the zip is published, under the artifact root


class Reporter:
    """Writes progress to the row at most once a second (and always at a new stage)."""

    def __init__(self, factory: sessionmaker[Session], held: Held) -> None:
        self.factory, self.held = factory, held
        self.stage: str | None = None
        self.last = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        t = time.monotonic()
        if stage == self.stage and t - self.last < REPORT_EVERY_S:
            return
        self.stage, self.last = stage, t
        self.write(stage, fraction)

    def write(self, stage: str | None = None, fraction: float | None = None) -> None:
        try:
            with transaction(self.factory) as session:
                exports.report(session, self.held.export_id, self.held.worker_id, self.held.attempt, stage, fraction)
        except Exception as e:  # progress is best effort: the database may blink; the heartbeat tries again
            log.warning("could not record the progress of export %s: %s", self.held.export_id, e)


def run_export(export_id: str, factory: sessionmaker[Session], settings: Settings) -> str:
    """Returns what happened: succeeded | failed | skipped (not queued) | lost (no longer held when it ended)."""
    me = worker_id()
    with transaction(factory) as session:
        attempt = exports.claim(session, export_id, me)
    if attempt is None:
        log.info("export %s is not queued (a duplicate or late delivery); nothing to do", export_id)
        return "skipped"
    held = Held(export_id, me, attempt)
    reporter = Reporter(factory, held)
    heartbeat = Periodic(f"drlora-export-{export_id}", settings.heartbeat_interval_s, reporter.write, log=log)
    heartbeat.start()
    try:
        with factory() as session:
            source = _source(session, session.get_one(Export, export_id), settings)
        relative, sha256, size = _build(source, settings, reporter)
    except (JobInputError, ValueError) as e:
        return _fail(factory, held, "invalid_input", str(e))
    except Exception as e:
        log.exception("export %s attempt %s failed", export_id, attempt)
        return _fail(factory, held, "export_error", f"{type(e).__name__}: {e}")
    finally:
        heartbeat.stop()
    with transaction(factory) as session:
        done = exports.finish(session, export_id, me, attempt, relative, sha256, size)
    if not done:
        (settings.artifact_root / relative).unlink(missing_ok=True)  # the row moved on without this attempt
    return JobStatus.succeeded if done else "lost"


def _source(session: Session, row: Export, settings: Settings) -> Source:
    artifact = artifact_of_source(session, row.job_id, row.source)
    if artifact is None:
        raise JobInputError(f"the adapter this export is built from ({row.source} of job {row.job_id}) is gone")
    try:
        zip_path = verified_path(settings.artifact_root, artifact.path, artifact.sha256)
    except StorageError as e:
        raise JobInputError(f"the stored adapter of job {row.job_id} ({row.source}) is unusable: {e}") from None
    options = exports.options_of(row)
    base_model_dir = None
    if options.layout == "merged":
        model = session.get(RegisteredModel, session.get_one(Job, row.job_id).model)
        if model is None:
            raise JobInputError(f"the base model of job {row.job_id} is no longer registered")
        base_model_dir = Path(model.path)
    return Source(zip_path, options, base_model_dir, f"{row.job_id}/exports/{row.id}/attempt-{row.attempt}.zip")


def _build(source: Source, settings: Settings, reporter: Reporter) -> tuple[str, str, int]:
    """Unpack, export, zip to the artifact root; returns (relative path, sha256, size)."""
    settings.runs_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=settings.runs_root) as work:
        reporter("unpacking the adapter", 0.0)
        adapter_dir = unzip_flat(source.zip_path, Path(work) / "adapter")

        def engine_progress(stage: str, fraction: float) -> None:
            reporter(stage, UNPACKED + (EXPORTED - UNPACKED) * fraction)

        out = export_stored(adapter_dir, Path(work) / "export", source.options,
                            base_model_dir=source.base_model_dir, progress=engine_progress)
        sha256, size = zip_dir_hashed(out, settings.artifact_root / source.relative_out,
                                      lambda f: reporter("zipping", EXPORTED + (1 - EXPORTED) * f))
    return source.relative_out, sha256, size


def _fail(factory: sessionmaker[Session], held: Held, code: str, message: str) -> str:
    with transaction(factory) as session:
        done = exports.fail(session, held.export_id, held.worker_id, held.attempt, code, message)
    return JobStatus.failed if done else "lost"
