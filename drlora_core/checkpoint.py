"""Checkpoints that resume a run exactly: safetensors for tensors, JSON for the rest, never pickle.

Layout of `<out>/checkpoints/step-000120/`:
  adapter.safetensors    LoRA banks (A, B, ranks) of every layer, plus trained router weights if any
  signals.safetensors    frequency EMA, slice-importance EMAs, this step's routing counts, RNG states
  optimizer.safetensors  AdamW moments and step counters, keyed by parameter index
  trainer.json           run config, step, data position, growth events, scheduler and optimizer hyperparameters
  adapter/               the PEFT adapter at this step (export.py), loadable exactly like the run's final one
  COMPLETE               written last (JSON, the step): a folder without it is a partial write, ignored and removed
A checkpoint is written to a temporary folder, fsynced and renamed, so a crash leaves the old state or the new.

Crash drill: with `DRLORA_DEBUG_HOLD_CHECKPOINT_STEP=N` in its environment, the process writing step N's checkpoint
stops after the data files, before the marker and the rename, and waits there for an hour, so that an operator (or
a test) can kill it mid-write and watch the next run ignore and remove the partial folder. Unset, it costs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from drlora_core.atomic import fresh_tmp, publish_dir

PREFIX = "step-"
MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"
HOLD_STEP_ENV = "DRLORA_DEBUG_HOLD_CHECKPOINT_STEP"
HOLD_SECONDS = 3600.0
log = logging.getLogger(__name__)


@dataclass
class CheckpointData:
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> tensors
    meta: dict[str, Any]


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def save_checkpoint(out_dir: Path, step: int, data: CheckpointData, write_adapter: Callable[[Path], object]) -> Path:
    """Write the checkpoint of `step`; `write_adapter(folder)` writes its PEFT adapter before the marker."""
    root = checkpoint_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = fresh_tmp(final)
    for stem, tensors in data.tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / f"{stem}.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps(data.meta, indent=1))
    write_adapter(tmp / ADAPTER_DIR)
    _hold_if_drilled(step, tmp)
    (tmp / MARKER).write_text(json.dumps({"step": step}) + "\n")
    return publish_dir(tmp, final)


def _hold_if_drilled(step: int, tmp: Path) -> None:
    """The crash drill's pause (see the module docstring): the checkpoint is half written while this sleeps."""
    if os.environ.get(HOLD_STEP_ENV, "").strip() == str(step):
        log.warning("%s=%s: holding the partial checkpoint %s for a crash drill", HOLD_STEP_ENV, step, tmp)
        time.sleep(HOLD_SECONDS)


def load_checkpoint(path: Path) -> CheckpointData:
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    tensors = {p.stem: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    return CheckpointData(tensors, json.loads((path / "trainer.json").read_text()))


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint; partial folders left by a crash are removed on the way."""
    remove_partial_checkpoints(out_dir)
    root = checkpoint_dir(out_dir)
    complete = [p for p in root.glob(f"{PREFIX}*") if p.is_dir()] if root.is_dir() else []
    return max(complete, key=lambda p: int(p.name[len(PREFIX):]), default=None)


def remove_partial_checkpoints(out_dir: Path) -> list[Path]:
    """Delete what a writer killed mid-checkpoint left under `out_dir` (a temporary folder, or a folder without the
    marker); returns what was removed. Never touches a complete checkpoint."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    partial = [p for p in root.glob(f".{PREFIX}*.tmp")]
    partial += [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and not (p / MARKER).is_file()]
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
