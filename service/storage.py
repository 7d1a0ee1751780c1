"""Reads of stored files and artifacts that never leave their root (writes are `drlora_core.atomic`'s).

A read resolves the stored relative path inside its root, refuses anything that escapes it (`..`, absolute paths, NUL, backslashes, symlinks) and checks the sha256 recorded at
write time before a byte is served.
"""

from __future__ import annotations

import os
from pathlib import Path

from drlora_core.atomic import sha256_file


class StorageError(Exception):
    """A stored file is missing, outside its root, or no longer matches its recorded sha256."""


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
