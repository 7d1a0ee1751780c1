"""The engine callback that records a run in the database, every write fenced by the attempt and retried across a
short database outage (worker/retry.py): training waits for the database rather than failing on a restart.

It also answers the engine's `should_stop` from what the heartbeat saw (cancel, pause, lost ownership), from a
SIGTERM (`shutdown`: the engine checkpoints and the job goes back to the queue) and from the job's time limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from drlora_core.atomic import zip_dir_atomic
from drlora_core.callbacks import ExpertStats, StepMetrics, StopReason
from drlora_core.callbacks import GrowthEvent as EngineGrowthEvent
from drlora_core.checkpoint import ADAPTER_DIR
from service.events import add_event
from service.ids import new_id, now
from service.jobstate import Fenced
from service.statuses import RequestedAction
from service.tables import Artifact, Checkpoint, ExpertStat, GrowthEvent, Job, Metric, RankSnapshot
from service.webhooks import GROWTH, enqueue_job_event
from worker.lease import Claim, Heartbeat
from worker.retry import write_fenced

log = logging.getLogger("drlora.worker")


# Set by the worker's SIGTERM handling; every running recorder then answers `shutdown`.
shutdown_requested = threading.Event()


def add_checkpoint(s: Session, claim: Claim, step: int, path: str, artifact_path: str, sha256: str,
                   size: int) -> None:
    """The rows of a checkpoint at `step`: `path` (relative to the runs root) resumes it, the zip at `artifact_path`
    (relative to the artifact root) is its adapter for `?checkpoint=`. Also used for the final step at publish."""
    metric = s.get(Metric, (claim.job_id, step))
    ckpt = Checkpoint(id=new_id("ftckpt"), job_id=claim.job_id, step=step, attempt=claim.attempt, path=path,
                      created_at=now(), metrics={"step": step, "train_loss": metric.train_loss if metric else None,
                                                 "valid_loss": metric.valid_loss if metric else None})
    s.add(ckpt)
    s.add(Artifact(id=new_id("artifact"), job_id=claim.job_id, kind="checkpoint", step=step, checkpoint_id=ckpt.id,
                   path=artifact_path, sha256=sha256, bytes=size, created_at=now()))
    add_event(s, claim.job_id, claim.attempt, f"Checkpoint saved at step {step}",
              data={"step": step, "checkpoint": ckpt.id})


class Recorder:
    def __init__(self, factory: sessionmaker[Session], claim: Claim, heartbeat: Heartbeat, *, runs_root: Path,
                 artifact_root: Path, time_limit_s: float) -> None:
        self.factory, self.claim, self.heartbeat = factory, claim, heartbeat
        self.runs_root, self.artifact_root = runs_root, artifact_root
        self.deadline = time.monotonic() + time_limit_s
        self.timed_out = False
        self.total_steps = 0
        self._started = time.monotonic()
        self._start_step = 0

    # -- engine callbacks -------------------------------------------------------------------------------------
    def on_start(self, total_steps: int, ranks: list[list[int]], start_step: int) -> None:
        self.total_steps, self._start_step, self._started = total_steps, start_step, time.monotonic()
        job_id = self.claim.job_id

        def write(s: Session) -> None:
            # A resumed attempt replays the steps after its checkpoint: forget what the lost attempt recorded there.
            for table in (Metric, GrowthEvent, RankSnapshot, ExpertStat, Checkpoint):
                s.execute(delete(table).where(table.job_id == job_id, table.step > start_step))
            s.merge(RankSnapshot(job_id=job_id, step=start_step, ranks=ranks))
            s.execute(update(Job).where(Job.id == job_id).values(total_steps=total_steps, step=start_step))
            where = "from the start" if start_step == 0 else f"from the checkpoint at step {start_step}"
            add_event(s, job_id, self.claim.attempt, f"Training {total_steps} steps {where}",
                      data={"total_steps": total_steps, "start_step": start_step})

        self._write(write)

    def on_step(self, m: StepMetrics) -> None:
        done = m.step - self._start_step
        rate = (time.monotonic() - self._started) / done if done > 0 else None
        eta = now() + rate * (m.total_steps - m.step) if rate is not None else None

        def write(s: Session) -> None:
            s.merge(Metric(job_id=self.claim.job_id, step=m.step, train_loss=m.train_loss, learning_rate=m.learning_rate,
                           tokens_per_second=m.tokens_per_second, grad_norm=m.grad_norm,
                           trained_tokens=m.trained_tokens, created_at=now()))
            s.execute(update(Job).where(Job.id == self.claim.job_id).values(
                step=m.step, total_steps=m.total_steps, trained_tokens=m.trained_tokens, estimated_finish=eta))
            add_event(s, self.claim.job_id, self.claim.attempt, f"Step {m.step}/{m.total_steps}: training loss="
                      f"{m.train_loss:.4f}", type="metrics",
                      data={"step": m.step, "total_steps": m.total_steps, "train_loss": m.train_loss,
                            "learning_rate": m.learning_rate, "tokens_per_second": m.tokens_per_second})

        self._write(write)

    def on_growth(self, events: list[EngineGrowthEvent], stats: ExpertStats) -> None:
        def write(s: Session) -> None:
            for e in events:
                s.add(GrowthEvent(job_id=self.claim.job_id, step=e.step, layer=e.layer, expert=e.expert,
                                  old_rank=e.old_rank, new_rank=e.new_rank, saliency=e.saliency,
                                  frequency=e.frequency, importance=e.importance))
            self._record_stats(s, stats)
            added = sum(e.new_rank - e.old_rank for e in events)
            growth = {"step": stats.step, "grown_experts": len(events), "added_rank": added}
            add_event(s, self.claim.job_id, self.claim.attempt,
                      f"Step {stats.step}: grew {len(events)} experts by {added} rank slices in total", data=growth)
            enqueue_job_event(s, self.claim.job_id, GROWTH, growth)

        self._write(write)

    def on_eval(self, step: int, valid_loss: float) -> None:
        def write(s: Session) -> None:
            row = s.get(Metric, (self.claim.job_id, step))
            if row is None:
                s.add(Metric(job_id=self.claim.job_id, step=step, valid_loss=valid_loss, created_at=now()))
            else:
                row.valid_loss = valid_loss
            add_event(s, self.claim.job_id, self.claim.attempt, f"Step {step}: validation loss={valid_loss:.4f}",
                      type="metrics", data={"step": step, "valid_loss": valid_loss})

        self._write(write)

    def on_checkpoint(self, step: int, path: Path) -> None:
        if self.heartbeat.fenced or self.heartbeat.out_of_lease():  # no download nobody will ever record
            raise Fenced(f"attempt {self.claim.attempt} of job {self.claim.job_id} no longer owns it; its checkpoint "
                         f"at step {step} is not published")
        artifact_rel = f"{self.claim.job_id}/attempt-{self.claim.attempt}/checkpoint-step-{step:06d}.zip"
        # the checkpoint's PEFT adapter (the engine writes it into every checkpoint): what `?checkpoint=` serves
        sha256, size = zip_dir_atomic(path / ADAPTER_DIR, self.artifact_root / artifact_rel)

        def write(s: Session) -> None:
            s.execute(delete(Checkpoint).where(Checkpoint.job_id == self.claim.job_id, Checkpoint.step == step))
            s.execute(delete(Artifact).where(Artifact.job_id == self.claim.job_id, Artifact.kind == "checkpoint",
                                             Artifact.step == step))
            add_checkpoint(s, self.claim, step, str(path.resolve().relative_to(self.runs_root.resolve())),
                           artifact_rel, sha256, size)

        self._write(write)

    def should_stop(self, step: int) -> StopReason | None:
        if self.heartbeat.fenced or self.heartbeat.out_of_lease() or shutdown_requested.is_set():
            return "shutdown"
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return "shutdown"
        if self.heartbeat.requested == RequestedAction.cancel:
            return "cancel"
        if self.heartbeat.requested == RequestedAction.pause:
            return "pause"
        return None

    def on_end(self, step: int, stats: ExpertStats, stopped: StopReason | None) -> None:
        if self.heartbeat.fenced or self.heartbeat.out_of_lease():
            return
        self._write(lambda s: self._record_stats(s, stats))

    # -- helpers ------------------------------------------------------------------------------------------------
    def _write(self, write: Callable[[Session], None]) -> None:
        write_fenced(self.factory, self.claim, self.heartbeat, write)

    def _record_stats(self, s: Session, stats: ExpertStats) -> None:
        s.merge(ExpertStat(job_id=self.claim.job_id, step=stats.step, frequency=stats.frequency,
                           importance=stats.importance, saliency=stats.saliency, ranks=stats.ranks))
        s.merge(RankSnapshot(job_id=self.claim.job_id, step=stats.step, ranks=stats.ranks))

