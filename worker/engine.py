"""The one place the worker calls the engine: the job row's hyperparameters become a `RunConfig`, and each attempt
trains in its own folder, seeded with the last checkpoint the database recorded.

Each attempt writes only under `runs/<job>/attempt-<n>/`, so a stale attempt that wakes up (SIGSTOP, a network
partition) cannot overwrite the files of the attempt that replaced it. The checkpoint to resume from is the newest
one recorded by a fenced write, not whatever lies on disk: a checkpoint a stale attempt wrote after losing the job
was never recorded and is never used. Its files are hard links (copies across devices) of the earlier attempt's.
What a killed writer left half written in an earlier attempt's folder is removed when the next attempt starts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from drlora_core.callbacks import TrainingCallback
from drlora_core.checkpoint import remove_partial_checkpoints
from drlora_core.config import RANK_MULTIPLE, LoraConfig, RunConfig, TrainConfig
from drlora_core.run import RunResult, train_run

log = logging.getLogger("drlora.worker")


def run_config(method: str, hp: dict[str, Any], seed: int, device: str) -> RunConfig:
    r_target = int(hp["r_target"])
    # `lora` has one rank; the kernels still need the reserved rank aligned, so reserve the next multiple.
    aligned = -(-r_target // RANK_MULTIPLE) * RANK_MULTIPLE
    lora = LoraConfig(
        method=method,  # type: ignore[arg-type]
        r_init=int(hp.get("r_init", r_target)), r_target=r_target, r_max=int(hp.get("r_max", aligned)),
        growth_interval=int(hp.get("growth_interval", 200)), grow_frac=float(hp.get("grow_frac", 0.1)),
        beta_f=float(hp.get("beta_f", 0.9)), beta_g=float(hp.get("beta_g", 0.9)), gamma=float(hp.get("gamma", 1.2)),
        alpha=hp.get("alpha"), dropout=float(hp["dropout"]),
    )
    train = TrainConfig(
        max_steps=hp.get("max_steps"), epochs=int(hp["n_epochs"]), batch_size=int(hp["batch_size"]),
        grad_accum=int(hp["grad_accum"]), lr=float(hp["learning_rate"]), weight_decay=float(hp["weight_decay"]),
        warmup_ratio=float(hp["warmup_ratio"]), max_seq_len=int(hp["max_seq_len"]), seed=seed, device=device,
        train_router=bool(hp["train_router"]), checkpoint_every=int(hp["checkpoint_every"] or 0),
        eval_every=int(hp["eval_every"]),
    )
    return RunConfig(lora=lora, train=train)


def attempt_dir(runs_root: Path, job_id: str, attempt: int, resume_from: Path | None) -> Path:
    """A fresh folder for this attempt, holding a link of `resume_from` (a recorded checkpoint) if any."""
    out = runs_root / job_id / f"attempt-{attempt}"
    for earlier in sorted((runs_root / job_id).glob("attempt-*")):
        for partial in remove_partial_checkpoints(earlier):
            log.warning("removed the partial checkpoint %s left by a killed writer", partial)
    if out.exists():
        shutil.rmtree(out)
    if resume_from is not None and resume_from.is_dir():
        _link_tree(resume_from, out / "checkpoints" / resume_from.name)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _link_tree(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_symlink():
            continue
        if item.is_dir():
            _link_tree(item, dest / item.name)
        else:
            try:
                (dest / item.name).hardlink_to(item)
            except OSError:
                shutil.copy2(item, dest / item.name)


def train(model_dir: Path, train_file: Path, out_dir: Path, config: RunConfig, val_file: Path | None,
          callbacks: list[TrainingCallback]) -> RunResult:
    return train_run(str(model_dir), train_file, out_dir, config, val_file=val_file, callbacks=callbacks,
                     resume=True)
