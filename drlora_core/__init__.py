"""DR-LoRA engine: per-expert LoRA with dynamic ranks for Mixture-of-Experts models.

`__all__` is the public API (pinned by tests/engine/test_public_api.py). Importing this package is cheap: the API
process imports `drlora_core.formats` and `drlora_core.atomic` and must never load torch, so every other name is
imported from its module on first use (the module `__getattr__` below).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drlora_core.adapter import Adapter, attach
    from drlora_core.assets import DEMO_MODEL_ID
    from drlora_core.callbacks import (
        ExpertStats,
        GrowthEvent,
        Hooks,
        StepMetrics,
        StopReason,
        TrainingCallback,
    )
    from drlora_core.config import ConfigError, LoraConfig, RunConfig, TrainConfig
    from drlora_core.export import export_peft
    from drlora_core.formats import DatasetError
    from drlora_core.merge_stream import export_merged
    from drlora_core.run import PreparedRun, RunResult, prepare_run, train_prepared, train_run
    from drlora_core.trainer import TrainResult, train

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES: dict[str, str] = {
    "Adapter": "adapter", "attach": "adapter",
    "DEMO_MODEL_ID": "assets",
    "ExpertStats": "callbacks", "GrowthEvent": "callbacks", "Hooks": "callbacks", "StepMetrics": "callbacks",
    "StopReason": "callbacks", "TrainingCallback": "callbacks",
    "ConfigError": "config", "LoraConfig": "config", "RunConfig": "config", "TrainConfig": "config",
    "export_merged": "merge_stream", "export_peft": "export",
    "DatasetError": "formats",
    "PreparedRun": "run", "RunResult": "run", "prepare_run": "run", "train_prepared": "run", "train_run": "run",
    "TrainResult": "trainer", "train": "trainer",
}

__all__ = [
    "DEMO_MODEL_ID",
    "Adapter",
    "ConfigError",
    "DatasetError",
    "ExpertStats",
    "GrowthEvent",
    "Hooks",
    "LoraConfig",
    "PreparedRun",
    "RunConfig",
    "RunResult",
    "StepMetrics",
    "StopReason",
    "TrainConfig",
    "TrainResult",
    "TrainingCallback",
    "__version__",
    "attach",
    "export_merged",
    "export_peft",
    "prepare_run",
    "train",
    "train_prepared",
    "train_run",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'drlora_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"drlora_core.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
