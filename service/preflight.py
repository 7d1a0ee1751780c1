"""The pre-flight check at create: the job's memory estimate against the workers seen recently.

Rules (docs/service.md, "Pre-flight"):
- The estimate is `drlora_core.estimate` for the resolved RunConfig (`run_shape`) on the device kind of the largest
  worker seen within `worker_seen_within_s` (with none seen, the kind `DRLORA_DEVICE` names); it is stored on the job.
- A worker can hold a job when the estimate for its device kind is at most HEADROOM of its total memory. Free memory
  is reported and shown but not used: it drops while the worker trains another job.
- `gradient_checkpointing: "auto"` turns on only when no seen worker holds the job without it and one holds it with.
- No seen worker holds the job: `create` answers 400 `insufficient_memory` (param `hyperparameters`), naming the
  single changes that would fit (checkpointing, a smaller batch_size, max_seq_len or r_max). No worker seen at all
  (an embedded `drlora serve` starts its worker with the API): accepted, and a job event says the check was skipped.
- A model whose config.json `model_facts` cannot read has no estimate and is not checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from drlora_core.autoconfig import known_model_facts
from drlora_core.config import AUTO, RANK_MULTIPLE, RunConfig
from drlora_core.estimate import GIB, device_kind, estimate, report, run_shape
from drlora_core.model_facts import ModelFacts
from service.errors import InvalidRequest
from service.ids import now
from service.settings import Settings
from service.tables import Worker

HEADROOM = 0.95  # the share of a device's memory a job may plan to use (allocator fragmentation, other tenants)


@dataclass(frozen=True)
class Preflight:
    config: RunConfig  # `gradient_checkpointing` decided
    estimate: dict[str, Any] | None  # `report()` on the chosen device kind; None: the model is not one we know
    workers: list[dict[str, Any]]  # the workers seen, each with whether it holds the job
    advice: list[str]  # the single changes that would make the job fit (when it does not)
    seen_within_s: float

    @property
    def fits(self) -> bool | None:
        """Whether a seen worker holds the job; None when there is nothing to decide on (no estimate or no worker)."""
        if self.estimate is None or not self.workers:
            return None
        return any(w["fits"] for w in self.workers)

    @property
    def note(self) -> str | None:
        """What the job's events should say about the check when it was skipped."""
        if self.estimate is None:
            return "No memory estimate: the base model's config.json is not a family drlora_core.model_facts knows"
        if not self.workers:
            return (f"No worker has reported in the last {_age(self.seen_within_s)}: the memory "
                    f"check was skipped (estimated peak {_gib(self.estimate['peak_bytes'])} on "
                    f"{self.estimate['device']})")
        return None

    def dry_run(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        return {"object": "fine_tuning.job.estimate", **(self.estimate or {}), "hyperparameters": hyperparameters,
                "workers": self.workers, "fits": self.fits, "advice": self.advice}

    def require_fit(self) -> None:
        if self.fits is False:
            assert self.estimate is not None
            largest = max(self.workers, key=lambda w: w["total_bytes"])
            ways = ("; would fit: " + ", ".join(self.advice)) if self.advice else (
                "; no single change of gradient_checkpointing, batch_size, max_seq_len or r_max fits: it needs a "
                "worker with more memory")
            raise InvalidRequest(
                f"the job's estimated peak memory ({_gib(self.estimate['peak_bytes'])} on {self.estimate['device']}) "
                f"exceeds every worker seen in the last {_age(self.seen_within_s)} (largest: "
                f"{largest['device']}, {_gib(largest['total_bytes'])}){ways}",
                param="hyperparameters", code="insufficient_memory")


def live_workers(session: Session, within_s: float) -> list[Worker]:
    return list(session.scalars(select(Worker).where(Worker.last_seen_at >= now() - within_s)
                                .order_by(Worker.total_bytes.desc(), Worker.id)))


def check(session: Session, settings: Settings, model_dir: Path, config: RunConfig,
          checkpointing_requested: object) -> Preflight:
    """The pre-flight of a resolved `config`; `checkpointing_requested` is the request's value (true, false, auto)."""
    facts = known_model_facts(model_dir)
    workers = live_workers(session, settings.worker_seen_within_s)
    if facts is None:
        return Preflight(config, None, [], [], settings.worker_seen_within_s)
    if checkpointing_requested == AUTO:
        config = _with_checkpointing(config, _auto_checkpointing(facts, config, workers))
    kind = workers[0].kind if workers else device_kind(settings.device)
    shape = run_shape(config, kind)
    body = report(facts, shape, estimate(facts, shape))
    seen = [_worker_view(w, estimate(facts, run_shape(config, w.kind)).peak_bytes) for w in workers]
    fits = any(w["fits"] for w in seen)
    advice = [] if fits or not workers else _advice(facts, config, workers)
    return Preflight(config, body, seen, advice, settings.worker_seen_within_s)


def _holds(worker: Worker, peak_bytes: int) -> bool:
    return peak_bytes <= HEADROOM * worker.total_bytes


def _auto_checkpointing(facts: ModelFacts, config: RunConfig, workers: list[Worker]) -> bool:
    def held(on: bool) -> bool:
        shaped = _with_checkpointing(config, on)
        return any(_holds(w, estimate(facts, run_shape(shaped, w.kind)).peak_bytes) for w in workers)

    return bool(workers) and not held(False) and held(True)


def _with_checkpointing(config: RunConfig, on: bool) -> RunConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, gradient_checkpointing=on))


def _worker_view(worker: Worker, peak_bytes: int) -> dict[str, Any]:
    return {"id": worker.id, "device": worker.device, "kind": worker.kind, "total_bytes": worker.total_bytes,
            "free_bytes": worker.free_bytes, "last_seen_at": int(worker.last_seen_at), "peak_bytes": peak_bytes,
            "fits": _holds(worker, peak_bytes)}


def _advice(facts: ModelFacts, config: RunConfig, workers: list[Worker]) -> list[str]:
    """Each single change that makes some seen worker hold the job, with its estimate: the largest value that fits."""

    def fitting(**change: Any) -> int | None:
        held = [peak for w in workers
                if _holds(w, peak := estimate(facts, dataclasses.replace(run_shape(config, w.kind), **change)).peak_bytes)]
        return min(held) if held else None

    shape = run_shape(config, workers[0].kind)
    advice = []
    if not shape.gradient_checkpointing and (peak := fitting(gradient_checkpointing=True)):
        advice.append(f"gradient_checkpointing true ({_gib(peak)})")
    for name, field, values in (
        ("batch_size", "batch_size", _halvings(shape.batch_size, 1)),
        ("max_seq_len", "seq_len", _halvings(shape.seq_len, 8)),
        ("r_max", "r_max", range(shape.r_max - RANK_MULTIPLE, 0, -RANK_MULTIPLE)),
    ):
        for value in values:
            if peak := fitting(**{field: value}):
                limit = f", with r_target <= {value}" if name == "r_max" else ""
                advice.append(f"{name} {value} ({_gib(peak)}{limit})")
                break
    return advice


def _halvings(value: int, floor: int) -> list[int]:
    out = []
    while value // 2 >= floor:
        value //= 2
        out.append(value)
    return out


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _age(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"
