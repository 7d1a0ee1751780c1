"""One training run from files on disk: load model and data, attach, train (or resume), export the adapter.

`train_run` is the entry point the CLI and the worker share. Its setup, `prepare_run` (seed, model, data, adapter),
is also what the quality benchmark trains with, so that it measures the same runs. Layout of `out_dir`:
  checkpoints/step-NNNNNN/   resumable checkpoints (see checkpoint.py), each with its PEFT adapter in adapter/
  adapter/                   the PEFT adapter directory, written when the run completes
  merged/                    with `merged=True`: the base checkpoint with adapter/ merged in, streamed shard by shard
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from drlora_core import checkpoint as ckpt
from drlora_core.activation_checkpointing import enable_activation_checkpointing
from drlora_core.adapter import Adapter, attach
from drlora_core.assets import DEMO_MODEL_ID, resolve_model_dir
from drlora_core.callbacks import ExpertStats, GrowthEvent, StopReason, TrainingCallback
from drlora_core.config import ConfigError, RunConfig
from drlora_core.data import BatchStream, collate, load_dataset, pad_token_id
from drlora_core.export import export_run_adapter
from drlora_core.formats import file_format
from drlora_core.merge_stream import export_merged
from drlora_core.trainer import Batch, TrainResult, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    status: Literal["completed", "stopped"]
    stopped: StopReason | None
    step: int
    total_steps: int
    adapter_dir: Path | None
    merged_dir: Path | None
    ranks: list[list[int]]
    growth_events: list[GrowthEvent]
    stats: ExpertStats


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{device!r} was asked for but no CUDA device is visible; use --device cpu")
    return torch.device(device)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The compute dtype of a run: "auto" is bf16 on a CUDA device that has it and fp32 elsewhere (bf16 matmuls
    are slow on most CPUs); "bf16" is honoured on a CPU too."""
    if choice == "fp32":
        return torch.float32
    if choice == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("dtype", f"{torch.cuda.get_device_name(device)} has no bf16; use fp32")
        return torch.bfloat16
    if choice == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    raise ConfigError("dtype", f"must be auto, bf16 or fp32, got {choice!r}")


def load_base(model: str, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, Path]:
    """(model, tokenizer, directory) of a local Hugging Face model or the bundled demo model, its weights read
    straight onto `device` in `dtype` (no staging copy in host memory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve_model_dir(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device, local_files_only=True)
    base.config.use_cache = False
    return base, tokenizer, model_dir


@dataclass(frozen=True)
class PreparedRun:
    """A run ready to train: the base model with its adapter attached, the data, and where it executes."""

    config: RunConfig
    model: Any  # the Hugging Face model, adapted in place
    tokenizer: Any
    base_model: str  # what the exported adapter names as its base: the demo's id or the model's directory
    adapter: Adapter
    stream: BatchStream
    val_batches: list[Batch]
    device: torch.device
    dtype: torch.dtype  # the compute dtype


def prepare_run(model: str, train_file: Path, config: RunConfig, val_file: Path | None = None) -> PreparedRun:
    """Seed, load the base model and the data, attach the adapter: everything before the first step."""
    config.require_resolved()
    t = config.train
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    dtype = resolve_dtype(t.dtype, device)
    base, tokenizer, model_dir = load_base(model, device, dtype)
    examples = load_dataset(train_file, tokenizer, t.max_seq_len)
    batch_size = t.resolved_batch_size
    stream = BatchStream(examples, batch_size, t.seed, pad_token_id(tokenizer))
    val = load_batches(val_file, tokenizer, t.max_seq_len, batch_size) if val_file else []
    adapter = attach(base, config.lora, impl=t.experts_impl)
    if t.gradient_checkpointing is True and not enable_activation_checkpointing(base):
        raise ConfigError("gradient_checkpointing", f"{type(base).__name__} does not support it; turn it off")
    base_name = DEMO_MODEL_ID if model == DEMO_MODEL_ID else str(model_dir)
    return PreparedRun(config, base, tokenizer, base_name, adapter, stream, val, device, dtype)


def train_prepared(run: PreparedRun, out_dir: Path, callbacks: Sequence[TrainingCallback] = (),
                   resume: ckpt.CheckpointData | None = None) -> TrainResult:
    """Train a prepared run (from `resume` when given); the model stays adapted in memory afterwards."""
    return train(run.model, run.adapter, run.stream, run.val_batches, run.config, out_dir, base_model=run.base_model,
                 callbacks=callbacks, resume=resume, device=run.device, dtype=run.dtype)


def train_run(model: str, train_file: Path, out_dir: Path, config: RunConfig, val_file: Path | None = None,
              callbacks: Sequence[TrainingCallback] = (), resume: bool = True, merged: bool = False) -> RunResult:
    config.require_resolved()
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ckpt.latest_checkpoint(out_dir) if resume else None
    data = ckpt.load_checkpoint(checkpoint) if checkpoint else None
    if data is not None and _identity(data.meta["config"]) != _identity(config.to_dict()):
        raise ConfigError("config", f"{checkpoint} was written with a different configuration; use a new output "
                                    "directory, or the same settings to resume")
    run = prepare_run(model, train_file, config, val_file)
    if data is not None:
        log.info("resuming from %s", checkpoint)
    result = train_prepared(run, out_dir, callbacks, data)
    completed = result.step >= result.total_steps and result.stopped != "cancel"
    adapter_dir = merged_dir = None
    if completed:
        adapter_dir = export_run_adapter(run.adapter, out_dir / "adapter", base_model=run.base_model,
                                         events=result.growth_events, config=config, step=result.step,
                                         data_format=file_format(train_file))
        if merged:
            merged_dir = export_merged(adapter_dir, resolve_model_dir(model), out_dir / "merged")
    return RunResult("completed" if completed else "stopped", None if completed else result.stopped, result.step,
                     result.total_steps, adapter_dir, merged_dir, result.ranks, result.growth_events, result.stats)


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """What must match to resume: everything but where the run executes (a job may move to another worker)."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "device"}}


def load_batches(path: Path, tokenizer: Any, max_seq_len: int, batch_size: int) -> list[Batch]:
    """A dataset file as padded batches in file order (validation sets)."""
    examples = load_dataset(path, tokenizer, max_seq_len)
    pad = pad_token_id(tokenizer)
    return [collate(examples[i:i + batch_size], pad) for i in range(0, len(examples), batch_size)]
