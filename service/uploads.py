"""Uploaded datasets: received as they arrive, kept only when whole and valid, deleted only when no job needs them.

`DatasetSpool` takes an upload's bytes in pieces of any size (the API feeds it while the body is still being
received): each line is validated as it completes, the bytes are hashed and written under a temporary name, and the
first bad or excess line stops everything at once. `keep` makes the file durable under its final name and records
its row; anything short of that leaves no file and no row.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from drlora_core.atomic import fsync_path
from drlora_core.formats import DatasetError, LineValidator
from service.db import transaction
from service.errors import Conflict, InvalidRequest, PayloadTooLarge
from service.ids import new_id, now
from service.settings import Settings
from service.statuses import JobStatus
from service.tables import File, Job

PURPOSES = ("fine-tune",)
DEFAULT_FILENAME = "upload.jsonl"
MAX_FILENAME_CHARS = 200
# A job in one of these still reads its files; deleting one would fail it later.
USING_STATUSES = (JobStatus.queued, JobStatus.running, JobStatus.paused)
_UNSAFE = re.compile(r"[^\w.\- ()+,=@]")


def too_large(cap: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload is over the {cap} byte limit", param="file", code="file_too_large")


def safe_filename(name: str | None) -> str:
    """The last path component of a client's file name, in letters, digits and a few marks: never a path, a
    control character or a quote, so it can be shown and sent back in Content-Disposition as it is."""
    base = re.split(r"[/\\]", unicodedata.normalize("NFC", name or ""))[-1]
    base = _UNSAFE.sub("_", base).strip(" .")[:MAX_FILENAME_CHARS]
    return base or DEFAULT_FILENAME


def check_purpose(purpose: str | None) -> str:
    if purpose is None:
        raise InvalidRequest("purpose: field required; send purpose=fine-tune", param="purpose",
                             code="missing_parameter")
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose", code="invalid_purpose")
    return purpose


class DatasetSpool:
    def __init__(self, settings: Settings, tenant_id: str) -> None:
        self.cap = settings.max_upload_bytes
        self.tenant_id = tenant_id
        self.file_id = new_id("file")
        self.relative = f"{tenant_id}/{self.file_id}.jsonl"
        self.path = settings.files_root / self.relative
        # Received beside the tenants' folders, so that a refused upload leaves not even an empty folder behind.
        self._tmp = settings.files_root / f".{self.file_id}.part"
        self._file = os.fdopen(os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        self._digest = hashlib.sha256()
        self._validator = LineValidator(max_bytes=settings.max_upload_bytes, max_lines=settings.max_dataset_lines,
                                        max_line_bytes=settings.max_line_bytes)

    def write(self, data: bytes) -> None:
        if self._validator.size + len(data) > self.cap:
            raise too_large(self.cap)
        with _as_invalid_file():
            self._validator.feed(data)
        self._digest.update(data)
        self._file.write(data)

    def keep(self, factory: sessionmaker[Session], filename: str | None, purpose: str) -> File:
        """The file, durable under its final name, and its row."""
        with _as_invalid_file():
            summary = self._validator.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(self._tmp, self.path)
        fsync_path(self.path.parent)
        row = File(id=self.file_id, tenant_id=self.tenant_id, filename=safe_filename(filename), purpose=purpose,
                   bytes=summary.bytes, format=summary.format, lines=summary.lines,
                   sha256=self._digest.hexdigest(), path=self.relative, created_at=now())
        try:
            with transaction(factory) as session:
                session.add(row)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return row

    def discard(self) -> None:
        """Whatever is not kept goes: a no-op after `keep`."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


@contextmanager
def _as_invalid_file() -> Iterator[None]:
    try:
        yield
    except DatasetError as e:
        raise InvalidRequest(f"invalid training file: {e}", param="file", code="invalid_file", line=e.line) from None


def delete_file(session: Session, files_root: Path, row: File) -> None:
    """Deletes a file no queued, running or paused job of its tenant reads; 409 naming the job otherwise."""
    user = session.scalar(select(Job.id).where(
        Job.tenant_id == row.tenant_id, Job.status.in_(USING_STATUSES),
        (Job.training_file == row.id) | (Job.validation_file == row.id)).order_by(Job.created_at).limit(1))
    if user is not None:
        raise Conflict(f"file {row.id!r} is used by fine-tuning job {user!r}, which is not finished; cancel the job "
                       "or wait for it to finish before deleting the file", param="file_id", code="file_in_use")
    session.delete(row)
    session.commit()
    (files_root / row.path).unlink(missing_ok=True)
