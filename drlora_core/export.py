"""Write a trained adapter as a PEFT adapter directory (loadable without drlora). Merged models are written from
that directory by `merge_stream.export_merged`.

PEFT gives every targeted parameter one rank, so per-expert ranks are zero-padded to the largest active rank r_c;
PEFT's scaling is made 1 (lora_alpha = r) and ours is folded into B, so the padding changes nothing.
- fused experts use PEFT's `target_parameters`. PEFT wraps the parameters of one module in list order, each new
  wrapper outside the previous one, so the i-th of n names is saved under (n - 1 - i) times `base_layer.`.
  `lora_A.weight` is (E * r, in), expert-major; `lora_B.weight` is (out, r * E) with column j * E + e.
- module-list experts use plain `target_modules`, one (r, in) / (out, r) pair per expert linear.
A router trained with `train_router` goes in as a PEFT `modules_to_save` module (its full weights).
`drlora_ranks.json` beside them keeps the true rank map and every growth event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from drlora_core.adapter import Adapter
from drlora_core.adapter_files import StoredAdapter
from drlora_core.atomic import fresh_tmp, publish_dir
from drlora_core.callbacks import GrowthEvent
from drlora_core.config import RunConfig
from drlora_core.families import ExpertsSite, find_experts

RANKS_FILE = "drlora_ranks.json"


def peft_tensors(adapter: Adapter, routers: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    """PEFT state dict (keys as PEFT saves them) and the common rank r_c."""
    r_c = max(max(r) for r in adapter.ranks())
    tensors: dict[str, torch.Tensor] = {}
    for site, bank in zip(adapter.sites, adapter.banks, strict=True):
        mask = bank.slice_mask()[:, :r_c]
        names = bank.projection_names
        for i, name in enumerate(names):
            a = bank.lora_A[name][:, :r_c].detach().float() * mask[:, :, None]
            b = bank.lora_B[name][:, :, :r_c].detach().float() * mask[:, None, :] * bank.scaling
            if site.style == "fused":
                prefix = f"base_model.model.{site.path}." + "base_layer." * (len(names) - 1 - i)
                tensors[prefix + "lora_A.weight"] = a.reshape(-1, a.shape[-1]).contiguous()
                tensors[prefix + "lora_B.weight"] = b.permute(1, 2, 0).reshape(b.shape[1], -1).contiguous()
            else:
                for e in range(bank.num_experts):
                    prefix = f"base_model.model.{site.path}.{e}.{name}."
                    tensors[prefix + "lora_A.weight"] = a[e].contiguous()
                    tensors[prefix + "lora_B.weight"] = b[e].contiguous()
        if routers and site.router is not None:
            for pname, param in site.router.named_parameters():
                tensors[f"base_model.model.{site.router_path}.{pname}"] = param.detach().float().contiguous()
    return {k: v.cpu() for k, v in tensors.items()}, r_c


def peft_config(adapter: Adapter, r_c: int, base_model: str, routers: bool = False) -> dict[str, Any]:
    fused = [s for s in adapter.sites if s.style == "fused"]
    listed = [s for s in adapter.sites if s.style == "module_list"]
    target_parameters = _unique(f"{s.path.rpartition('.')[2]}.{p.name}" for s in fused for p in s.projections)
    target_modules: str | list[str] = []
    if listed:
        paths = "|".join(re.escape(s.path) for s in listed)
        names = "|".join(_unique(p.name for s in listed for p in s.projections))
        target_modules = rf"^({paths})\.\d+\.({names})$"
    is_hf = hasattr(adapter.model, "generation_config") or hasattr(adapter.model, "can_generate")
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if is_hf else None, "base_model_name_or_path": base_model,
        "r": r_c, "lora_alpha": r_c, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "inference_mode": True, "init_lora_weights": True,
        "target_modules": target_modules, "target_parameters": target_parameters or None,
        "modules_to_save": _unique(str(s.router_path).rpartition(".")[2] for s in adapter.sites) if routers else None,
        "rank_pattern": {}, "alpha_pattern": {},
    }


def ranks_document(adapter: Adapter, events: Sequence[GrowthEvent], extra: dict[str, Any]) -> dict[str, Any]:
    cfg = adapter.config
    return {
        "method": cfg.method, "r_init": cfg.r_init, "r_target": cfg.r_target, "r_max": cfg.r_max,
        "scaling": cfg.scaling, "ranks": adapter.ranks(),
        "layers": [{"layer": s.layer, "path": s.path, "num_experts": s.num_experts,
                    "projections": [p.name for p in s.projections]} for s in adapter.sites],
        "events": [asdict(e) for e in events], **extra,
    }


def export_peft(adapter: Adapter, out_dir: Path, *, base_model: str, events: Sequence[GrowthEvent] = (),
                extra: dict[str, Any] | None = None, routers: bool = False) -> Path:
    """Write the adapter directory atomically (temporary folder, fsync, rename); `routers` adds the routers'
    weights (for runs that trained them)."""
    tensors, r_c = peft_tensors(adapter, routers)
    tmp = fresh_tmp(out_dir)
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    _write_json(tmp / "adapter_config.json", peft_config(adapter, r_c, base_model, routers))
    _write_json(tmp / RANKS_FILE, ranks_document(adapter, events, extra or {}))
    return publish_dir(tmp, out_dir)


def export_run_adapter(adapter: Adapter, out_dir: Path, *, base_model: str, events: Sequence[GrowthEvent],
                       config: RunConfig, step: int, data_format: str | None = None) -> Path:
    """A run's adapter (the final one, or a checkpoint's): the PEFT files, with the run's config and step, and the
    training data's format when known (`drlora generate` formats prompts by it)."""
    extra: dict[str, Any] = {"base_model": base_model, "steps": step, "config": config.to_dict()}
    if data_format is not None:
        extra["data_format"] = data_format
    return export_peft(adapter, out_dir, base_model=base_model, events=events, routers=config.train.train_router,
                       extra=extra)


@torch.no_grad()
def merge_stored_into_base(model: nn.Module, stored: StoredAdapter) -> None:
    """Add a stored adapter's updates (`adapter_files.read_adapter`) into a loaded base model's weights, and copy in
    the routers it trained; the model then runs as the adapted one, with no drlora code in its forward."""
    sites = {site.path: site for site in find_experts(model)}
    for stored_site in stored.sites:
        site = sites.get(stored_site.path)
        if site is None or site.num_experts != stored_site.num_experts:
            raise ValueError(f"the adapter's experts at {stored_site.path!r} ({stored_site.num_experts} experts) are "
                             f"not in this model: load the base model the adapter was trained on "
                             f"({stored.base_model or 'see adapter_config.json'})")
        device = next(site.module.parameters()).device
        for name in stored_site.projections:
            _add_delta(site, name, stored_site.delta(name).to(device))
    for path, weight in stored.routers.items():
        model.get_parameter(path).copy_(weight)


def _add_delta(site: ExpertsSite, name: str, delta: torch.Tensor) -> None:
    if site.style == "fused":
        weight: nn.Parameter = getattr(site.module, name)
        update = delta.transpose(-2, -1) if site.module.is_transposed else delta
        weight.add_(update.to(weight.dtype))
        return
    expert: nn.Module
    for e, expert in enumerate(site.module):  # type: ignore[arg-type]
        linear: nn.Linear = getattr(expert, name)
        linear.weight.add_(delta[e].to(linear.weight.dtype))


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")
