"""Artifact storage: atomic writes with their sha256, and reads that never leave the root or serve altered bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from drlora_core.atomic import write_atomic, zip_dir_atomic
from service.storage import StorageError, resolve_inside, verified_path

pytestmark = pytest.mark.timeout(30)


def test_write_atomic_records_sha256_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    sha, size = write_atomic(tmp_path / "a" / "f.bin", [b"abc", b"def"])
    assert (sha, size) == (hashlib.sha256(b"abcdef").hexdigest(), 6)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.bin"]


def test_zip_dir_atomic_skips_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "link").symlink_to("/etc/passwd")
    sha, _ = zip_dir_atomic(src, tmp_path / "out" / "adapter.zip")
    import zipfile

    with zipfile.ZipFile(tmp_path / "out" / "adapter.zip") as zf:
        assert zf.namelist() == ["adapter_config.json"]
    assert verified_path(tmp_path, "out/adapter.zip", sha).name == "adapter.zip"


@pytest.mark.parametrize("relative", [
    "../outside.txt", "a/../../outside.txt", "/etc/passwd", "a\\..\\outside.txt", "a/f.bin\x00", "", "link/f.bin",
    "filelink",
])
def test_reads_never_leave_the_root(tmp_path: Path, relative: str) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f.bin").write_bytes(b"x")
    (tmp_path / "outside.txt").write_text("secret")
    (root / "link").symlink_to(root / "a")  # even a link that stays inside is refused
    (root / "filelink").symlink_to(tmp_path / "outside.txt")
    assert resolve_inside(root, "a/f.bin").read_bytes() == b"x"
    with pytest.raises(StorageError):
        resolve_inside(root, relative)


def test_an_altered_file_is_refused(tmp_path: Path) -> None:
    sha, _ = write_atomic(tmp_path / "f.bin", [b"original"])
    assert verified_path(tmp_path, "f.bin", sha)
    with open(tmp_path / "f.bin", "r+b") as f:
        f.write(b"O")
        os.fsync(f.fileno())
    with pytest.raises(StorageError):
        verified_path(tmp_path, "f.bin", sha)
