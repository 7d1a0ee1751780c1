"""Where a stored adapter's updates land in a base checkpoint's files, worked out before any weight is read.

transformers 5 holds experts fused in memory (`experts.gate_up_proj` (E, 2I, H)) but checkpoints keep their own
layout (per-expert `experts.0.gate_proj.weight`, Mixtral's `block_sparse_moe.experts.0.w1.weight`, Granite's
`input_linear.weight`, GPT-OSS fused and transposed). The updates are computed in the in-memory layout and mapped to
the checkpoint's keys with transformers' own reverse conversion (what `save_pretrained` uses); updates are linear,
so converting the updates gives the updates of the converted weights. The model is only a skeleton on the meta
device: no weight is loaded. A checkpoint that already stores the in-memory layout is used as it is.

`plan_merge` checks everything first (every key found, every shape equal), so a wrong base fails before any write;
`DeltaCache` then computes one layer's updates when a shard first needs one of its keys and drops them once all of
its keys are taken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from drlora_core.adapter_files import StoredAdapter, StoredSite
from drlora_core.families import ExpertsSite, UnsupportedModelError, find_experts

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHOWN = 5  # missing keys named in an error


class MergeError(ValueError):
    """The base checkpoint cannot take this adapter; the message says why and what to do."""


@dataclass(frozen=True)
class BaseCheckpoint:
    """A local safetensors checkpoint: its config, its shard files in order and every tensor's shard and shape."""

    directory: Path
    config: dict[str, Any]
    shards: tuple[str, ...]
    index: dict[str, Any] | None  # model.safetensors.index.json, None for a single model.safetensors
    shapes: dict[str, tuple[int, ...]]

    def __post_init__(self) -> None:
        if not self.shards:
            raise MergeError(f"{self.directory} holds no safetensors shard")


@dataclass(frozen=True)
class MergePlan:
    """The checked mapping: on-disk key -> index of the stored site whose update it receives, and the routers."""

    owner: dict[str, int]
    routers: dict[str, torch.Tensor]  # on-disk key -> full trained weight
    identity: tuple[bool, ...]  # per site: the checkpoint stores the in-memory layout (no conversion)


def open_base(directory: Path) -> BaseCheckpoint:
    """Read a base model directory's config and shard headers (no tensor data)."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise MergeError(f"{directory} has no config.json: point at the local directory of the base model")
    config = json.loads(config_path.read_text())
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise MergeError(f"the base checkpoint is {method} quantized: a LoRA cannot be merged into quantized "
                         "weights; merge into the unquantized (bf16 or fp32) checkpoint, or export the adapter")
    index: dict[str, Any] | None = None
    if (directory / INDEX_FILE).is_file():
        index = json.loads((directory / INDEX_FILE).read_text())
        shards = tuple(sorted(set(index["weight_map"].values())))
    elif (directory / SINGLE_FILE).is_file():
        shards = (SINGLE_FILE,)
    else:
        raise MergeError(f"{directory} has no {SINGLE_FILE} or {INDEX_FILE}: only safetensors checkpoints can be "
                         "merged (convert a .bin checkpoint with save_pretrained first)")
    shapes: dict[str, tuple[int, ...]] = {}
    for name in shards:
        with safe_open(str(directory / name), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return BaseCheckpoint(directory, config, shards, index, shapes)


def skeleton(base: BaseCheckpoint) -> nn.Module:
    """The base model built from its config on the meta device (no memory, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base.directory, local_files_only=True)
    except (ValueError, KeyError) as err:
        raise MergeError(f"transformers cannot read {base.directory / 'config.json'}: {err}") from err
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def plan_merge(stored: StoredAdapter, model: nn.Module, base: BaseCheckpoint) -> MergePlan:
    """Map every update and router of `stored` to the checkpoint's keys; raise `MergeError` on any mismatch."""
    trained_on, base_type = stored.ranks_doc.get("model_type"), base.config.get("model_type")
    if trained_on and base_type and trained_on != base_type:
        raise MergeError(f"wrong base model: the adapter was trained on a {trained_on} model and {base.directory} "
                         f"holds a {base_type} one; merge into the model the adapter was trained on "
                         f"({stored.base_model or 'see adapter_config.json'})")
    try:
        sites = {s.path: s for s in find_experts(model)}
    except UnsupportedModelError as err:
        raise MergeError(f"wrong base model: {err}") from err
    owner: dict[str, int] = {}
    identity = []
    for i, site in enumerate(stored.sites):
        if site.path not in sites:
            raise MergeError(f"wrong base model: the adapter adapts {site.path}, which the model in "
                             f"{base.directory} does not have; merge into the model the adapter was trained on "
                             f"({stored.base_model or 'see adapter_config.json'})")
        memory = memory_layout(site, sites[site.path])
        same = _found(memory, base)
        identity.append(same)
        keys = memory if same else _convert(model, memory)
        _require(keys, base, stored)
        owner.update(dict.fromkeys(keys, i))
    routers = dict(stored.routers)
    if not _found(routers, base):
        routers = _convert(model, routers)
    _require(routers, base, stored)
    return MergePlan(owner, routers, tuple(identity))


