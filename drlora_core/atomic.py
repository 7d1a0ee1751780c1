"""Publish a folder all at once: build it under a temporary name, fsync it, rename it into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fresh_tmp(final: Path) -> Path:
    """An empty sibling folder to build `final` in (a leftover from a crash is removed)."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> Path:
    """Make `tmp` durable and visible as `final`: a crash leaves the old folder or the new one, never half."""
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)
    return final


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
