"""Read a stored drlora adapter directory (the PEFT files `export.export_peft` writes) back into per-expert factors.

Exports in other layouts, dtypes and ranks, merged models and `drlora generate` all start from here, so none of them
needs the training objects: only the directory. Each expert's factors are cut to its true rank (from
`drlora_ranks.json`), with the LoRA scaling already folded into B, so `delta = B @ A` is the expert's update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

RANKS_FILE = "drlora_ranks.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterFilesError(ValueError):
    """The directory is not a complete drlora adapter; the message names what is missing."""


@dataclass(frozen=True)
class StoredSite:
    """One MoE layer's LoRA: per projection, A (E, r_c, in) and B (E, out, r_c) zero beyond each expert's rank."""

    layer: int
    path: str
    style: Literal["fused", "module_list"]
    projections: tuple[str, ...]
    ranks: tuple[int, ...]
    lora_A: dict[str, torch.Tensor]
    lora_B: dict[str, torch.Tensor]

    @property
    def num_experts(self) -> int:
        return len(self.ranks)

    def factors(self, name: str, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (r_e, in), B (out, r_e)) of one expert's projection, at its own rank r_e."""
        r = self.ranks[expert]
        return self.lora_A[name][expert, :r], self.lora_B[name][expert, :, :r]

    def delta(self, name: str) -> torch.Tensor:
        """Dense (E, out, in) update of one projection, in float32."""
        return torch.bmm(self.lora_B[name].float(), self.lora_A[name].float())


@dataclass(frozen=True)
class StoredAdapter:
    sites: tuple[StoredSite, ...]
    routers: dict[str, torch.Tensor]  # full router weights keyed by model path (runs that trained the router)
    config: dict[str, Any]  # adapter_config.json
    ranks_doc: dict[str, Any]  # drlora_ranks.json

    @property
    def base_model(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "")

    @property
    def max_rank(self) -> int:
        return max(max(s.ranks) for s in self.sites)


def adapter_dir(src: Path) -> Path:
    """`src` itself, or its adapter/ folder when `src` is a `drlora train` output directory."""
    nested = src / "adapter"
    return nested if not (src / CONFIG_FILE).is_file() and nested.is_dir() else src


def read_adapter(directory: Path) -> StoredAdapter:
    """Load `directory` (adapter_config.json, adapter_model.safetensors, drlora_ranks.json) on the CPU."""
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE, RANKS_FILE) if not (directory / n).is_file()]
    if missing:
        raise AdapterFilesError(f"{directory} is not a drlora adapter directory: {', '.join(missing)} missing "
                                "(download the job's adapter, or point at a run's adapter/ folder)")
    config = json.loads((directory / CONFIG_FILE).read_text())
    doc = json.loads((directory / RANKS_FILE).read_text())
    layout = (doc.get("export") or {}).get("layout", "fused")
    if layout != "fused":
        raise AdapterFilesError(f"{directory} is a {layout} export, which drlora does not read back: use the job's "
                                "adapter as trained (or a fused export of it)")
    tensors = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    prefix = "base_model.model."
    sites = tuple(_read_site(tensors, prefix, layer, ranks)
                  for layer, ranks in zip(doc["layers"], doc["ranks"], strict=True))
    used = {k for s in sites for k in _site_keys(prefix, s)}
    routers = {k[len(prefix):]: v for k, v in tensors.items() if k not in used and "lora_" not in k}
    return StoredAdapter(sites, routers, config, doc)


def _read_site(tensors: dict[str, torch.Tensor], prefix: str, layer: dict[str, Any],
               ranks: list[int]) -> StoredSite:
    path, names, experts = layer["path"], tuple(layer["projections"]), int(layer["num_experts"])
    fused = f"{prefix}{path}.{names[0]}.lora_A.weight" not in tensors and \
        f"{prefix}{path}.0.{names[0]}.lora_A.weight" not in tensors
    lora_a: dict[str, torch.Tensor] = {}
    lora_b: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        if fused:
            key = f"{prefix}{path}." + "base_layer." * (len(names) - 1 - i)
            a, b = _get(tensors, key + "lora_A.weight"), _get(tensors, key + "lora_B.weight")
            r_c = a.shape[0] // experts
            lora_a[name] = a.reshape(experts, r_c, a.shape[-1]).float()
            lora_b[name] = b.reshape(b.shape[0], r_c, experts).permute(2, 0, 1).float().contiguous()
        else:
            lora_a[name] = torch.stack([_get(tensors, f"{prefix}{path}.{e}.{name}.lora_A.weight")
                                        for e in range(experts)]).float()
            lora_b[name] = torch.stack([_get(tensors, f"{prefix}{path}.{e}.{name}.lora_B.weight")
                                        for e in range(experts)]).float()
    return StoredSite(int(layer["layer"]), path, "fused" if fused else "module_list", names, tuple(ranks),
                      lora_a, lora_b)


def _site_keys(prefix: str, site: StoredSite) -> list[str]:
    n = len(site.projections)
    if site.style == "fused":
        return [f"{prefix}{site.path}." + "base_layer." * (n - 1 - i) + f"lora_{ab}.weight"
                for i in range(n) for ab in "AB"]
    return [f"{prefix}{site.path}.{e}.{name}.lora_{ab}.weight"
            for e in range(site.num_experts) for name in site.projections for ab in "AB"]


def _get(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise AdapterFilesError(f"adapter_model.safetensors has no tensor {key!r}: the file does not match its "
                                "drlora_ranks.json")
    return tensors[key]
