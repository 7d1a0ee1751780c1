"""Where each attempt of a job trains: its own folder, seeded with the last checkpoint the database recorded.

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

from drlora_core.checkpoint import remove_partial_checkpoints

log = logging.getLogger("drlora.worker")


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

