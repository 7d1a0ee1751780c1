"""Atomic writes, the one implementation the engine, the worker and the API share (standard library only).

A file or folder is built under a temporary name beside its final one, fsynced, renamed into place, and the parent
folder is fsynced, so a crash leaves the old version or the new one, never half of either.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def fresh_tmp(final: Path) -> Path:
    """An empty sibling folder to build `final` in (a leftover from a crash is removed)."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> Path:
    """Make `tmp` durable and visible as `final`."""
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)
    return final


def write_atomic(path: Path, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Write `chunks` to `path` atomically; returns (sha256 hex, size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
    return digest.hexdigest(), size


def zip_dir_atomic(src: Path, dest: Path) -> tuple[str, int]:
    """Zip the regular files directly under `src` (symlinks are skipped) into `dest` atomically."""
    return zip_files_atomic([p for p in sorted(src.iterdir()) if p.is_file() and not p.is_symlink()], dest)


def zip_files_atomic(files: Iterable[Path], dest: Path) -> tuple[str, int]:
    """Zip `files` (stored by name, flat) into `dest` atomically; returns (sha256 hex, size)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for item in files:
                zf.write(item, arcname=item.name)
        fsync_path(tmp)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(dest.parent)
    return digest, size


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
