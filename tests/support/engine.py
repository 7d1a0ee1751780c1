"""Shared builders for the engine tests: tiny models with a random, heterogeneous adapter."""

from __future__ import annotations

import copy

import torch

from drlora_core.adapter import Adapter, attach
from drlora_core.config import LoraConfig
from drlora_core.families import ExpertsSite, find_experts
from drlora_core.tiny import build_tiny

SMALL = LoraConfig(r_init=2, r_target=4, r_max=8, growth_interval=2, dropout=0.0)


def hetero_ranks(model: torch.nn.Module, r_max: int = 8) -> list[list[int]]:
    return [[1 + (e * 3 + layer) % r_max for e in range(site.num_experts)]
            for layer, site in enumerate(find_experts(model))]


def randomise_b(adapter: Adapter, std: float = 0.3) -> None:
    with torch.no_grad():
        for bank in adapter.banks:
            for b in bank.lora_B.values():
                b.normal_(0.0, std)


def adapted(family: str, config: LoraConfig = SMALL, random_b: bool = True,
            impl: str = "grouped") -> tuple[torch.nn.Module, Adapter]:
    model = build_tiny(family)
    adapter = attach(model, config, ranks=hetero_ranks(model, config.r_max), impl=impl)
    if random_b:
        randomise_b(adapter)
    return model, adapter


@torch.no_grad()
def merge_into_base(adapter: Adapter) -> None:
    """The plain reference merge: every expert's LoRA update added into the in-memory base weights (then detach
    the adapter to run the merged model). The engine's merged export streams the checkpoint instead
    (drlora_core.merge_stream); this one stays here as the independent reference the tests compare against."""
    for site, bank in zip(adapter.sites, adapter.banks, strict=True):
        for name in bank.projection_names:
            _add_delta(site, name, bank.delta_weight(name))  # (E, out, in)


def _add_delta(site: ExpertsSite, name: str, delta: torch.Tensor) -> None:
    if site.style == "fused":
        weight = getattr(site.module, name)
        weight.add_((delta.transpose(-2, -1) if site.module.is_transposed else delta).to(weight.dtype))
        return
    for e, expert in enumerate(site.module):  # type: ignore[arg-type,var-annotated]
        linear = getattr(expert, name)
        linear.weight.add_(delta[e].to(linear.weight.dtype))


def reference_logits(model: torch.nn.Module, adapter: Adapter, ids: torch.Tensor) -> torch.Tensor:
    """The plain per-expert reference: LoRA merged into a copy's weights, run by the family's own eager code."""
    twin = copy.deepcopy(model)
    twin_adapter = Adapter(twin, find_experts(twin), adapter.lora, adapter.routing, adapter.config, None)
    merge_into_base(twin_adapter)
    for site in twin_adapter.sites:
        site.module.__dict__.pop("_drlora", None)
    for hook_owner in twin.modules():  # deepcopy carried the module-list hooks: drop them on the twin
        hook_owner._forward_hooks.clear()
    if hasattr(twin, "set_experts_implementation"):
        twin.set_experts_implementation("eager")
    with torch.no_grad():
        return twin(input_ids=ids).logits


def logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def random_examples(n: int = 48, seed: int = 1, vocab: int = 128) -> list:
    """Token sequences with a 3-token unlabelled prompt, for trainer tests without a tokenizer."""
    from drlora_core.data import Example

    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(6, 16, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        examples.append(Example(ids, [-100] * 3 + ids[3:]))
    return examples


def run_config(method: str = "dr_lora", steps: int = 16, **train: object):
    from drlora_core.config import LoraConfig, RunConfig, TrainConfig

    lora = LoraConfig(method=method, r_init=2, r_target=4, r_max=8, growth_interval=3, dropout=0.1)  # type: ignore[arg-type]
    settings = {"gradient_checkpointing": False, **train}
    return RunConfig(lora, TrainConfig(max_steps=steps, batch_size=4, lr=5e-3, warmup_ratio=0.1, seed=0,
                                       **settings))  # type: ignore[arg-type]
