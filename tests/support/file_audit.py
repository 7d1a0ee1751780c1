"""What the service may leave on disk, and a pickle to plant where it must never be read.

RELIABILITY 9: every file the service writes is safetensors, JSON (JSON lines for datasets), a zip of those, or
loads with `torch.load(weights_only=True)`; nothing it reads is ever unpickled. `unsafe_files` walks a data
directory and names every file that is none of these; `plant_pickles` drops files named the way other trainers name
their pickled state, each of which would create a marker file the moment anything unpickled it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

# Names other trainers give pickled state (torch.save, HF Trainer, plain pickle).
PICKLE_NAMES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "pytorch_model.bin",
                "trainer_state.pkl")


class _Tripwire:
    """Unpickling this creates `path` (os.mkdir: no file handle left open): proof that something unpickled a
    planted file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.path),)


def plant_pickles(folder: Path, marker: Path) -> list[Path]:
    payload = pickle.dumps({"state": _Tripwire(marker)})
    planted = [folder / name for name in PICKLE_NAMES]
    for path in planted:
        path.write_bytes(payload)
    return planted


def unsafe_files(root: Path) -> list[str]:
    """Files under `root` that are not one of the safe formats, as 'relative/path: why'."""
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        why = _unsafe(path.name, path.read_bytes())
        if why:
            problems.append(f"{path.relative_to(root)}: {why}")
    return problems


def _unsafe(name: str, data: bytes) -> str | None:
    if not data:  # an empty file (a worker's liveness marker) holds nothing to load
        return None
    if name.endswith(".csv"):  # a job's metrics result file
        return _try(lambda: list(csv.reader(io.StringIO(data.decode()))))
    if name.endswith(".safetensors"):
        return _try(lambda: load_safetensors(data))
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            inner = [f"{member}: {why}" for member in zf.namelist() if (why := _unsafe(member, zf.read(member)))]
        return "; ".join(inner) or None
    if _try(lambda: json.loads(data)) is None or _try(lambda: _json_lines(data)) is None:
        return None
    return _try(lambda: torch.load(io.BytesIO(data), weights_only=True))


def _json_lines(data: bytes) -> None:
    lines = [line for line in data.splitlines() if line.strip()]
    assert lines, "empty"
    for line in lines:
        json.loads(line)


def _try(load: Callable[[], object]) -> str | None:
    try:
        load()
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:200]}"
    return None
