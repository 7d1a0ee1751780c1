"""Write a stored adapter (per-expert factors, `adapter_files.StoredAdapter`) as a PEFT adapter directory.

This is the one writer of drlora's PEFT files: training's `export.export_peft` and `drlora export` both end here.
PEFT gives every targeted parameter one rank, so per-expert ranks are zero-padded to the largest rank r_c; PEFT's
scaling is 1 (lora_alpha = r) because ours is already folded into B, so the padding changes nothing.

Layouts:
- `fused`: PEFT `target_parameters` on the fused 3-D experts. PEFT wraps the parameters of one module in list
  order, each new wrapper outside the previous one, so the i-th of n names is saved under (n - 1 - i) times
  `base_layer.`. `lora_A.weight` is (E * r, in), expert-major; `lora_B.weight` is (out, r * E) with column
  j * E + e. Module-list experts use plain `target_modules`, one (r, in) / (out, r) pair per expert linear.
- `per_expert`: one LoRA per expert and projection under the checkpoint's own names (`expert_names`, e.g.
  Mixtral's `block_sparse_moe.experts.{e}.w1`); the fused gate_up splits into gate and up (A shared, B split by
  rows). PEFT's transformers-5 weight conversion re-fuses them at `PeftModel.from_pretrained`. That conversion
  stacks the experts into one tensor, so every expert must have the same rank: ranks are zero-padded to r_c here
  too (a `rank_pattern` per expert cannot survive the stacking). Needs `model_type` in drlora_ranks.json.
A trained router travels as a PEFT `modules_to_save` module (its full weights, under the model's own path).
`dtype` bf16 stores every tensor in bfloat16; fp32 and auto store float32. `max_rank` caps ranks first
(`rank_cap`), and drlora_ranks.json then reports the cap's errors, the exported `ranks` and the `trained_ranks`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from drlora_core.adapter_files import CONFIG_FILE, RANKS_FILE, WEIGHTS_FILE, StoredAdapter, StoredSite
from drlora_core.atomic import fresh_tmp, publish_dir
from drlora_core.expert_names import PerExpertUnsupported, split_names
from drlora_core.export_options import ExportOptions
from drlora_core.rank_cap import cap_ranks

Progress = Callable[[str, float], None]
Tensors = dict[str, torch.Tensor]
PREFIX = "base_model.model."


def write_adapter(stored: StoredAdapter, out_dir: Path, options: ExportOptions,
                  progress: Progress | None = None) -> Path:
    """Write `stored` to `out_dir` atomically in `options`' layout, dtype and rank cap; returns `out_dir`."""
    if options.layout == "merged":
        raise ValueError("write_adapter writes adapters; a merged model is written by exporting.export_stored")
    doc = dict(stored.ranks_doc)
    if options.max_rank is not None:
        stored, report = cap_ranks(stored, options.max_rank)
        doc["rank_cap"] = report.to_dict()
        doc["trained_ranks"] = doc.get("trained_ranks", doc["ranks"])
    doc["ranks"] = [list(s.ranks) for s in stored.sites]
    if not options.is_default:
        doc["export"] = options.to_dict()
    r_c = stored.max_rank
    tensors: Tensors = {}
    for i, site in enumerate(stored.sites):
        if options.layout == "per_expert" and site.style == "fused":
            tensors.update(_per_expert_site(site, r_c, _model_type(stored)))
        else:
            tensors.update(_fused_site(site, r_c))
        if progress is not None:
            progress(f"layer {site.layer}", (i + 1) / len(stored.sites))
    tensors.update({PREFIX + k: v.float() for k, v in stored.routers.items()})
    dtype = torch.bfloat16 if options.dtype == "bf16" else torch.float32
    tmp = fresh_tmp(out_dir)
    save_file({k: v.to(dtype=dtype, copy=True).contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
              metadata={"format": "pt"})
    _write_json(tmp / CONFIG_FILE, _config(stored, options, r_c))
    _write_json(tmp / RANKS_FILE, doc)
    return publish_dir(tmp, out_dir)


def _padded(site: StoredSite, name: str, r_c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (E, r_c, in) and B (E, out, r_c), exactly zero beyond each expert's rank."""
    a, b = site.lora_A[name].float(), site.lora_B[name].float()
    width = a.shape[1]
    if width < r_c:
        a = torch.nn.functional.pad(a, (0, 0, 0, r_c - width))
        b = torch.nn.functional.pad(b, (0, r_c - width))
    mask = (torch.arange(r_c)[None, :] < torch.tensor(site.ranks)[:, None]).float()
    return a[:, :r_c] * mask[:, :, None], b[:, :, :r_c] * mask[:, None, :]


def _fused_site(site: StoredSite, r_c: int) -> Tensors:
    tensors: Tensors = {}
    names = site.projections
    for i, name in enumerate(names):
        a, b = _padded(site, name, r_c)
        if site.style == "fused":
            prefix = f"{PREFIX}{site.path}." + "base_layer." * (len(names) - 1 - i)
            tensors[prefix + "lora_A.weight"] = a.reshape(-1, a.shape[-1])
            tensors[prefix + "lora_B.weight"] = b.permute(1, 2, 0).reshape(b.shape[1], -1)
        else:
            for e in range(site.num_experts):
                tensors[f"{PREFIX}{site.path}.{e}.{name}.lora_A.weight"] = a[e]
                tensors[f"{PREFIX}{site.path}.{e}.{name}.lora_B.weight"] = b[e]
    return tensors


def _per_expert_site(site: StoredSite, r_c: int, model_type: str) -> Tensors:
    tensors: Tensors = {}
    for name in site.projections:
        a, b = _padded(site, name, r_c)
        names = split_names(model_type, site.path, name)
        parts = len(names.modules)
        rows = b.shape[1] // parts
        for part in range(parts):
            for e in range(site.num_experts):
                module = PREFIX + names.module(part, e)
                tensors[module + ".lora_A.weight"] = a[e]
                tensors[module + ".lora_B.weight"] = b[e, part * rows:(part + 1) * rows]
    return tensors


def _model_type(stored: StoredAdapter) -> str:
    model_type = stored.ranks_doc.get("model_type")
    if not model_type:
        raise PerExpertUnsupported(
            f"{RANKS_FILE} has no model_type (the adapter was written by an older drlora): add "
            '"model_type": "<the base model config.json\'s model_type>" to it, or export layout fused')
    return str(model_type)


def _config(stored: StoredAdapter, options: ExportOptions, r_c: int) -> dict[str, Any]:
    fused = [s for s in stored.sites if s.style == "fused"]
    listed = [s for s in stored.sites if s.style == "module_list"]
    target_modules: str | list[str] = []
    target_parameters: list[str] = []
    if options.layout == "per_expert" and fused:
        model_type = _model_type(stored)
        target_modules = _unique(leaf for s in fused for p in s.projections
                                 for leaf in split_names(model_type, s.path, p).leaf_names)
    else:
        target_parameters = _unique(f"{s.path.rpartition('.')[2]}.{p}" for s in fused for p in s.projections)
    if listed:
        paths = "|".join(re.escape(s.path) for s in listed)
        names = "|".join(_unique(p for s in listed for p in s.projections))
        target_modules = rf"^({paths})\.\d+\.({names})$"
    return {
        "peft_type": "LORA", "task_type": stored.config.get("task_type"),
        "base_model_name_or_path": options.base_model_name_or_path or stored.base_model,
        "r": r_c, "lora_alpha": r_c, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "inference_mode": True, "init_lora_weights": True,
        "target_modules": target_modules, "target_parameters": target_parameters or None,
        "modules_to_save": stored.config.get("modules_to_save") if stored.routers else None,
        "rank_pattern": {}, "alpha_pattern": {},
    }


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")
