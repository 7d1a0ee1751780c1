"""Attach per-expert LoRA banks to a model's experts and route its experts forward through them.

The banks live in one `nn.ModuleList` owned by the `Adapter`, not inside the Hugging Face model, so the model's own
state dict, weights and save format stay untouched; each experts module only carries an unregistered `_drlora`
link to its bank. Base weights are frozen here; the trainer decides about the router.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from drlora_core import experts_forward
from drlora_core.bank import LoraBank
from drlora_core.config import LoraConfig
from drlora_core.families import ExpertsSite, find_experts
from drlora_core.routing import RoutingState


@dataclass
class SiteRuntime:
    layer: int
    bank: LoraBank
    routing: RoutingState
    impl: str


@dataclass
class Adapter:
    model: nn.Module
    sites: list[ExpertsSite]
    lora: nn.ModuleList  # the banks as one module: parameters(), state_dict(), train()/eval(), .to()
    routing: RoutingState
    config: LoraConfig
    previous_impl: str | None
    hooks: list[Any] = field(default_factory=list)

    @property
    def banks(self) -> list[LoraBank]:
        return list(self.lora)  # type: ignore[arg-type]

    def ranks(self) -> list[list[int]]:
        return [list(bank.rank_list) for bank in self.banks]

    def bank(self, layer: int) -> LoraBank:
        return self.banks[layer]

    def detach(self) -> None:
        """Give the model back exactly as it was before `attach` (the banks stay with this object)."""
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()
        for site in self.sites:
            site.module.__dict__.pop("_drlora", None)
        if self.previous_impl is not None and hasattr(self.model, "set_experts_implementation"):
            self.model.set_experts_implementation(self.previous_impl)  # type: ignore[operator]


def attach(model: nn.Module, config: LoraConfig, ranks: list[list[int]] | None = None,
           impl: str = "grouped") -> Adapter:
    """Freeze the model, give every routed expert a LoRA bank at `ranks`: by default r_target everywhere for
    `lora`, r_init for `dr_lora` (and for `static` until the trainer's profiling pass sets its ranks)."""
    sites = find_experts(model)
    if any(getattr(s.module, "_drlora", None) is not None for s in sites):
        raise ValueError("model already has DR-LoRA banks attached; detach the first adapter before attaching again")
    if ranks is None:
        start = config.ranks[1] if config.method == "lora" else config.ranks[0]
        ranks = [[start] * s.num_experts for s in sites]
    if [len(r) for r in ranks] != [s.num_experts for s in sites]:
        raise ValueError("rank map does not match the model's layers x experts")
    param = next(model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    num_experts = max(s.num_experts for s in sites)
    routing = RoutingState(torch.zeros(len(sites), num_experts, device=param.device),
                           weighted=config.weight_frequency_by_routing)
    lora = nn.ModuleList(
        LoraBank(s.num_experts, s.projections, config.ranks[2], r, config.scaling, config.dropout)
        for s, r in zip(sites, ranks, strict=True)).to(param.device)
    previous = None
    if any(s.style == "fused" for s in sites):
        experts_forward.register()
        previous = str(model.config._experts_implementation)  # type: ignore[union-attr]
        model.set_experts_implementation(experts_forward.IMPLEMENTATION_NAME)  # type: ignore[operator]
    adapter = Adapter(model, sites, lora, routing, config, previous)
    for site, bank in zip(sites, adapter.banks, strict=True):
        link = SiteRuntime(site.layer, bank, routing, impl)
        site.module.__dict__["_drlora"] = link  # a plain attribute: not a registered submodule
        if site.style == "module_list":
            adapter.hooks.extend(_hook_module_list(model, site, link))
    return adapter


def _hook_module_list(model: nn.Module, site: ExpertsSite, link: SiteRuntime) -> list[Any]:
    """Module-list experts: LoRA as forward hooks on each expert's linears; routing from the router's logits."""
    handles = []
    expert: nn.Module
    for expert_idx, expert in enumerate(site.module):  # type: ignore[arg-type]
        for projection in site.projections:
            linear = getattr(expert, projection.name)
            handles.append(linear.register_forward_hook(_expert_hook(link, expert_idx, projection.name)))
    if site.router is None:
        raise ValueError(f"experts at {site.path} have no 'gate' or 'router' linear beside them to read routing from")
    top_k = _top_k(model, site)
    handles.append(site.router.register_forward_hook(_router_hook(link, top_k)))
    return handles


def _expert_hook(link: SiteRuntime, expert_idx: int, name: str):  # type: ignore[no-untyped-def]
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        bank = link.bank
        rank = bank.rank_list[expert_idx]
        a = bank.lora_A[name][expert_idx, :rank]
        b = bank.lora_B[name][expert_idx, :, :rank]
        x = bank.dropout(inputs[0], module.training).to(a.dtype)
        return output + ((x @ a.T) @ b.T * bank.scaling).to(output.dtype)

    return hook


def _router_hook(link: SiteRuntime, top_k: int):  # type: ignore[no-untyped-def]
    def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], logits: Any) -> None:
        logits = logits[0] if isinstance(logits, tuple) else logits
        flat = logits.reshape(-1, logits.shape[-1])
        link.routing.record(link.layer, flat.topk(top_k, dim=-1).indices, None)

    return hook


def _top_k(model: nn.Module, site: ExpertsSite) -> int:
    parent_path = site.path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    for owner in (parent, getattr(model, "config", None)):
        for name in ("top_k", "num_experts_per_tok", "moe_top_k"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    raise ValueError(f"cannot tell how many experts each token uses at {site.path}; set config.num_experts_per_tok")
