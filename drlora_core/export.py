"""Write a trained adapter as a PEFT adapter directory (loadable without drlora). Merged models are written from
that directory by `merge_stream.export_merged`.

The adapter is first turned into stored per-expert factors (`adapter_files.StoredAdapter`: each expert's A and B
zero beyond its rank, our scaling folded into B), then written by `export_layouts.write_adapter`, the one writer of
the PEFT key format (its docstring describes the layouts). A router trained with `train_router` goes in as a PEFT
`modules_to_save` module. `drlora_ranks.json` beside them keeps the true rank map, the model type and every growth
event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drlora_core.adapter import Adapter
from drlora_core.adapter_files import RANKS_FILE, StoredAdapter, StoredSite
from drlora_core.callbacks import GrowthEvent
from drlora_core.config import RunConfig
from drlora_core.export_layouts import write_adapter
from drlora_core.export_options import ExportOptions
from drlora_core.families import ExpertsSite, find_experts

__all__ = ["RANKS_FILE", "export_peft", "export_run_adapter", "merge_stored_into_base",
           "ranks_document", "stored_adapter"]


@torch.no_grad()
def stored_adapter(adapter: Adapter, *, base_model: str, events: Sequence[GrowthEvent] = (),
                   extra: dict[str, Any] | None = None, routers: bool = False) -> StoredAdapter:
    """The adapter's factors on the CPU, as `adapter_files.read_adapter` would read them back from its export."""
    r_c = max(max(r) for r in adapter.ranks())
    sites = []
    for site, bank, ranks in zip(adapter.sites, adapter.banks, adapter.ranks(), strict=True):
        mask = bank.slice_mask()[:, :r_c].float()
        lora_a = {n: (bank.lora_A[n][:, :r_c].float() * mask[:, :, None]).cpu() for n in bank.projection_names}
        lora_b = {n: (bank.lora_B[n][:, :, :r_c].float() * mask[:, None, :] * bank.scaling).cpu()
                  for n in bank.projection_names}
        sites.append(StoredSite(site.layer, site.path, site.style, tuple(bank.projection_names), tuple(ranks),
                                lora_a, lora_b))
    router_weights = {f"{s.router_path}.{pname}": p.detach().float().cpu()
                      for s in adapter.sites if routers and s.router is not None
                      for pname, p in s.router.named_parameters()}
    is_hf = hasattr(adapter.model, "generation_config") or hasattr(adapter.model, "can_generate")
    config = {"task_type": "CAUSAL_LM" if is_hf else None, "base_model_name_or_path": base_model,
              "modules_to_save": list(dict.fromkeys(str(s.router_path).rpartition(".")[2] for s in adapter.sites))
              if routers else None}
    return StoredAdapter(tuple(sites), router_weights, config, ranks_document(adapter, events, extra or {}))


def ranks_document(adapter: Adapter, events: Sequence[GrowthEvent], extra: dict[str, Any]) -> dict[str, Any]:
    cfg = adapter.config
    model_type = getattr(getattr(adapter.model, "config", None), "model_type", None)
    return {
        "method": cfg.method, "r_init": cfg.r_init, "r_target": cfg.r_target, "r_max": cfg.r_max,
        "scaling": cfg.scaling, "model_type": model_type if isinstance(model_type, str) else None,
        "ranks": adapter.ranks(),
        "layers": [{"layer": s.layer, "path": s.path, "num_experts": s.num_experts,
                    "projections": [p.name for p in s.projections]} for s in adapter.sites],
        "events": [asdict(e) for e in events], **extra,
    }


def export_peft(adapter: Adapter, out_dir: Path, *, base_model: str, events: Sequence[GrowthEvent] = (),
                extra: dict[str, Any] | None = None, routers: bool = False) -> Path:
    """Write the adapter directory atomically (temporary folder, fsync, rename) in the fused layout; `routers` adds
    the routers' weights (for runs that trained them)."""
    stored = stored_adapter(adapter, base_model=base_model, events=events, extra=extra, routers=routers)
    return write_adapter(stored, out_dir, ExportOptions())


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
