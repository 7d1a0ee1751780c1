"""Rows a worker would write, put in place through the service layer: a succeeded job with an adapter artifact (and
a checkpoint's), and a built export. For the API and download tests that run no worker."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service import exports
from service.db import transaction
from service.ids import new_id, now
from service.settings import Settings
from service.statuses import JobStatus
from service.tables import Artifact, Checkpoint, Export, Job


def store_file(settings: Settings, relative: str, data: bytes) -> str:
    """Write `data` under the artifact root; returns its sha256."""
    path = settings.artifact_root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def succeed_with_artifacts(factory: sessionmaker[Session], settings: Settings, job_id: str, data: bytes,
                           checkpoint_step: int = 2) -> None:
    """The job succeeded at step 4 with `data` as its adapter zip, and a checkpoint at `checkpoint_step`."""
    final = f"{job_id}/attempt-1/adapter.zip"
    ckpt = f"{job_id}/attempt-1/checkpoint-{checkpoint_step}.zip"
    sha_final, sha_ckpt = store_file(settings, final, data), store_file(settings, ckpt, data[::-1])
    with transaction(factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.succeeded, step=4, finished_at=now()))
        checkpoint = Checkpoint(id=new_id("ftckpt"), job_id=job_id, step=checkpoint_step, attempt=1, path="x",
                                metrics=None, created_at=now())
        s.add(checkpoint)
        s.add(Artifact(id=new_id("artifact"), job_id=job_id, kind="adapter", step=4, checkpoint_id=None,
                       path=final, sha256=sha_final, bytes=len(data), created_at=now()))
        s.add(Artifact(id=new_id("artifact"), job_id=job_id, kind="checkpoint", step=checkpoint_step,
                       checkpoint_id=checkpoint.id, path=ckpt, sha256=sha_ckpt, bytes=len(data), created_at=now()))


def build_export(factory: sessionmaker[Session], settings: Settings, export_id: str, data: bytes) -> str:
    """Claim, report and finish the export as a worker would, with `data` as its zip; returns its sha256."""
    with transaction(factory) as s:
        attempt = exports.claim(s, export_id, "test-worker")
        assert attempt is not None
        assert exports.report(s, export_id, "test-worker", attempt, "writing", 0.5)
    with factory() as s:
        job_id = s.get_one(Export, export_id).job_id
    relative = f"{job_id}/exports/{export_id}/attempt-{attempt}.zip"
    sha256 = store_file(settings, relative, data)
    with transaction(factory) as s:
        assert exports.finish(s, export_id, "test-worker", attempt, relative, sha256, len(data))
    return sha256


class CutAfter(httpx.BaseTransport):
    """A real HTTP transport whose response bodies raise after `limit` bytes (None: never); it records every
    request it sends."""

    def __init__(self, limit: int | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.limit = limit
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        if self.limit is None:
            return response
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Cut(response.stream, self.limit), extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()


class _Cut(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def __iter__(self):  # type: ignore[no-untyped-def]
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) > self.limit:
                yield chunk[: self.limit - sent]
                raise httpx.ReadError("connection cut by the test")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")