def memory_layout(site: StoredSite, target: ExpertsSite, delta: bool = False) -> dict[str, torch.Tensor]:
    """The site's updates keyed and shaped as the model holds them in memory. With `delta` False they are meta
    tensors of the right shape (for planning); with True, the float32 updates themselves."""
    tensors: dict[str, torch.Tensor] = {}
    for name in site.projections:
        if delta:
            update = site.delta(name)
        else:
            e, out, _ = site.lora_B[name].shape
            update = torch.empty((e, out, site.lora_A[name].shape[-1]), device="meta")
        if target.style == "fused":
            transposed = bool(target.module.is_transposed)
            tensors[f"{site.path}.{name}"] = update.transpose(-2, -1) if transposed else update
        else:
            for e in range(update.shape[0]):
                tensors[f"{site.path}.{e}.{name}.weight"] = update[e]
    return tensors


@dataclass
class DeltaCache:
    """Each site's on-disk updates, computed when first asked for and dropped when all of its keys are taken."""

    stored: StoredAdapter
    model: nn.Module
    plan: MergePlan
    _left: dict[int, set[str]] = field(default_factory=dict)
    _ready: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    _targets: dict[str, ExpertsSite] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._targets = {s.path: s for s in find_experts(self.model)}
        for key, i in self.plan.owner.items():
            self._left.setdefault(i, set()).add(key)

    def take(self, key: str) -> torch.Tensor | None:
        """The float32 update of on-disk tensor `key`, or None when the adapter does not change it."""
        i = self.plan.owner.get(key)
        if i is None:
            return None
        if i not in self._ready:
            self._ready[i] = self._compute(i)
        update = self._ready[i].pop(key)
        self._left[i].discard(key)
        if not self._left[i]:
            del self._ready[i], self._left[i]
        return update

    @property
    def held(self) -> int:
        """Sites whose updates are in memory now."""
        return len(self._ready)

    def _compute(self, i: int) -> dict[str, torch.Tensor]:
        site = self.stored.sites[i]
        memory = memory_layout(site, self._targets[site.path], delta=True)
        return memory if self.plan.identity[i] else _convert(self.model, memory)


def _convert(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from transformers.core_model_loading import revert_weight_conversion

    return dict(revert_weight_conversion(model, dict(tensors)))  # type: ignore[arg-type]


def _found(tensors: dict[str, torch.Tensor], base: BaseCheckpoint) -> bool:
    return all(base.shapes.get(k) == tuple(v.shape) for k, v in tensors.items())


def _require(tensors: dict[str, torch.Tensor], base: BaseCheckpoint, stored: StoredAdapter) -> None:
    missing = [k for k in tensors if k not in base.shapes]
    wrong = [f"{k} {tuple(v.shape)} vs {base.shapes[k]}" for k, v in tensors.items()
             if k in base.shapes and base.shapes[k] != tuple(v.shape)]
    if not missing and not wrong:
        return
    what = (f"{len(missing)} tensors it updates are missing from the checkpoint, first: "
            f"{', '.join(missing[:SHOWN])}") if missing else \
        f"{len(wrong)} tensors differ in shape (adapter vs checkpoint), first: {'; '.join(wrong[:SHOWN])}"
    raise MergeError(f"wrong base model for this adapter: {what}. Merge into the checkpoint the adapter was trained "
                     f"on ({stored.base_model or 'see adapter_config.json'}), not {base.directory}")
