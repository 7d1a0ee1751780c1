"""One delivery of `drlora.profile_routing(profile_id)`: claim the row, profile, write the result or the error.

The claim is one conditional UPDATE (queued -> running), so a duplicate or late delivery does nothing; the result is
written only while this worker still holds the row (the sweep may have failed a profile that ran too long).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from drlora_core.config import ConfigError
from drlora_core.formats import DatasetError
from drlora_core.profile_run import profile_run
from service import profiles
from service.db import transaction
from service.settings import Settings
from service.statuses import JobStatus
from service.storage import StorageError, verified_path
from service.tables import File, Profile, RegisteredModel
from worker.job import JobInputError, worker_id

log = logging.getLogger("drlora.worker")


def run_profile(profile_id: str, factory: sessionmaker[Session], settings: Settings) -> str:
    """Returns what happened: succeeded | failed | skipped (not queued) | lost (no longer held when it ended)."""
    me = worker_id()
    with transaction(factory) as session:
        if not profiles.claim(session, profile_id, me):
            log.info("profile %s is not queued (a duplicate or late delivery); nothing to do", profile_id)
            return "skipped"
    try:
        with factory() as session:
            row = session.get_one(Profile, profile_id)
            model_dir, train_file = _inputs(session, row, settings)
            config = profiles.config_of(row).on_device(settings.device)
            max_examples = row.max_examples
        result = profile_run(str(model_dir), train_file, config, max_examples).to_dict()
    except (ConfigError, DatasetError, JobInputError, ValueError) as e:
        return _fail(factory, profile_id, me, "invalid_input", str(e), getattr(e, "param", None))
    except Exception as e:
        log.exception("profile %s failed", profile_id)
        return _fail(factory, profile_id, me, "profile_error", f"{type(e).__name__}: {e}")
    with transaction(factory) as session:
        done = profiles.finish(session, profile_id, me, result)
    return JobStatus.succeeded if done else "lost"


def _inputs(session: Session, row: Profile, settings: Settings) -> tuple[Path, Path]:
    model = session.get(RegisteredModel, row.model)
    if model is None:
        raise JobInputError(f"base model {row.model!r} is no longer registered")
    file = session.get(File, row.training_file)
    if file is None:
        raise JobInputError(f"file {row.training_file!r} was deleted before the profile ran")
    try:
        return Path(model.path), verified_path(settings.files_root, file.path, file.sha256)
    except StorageError as e:
        raise JobInputError(f"the stored bytes of file {row.training_file!r} are unusable: {e}") from None


def _fail(factory: sessionmaker[Session], profile_id: str, me: str, code: str, message: str,
          param: str | None = None) -> str:
    with transaction(factory) as session:
        done = profiles.fail(session, profile_id, me, code, message, param)
    return JobStatus.failed if done else "lost"
