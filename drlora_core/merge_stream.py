"""Merge a stored adapter into its base checkpoint, one shard at a time: the `merged` export and `drlora train
--merged`.

The output is the base's own checkpoint (same shard files, same keys, same index) with every expert's LoRA update
added in float32 and trained routers replaced, plus the base's config, generation config, tokenizer and chat
template. Memory holds one tensor being written and the updates of the layer it belongs to, never a whole shard or
the model: shards are written tensor by tensor (safetensors_stream.py) and the model itself is only a meta-device
skeleton (see merge_plan.py). Everything is written to a temporary folder and
published atomically.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from drlora_core.adapter_files import StoredAdapter, read_adapter
from drlora_core.atomic import fresh_tmp, publish_dir
from drlora_core.merge_plan import (
    INDEX_FILE,
    BaseCheckpoint,
    DeltaCache,
    MergePlan,
    open_base,
    plan_merge,
    skeleton,
)
from drlora_core.safetensors_stream import DTYPE_NAMES, Entry, write_streamed

Progress = Callable[[str, float], None]
CAST: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
CONFIG_DTYPE: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16"}
FLOATING = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
          "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
          "chat_template.json")


def merge_streamed(stored: StoredAdapter, base_dir: Path, out_dir: Path, dtype: str,
                   progress: Progress | None = None) -> Path:
    """Write `base_dir`'s checkpoint with `stored` merged in to `out_dir` atomically and return `out_dir`.
    `dtype` "auto" keeps each tensor's dtype; "fp32" / "bf16" cast every floating tensor."""
    if dtype not in ("auto", *CAST):
        raise ValueError(f"dtype must be auto, fp32 or bf16, got {dtype!r}")
    base = open_base(base_dir)
    model = skeleton(base)
    plan = plan_merge(stored, model, base)
    deltas = DeltaCache(stored, model, plan)
    tmp = fresh_tmp(out_dir)
    try:
        total = 0
        for i, name in enumerate(base.shards):
            total += _merge_shard(base.directory / name, tmp / name, deltas, plan, dtype)
            if progress is not None:
                progress(f"merged shard {i + 1}/{len(base.shards)} ({name})", (i + 1) / len(base.shards))
        _write_side_files(base, tmp, dtype, total)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_dir(tmp, out_dir)


def export_merged(adapter_dir: Path, base_model_dir: Path, out_dir: Path, dtype: str = "auto",
                  progress: Progress | None = None) -> Path:
    """Merge the adapter directory `adapter_dir` (what training writes) into the local base checkpoint
    `base_model_dir` and write a plain Hugging Face model directory to `out_dir`."""
    return merge_streamed(read_adapter(adapter_dir), base_model_dir, out_dir, dtype, progress)


def _merge_shard(source: Path, target: Path, deltas: DeltaCache, plan: MergePlan, dtype: str) -> int:
    """Write one merged shard a tensor at a time; returns its tensor bytes."""
    with safe_open(str(source), framework="pt", device="cpu") as f:
        keys = list(f.keys())
        entries = [Entry(k, _out_dtype(f.get_slice(k).get_dtype(), dtype), tuple(f.get_slice(k).get_shape()))
                   for k in keys]
        merged = (_merged_tensor(k, f.get_tensor(k), deltas, plan, dtype) for k in keys)
        return write_streamed(target, entries, merged, f.metadata() or {"format": "pt"})


def _out_dtype(stored: str, dtype: str) -> str:
    return DTYPE_NAMES[CAST[dtype]] if dtype in CAST and stored in FLOATING else stored


def _merged_tensor(key: str, weight: torch.Tensor, deltas: DeltaCache, plan: MergePlan, dtype: str) -> torch.Tensor:
    out = CAST[dtype] if dtype in CAST and weight.is_floating_point() else weight.dtype
    router = plan.routers.get(key)
    if router is not None:
        return router.to(out).contiguous()
    update = deltas.take(key)
    if update is not None:
        return (weight.float() + update).to(out).contiguous()
    return weight.to(out)


def _write_side_files(base: BaseCheckpoint, tmp: Path, dtype: str, total: int) -> None:
    config = dict(base.config)
    if dtype in CONFIG_DTYPE:
        config["dtype"] = CONFIG_DTYPE[dtype]
        if "torch_dtype" in config:
            config["torch_dtype"] = CONFIG_DTYPE[dtype]
    _write_json(tmp / "config.json", config)
    if base.index is not None:
        metadata = {**base.index.get("metadata", {}), "total_size": total}
        _write_json(tmp / INDEX_FILE, {**base.index, "metadata": metadata})
    for name in COPIED:
        if (base.directory / name).is_file():
            shutil.copyfile(base.directory / name, tmp / name)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
