"""Local files and artifacts: atomic writes, sha256 at write time, and reads that never leave their root.

A write goes to a temporary name in the target folder, is fsynced, renamed over the final name and the folder is
fsynced, so a crash leaves either no file or the whole file. A read resolves the stored relative path inside its root,
refuses anything that escapes it (`..`, absolute paths, NUL, backslashes, symlinks) and checks the sha256 recorded at
write time before a byte is served.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


class StorageError(Exception):
    """A stored file is missing, outside its root, or no longer matches its recorded sha256."""


def write_atomic(path: Path, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Write `chunks` to `path` atomically; returns (sha256 hex, size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
    fsync_dir(path.parent)
    return digest.hexdigest(), size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def zip_dir_atomic(src: Path, dest: Path) -> tuple[str, int]:
    """Zip the regular files directly under `src` (symlinks are skipped) into `dest` atomically."""
    return zip_files_atomic([p for p in sorted(src.iterdir()) if p.is_file() and not p.is_symlink()], dest)


def zip_files_atomic(files: Iterable[Path], dest: Path) -> tuple[str, int]:
    """Zip `files` (stored by name, flat) into `dest` atomically; returns (sha256 hex, size)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for item in files:
                zf.write(item, arcname=item.name)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)
    return digest, size


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_inside(root: Path, relative: str) -> Path:
    """The path of `relative` under `root`; raises StorageError unless it is a plain file inside the root.

    Stored paths are written by the service itself, so anything unusual is refused rather than normalised: `..`,
    absolute paths, NUL, backslashes, and any symlink on the way (a planted link could point anywhere).
    """
    parts = Path(relative).parts
    if not relative or "\x00" in relative or "\\" in relative or os.path.isabs(relative) or ".." in parts:
        raise StorageError("invalid stored path")
    root_real = root.resolve()
    path = root_real.joinpath(*parts)
    for depth in range(1, len(parts) + 1):
        if root_real.joinpath(*parts[:depth]).is_symlink():
            raise StorageError("stored path goes through a symlink")
    if not path.resolve().is_relative_to(root_real) or not path.is_file():
        raise StorageError("stored file is missing or outside its root")
    return path


def verified_path(root: Path, relative: str, sha256: str) -> Path:
    """`resolve_inside`, then refuse the file if its content no longer matches the recorded sha256."""
    path = resolve_inside(root, relative)
    if sha256_file(path) != sha256:
        raise StorageError("stored file does not match its recorded sha256")
    return path
