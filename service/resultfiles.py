"""A finished job's result file, as OpenAI's `result_files`: the metric series as CSV, stored as a file of purpose
`fine-tune-results` that the tenant lists and downloads through `/v1/files` like an upload (and may delete).

The worker builds it when it publishes the adapter: `build` reads the series and writes the bytes atomically under
the files root before the publishing transaction, `record` adds the file row and lists it on the job inside that
transaction, so a job is `succeeded` with its result file or not at all. Columns: `step`, `train_loss`,
`valid_loss`, `learning_rate`, `tokens_per_second`, `grad_norm`, then `mean_rank_layer_<i>` for every adapted layer
(the mean active rank of its experts after that step); an empty cell is a value not measured at that step.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from drlora_core.atomic import write_atomic
from service.ids import new_id, now
from service.tables import File, Job, Metric, RankSnapshot

PURPOSE = "fine-tune-results"
FORMAT = "csv"
SERIES = ("step", "train_loss", "valid_loss", "learning_rate", "tokens_per_second", "grad_norm")


@dataclass(frozen=True)
class ResultFile:
    """Bytes written under the files root, not yet recorded."""

    id: str
    tenant_id: str
    filename: str
    path: str  # relative to the files root
    sha256: str
    bytes: int
    rows: int


def metrics_csv(session: Session, job_id: str) -> tuple[bytes, int]:
    """The job's metric series as CSV, one row per recorded step; returns (bytes, rows)."""
    metrics = session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step)).all()
    snapshots = session.scalars(
        select(RankSnapshot).where(RankSnapshot.job_id == job_id).order_by(RankSnapshot.step)).all()
    layers = max((len(s.ranks) for s in snapshots), default=0)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*SERIES, *(f"mean_rank_layer_{i}" for i in range(layers))])
    current, following = [], iter(snapshots)
    upcoming = next(following, None)
    for m in metrics:
        while upcoming is not None and upcoming.step <= m.step:  # the rank map in force after step m.step
            current, upcoming = upcoming.ranks, next(following, None)
        means = [sum(row) / len(row) if row else "" for row in current]
        values = (m.step, m.train_loss, m.valid_loss, m.learning_rate, m.tokens_per_second, m.grad_norm)
        writer.writerow([_cell(v) for v in values] + means + [""] * (layers - len(means)))
    return out.getvalue().encode(), len(metrics)


def build(session: Session, files_root: Path, job: Job) -> ResultFile:
    """Write the job's result file under the files root (not yet recorded: see `record`)."""
    data, rows = metrics_csv(session, job.id)
    file_id = new_id("file")
    relative = f"{job.tenant_id}/{file_id}.{FORMAT}"
    sha256, size = write_atomic(files_root / relative, [data])
    return ResultFile(file_id, job.tenant_id, f"{job.id}-metrics.csv", relative, sha256, size, rows)


def record(session: Session, job_id: str, result: ResultFile) -> None:
    """The file's row, listed as the job's result file; in the transaction that publishes the job."""
    session.add(File(id=result.id, tenant_id=result.tenant_id, filename=result.filename, purpose=PURPOSE,
                     bytes=result.bytes, format=FORMAT, lines=result.rows, sha256=result.sha256, path=result.path,
                     created_at=now()))
    session.execute(update(Job).where(Job.id == job_id).values(result_files=[result.id])
                    .execution_options(synchronize_session=False))


def discard(files_root: Path, result: ResultFile) -> None:
    """The bytes of a result file that was not recorded (the job did not succeed after all)."""
    (files_root / result.path).unlink(missing_ok=True)


def _cell(value: float | int | None) -> str | float | int:
    return "" if value is None else value
