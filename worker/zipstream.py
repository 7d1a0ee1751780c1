"""Zip a folder straight to its published name, hashing the bytes as they are written (never read back).

`zipfile` seeks back to patch each member's local header when its file is seekable, which would make a running hash
wrong; `_HashingSink` has no `seek`, so zipfile writes data descriptors instead and every byte goes out exactly once,
in order, through the hash. The zip is built under a temporary sibling name, fsynced and renamed into place (the
folder fsynced too), as `drlora_core.atomic` does. Weights (`.safetensors`) are stored, not deflated: float tensors
barely compress and a merged model is large.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from drlora_core.atomic import CHUNK, fsync_path

STORED_SUFFIXES = (".safetensors", ".bin", ".pt")


class _HashingSink:
    """A write-only, unseekable file that hashes and counts what passes through it."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def zip_dir_hashed(src: Path, dest: Path, progress: Callable[[float], None] | None = None) -> tuple[str, int]:
    """Zip the regular files under `src` (relative names; symlinks skipped) into `dest` atomically; returns (sha256
    hex, size). `progress` gets the fraction of input bytes written so far."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    total = sum(p.stat().st_size for p in files) or 1
    done = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    sink = _HashingSink(tmp)
    try:
        with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:  # type: ignore[arg-type]
            for path in files:
                method = zipfile.ZIP_STORED if path.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
                info = zipfile.ZipInfo.from_file(path, arcname=path.relative_to(src).as_posix())
                info.compress_type = method
                with open(path, "rb") as f, zf.open(info, "w", force_zip64=info.file_size > 2**31) as out:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done / total)
        sink.close()
        os.replace(tmp, dest)
    except BaseException:
        if not sink.file.closed:
            sink.file.close()
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(dest.parent)
    return sink.digest.hexdigest(), sink.size


def unzip_flat(zip_path: Path, dest: Path) -> Path:
    """Unpack a stored adapter zip into `dest`, refusing member names that would leave it."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if info.is_dir() or not target.is_relative_to(root) or target == root:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
    return dest
