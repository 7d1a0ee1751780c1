"""The speed benchmark's variants: one model copy each (sharing the frozen base weights), one training step each.

`base` is the floor (the frozen model's forward and backward, gradients flowing to the input embeddings);
`dr_lora` runs a heterogeneous rank map frozen during timing, `dr_lora+growth` the same map plus the method's
bookkeeping every step and a growth event every few steps; `lora@r` our engine at a uniform rank; `peft@r` PEFT's
`target_parameters` LoRA on transformers' fastest experts implementation. No LoRA dropout anywhere: PEFT's
`target_parameters` refuses it, and the comparison must run the same arithmetic.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.shapes import ModelSpec, impose_routing
from drlora_core.adapter import Adapter, attach
from drlora_core.config import LoraConfig, RunConfig
from drlora_core.families import find_experts
from drlora_core.growth import allocate, grow
from drlora_core.signals import Signals
from drlora_core.trainer import adamw, expert_stats, token_loss

Batch = dict[str, torch.Tensor]
TRANSFORMERS_IMPLS: tuple[str, ...] = ("grouped_mm", "batched_mm", "eager")  # fastest first
LR = 1e-4


def optimizer_for(params: Any) -> torch.optim.Optimizer:
    """Every variant, PEFT's included, gets the trainer's own optimizer (fused AdamW on CPU and CUDA)."""
    params = list(params)
    return adamw(params, LR, 0.0, params[0].device)


@dataclass
class Variant:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    experts_impl: str
    lora_rank: str  # what the LoRA runs at, for the table
    adapter: Adapter | None = None
    growth: GrowthDriver | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + (
            list(self.adapter.lora.parameters()) if self.adapter is not None else [])


@dataclass
class GrowthDriver:
    """The trainer's per-step saliency bookkeeping and, every `every` steps, a full growth event (stats read back,
    allocation, `grow` with fresh A rows, zero B columns and zeroed AdamW moments, importance reset). The event's
    rank changes are then undone so every timed step runs the same rank map: its work is measured, not its effect."""

    adapter: Adapter
    config: LoraConfig
    every: int
    signals: Signals
    step: int = 0
    events: int = 0

    def after_backward(self) -> None:
        self.signals.update_importance(self.adapter.banks, self.config.beta_g)

    def after_optimizer(self, optimizer: torch.optim.Optimizer) -> bool:
        self.signals.update_frequency(self.adapter.routing.take_counts(), self.config.beta_f)
        self.step += 1
        if self.step % self.every:
            return False
        self.event(optimizer)
        return True

    def event(self, optimizer: torch.optim.Optimizer) -> None:
        c = self.config
        stats = expert_stats(self.adapter, self.signals, self.step, RunConfig(lora=c))
        r_init, _, r_max = c.ranks
        cap = max(1, math.ceil(c.grow_frac * (r_max - r_init)))
        for layer, bank in enumerate(self.adapter.banks):
            old = list(bank.rank_list)
            # one slice per expert on average: the paper's schedule adds N * 8 slices over ~18 events
            new = allocate(stats.saliency[layer], old, bank.num_experts, cap, r_max)
            grow(bank, new, optimizer)
            bank.set_ranks(old)
        self.signals.reset_importance()
        self.events += 1


def clone_sharing_weights(model: nn.Module) -> nn.Module:
    """A new module tree whose parameters and buffers are the original's tensors: adapters attach per copy while
    the frozen base weights exist once (real shapes would not fit six times on one GPU)."""
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def lora_config(spec: ModelSpec, method: str = "dr_lora") -> LoraConfig:
    r = spec.ranks
    return LoraConfig(method=method, r_init=r.r_init, r_target=r.r_target, r_max=r.r_max,  # type: ignore[arg-type]
                      dropout=0.0)


def set_fastest_impl(model: nn.Module, probe: Callable[[nn.Module], None]) -> str:
    """Switch to transformers' fastest experts implementation that runs here; returns its name."""
    if not hasattr(model, "set_experts_implementation"):
        return "module"
    for impl in TRANSFORMERS_IMPLS:
        try:
            model.set_experts_implementation(impl)  # type: ignore[operator]
            probe(model)
            return impl
        except Exception:  # an implementation this torch / device lacks raises on switch or first use
            continue
    raise RuntimeError("no transformers experts implementation ran on this model")


def make_base(model: nn.Module, probe: Callable[[nn.Module], None]) -> Variant:
    impl = set_fastest_impl(model, probe)
    for p in model.parameters():
        p.requires_grad_(False)
    # the floor still needs a backward through every layer: make the embeddings' output require grad
    embed = model.get_input_embeddings()  # type: ignore[operator]
    embed.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    return Variant("base", model, None, impl, "-")


def make_drlora(name: str, model: nn.Module, config: LoraConfig, ranks: list[list[int]],
                growth_every: int | None = None) -> Variant:
    adapter = attach(model, config, ranks=ranks)
    optimizer = optimizer_for(adapter.lora.parameters())
    compute = sorted({b.compute_rank for b in adapter.banks})
    label = f"{min(min(r) for r in ranks)}..{max(max(r) for r in ranks)} (computes {compute[-1]})" \
        if any(len(set(r)) > 1 for r in ranks) else str(ranks[0][0])
    variant = Variant(name, model, optimizer, "drlora", label, adapter=adapter,
                      extra={"compute_rank": compute[-1], "mean_rank": _mean(ranks)})
    if growth_every is not None:
        device = next(model.parameters()).device
        variant.growth = GrowthDriver(adapter, config, growth_every, Signals.zeros(adapter.banks, device))
    return variant


def make_peft(model: nn.Module, rank: int, probe: Callable[[nn.Module], None]) -> Variant:
    import peft

    impl = set_fastest_impl(model, probe)
    leaf_names = sorted({f"{s.path.rpartition('.')[2]}.{p.name}" for s in find_experts(model)
                         for p in s.projections})
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=[], target_parameters=leaf_names,
                             lora_dropout=0.0)
    wrapped = peft.get_peft_model(model, config)  # type: ignore[arg-type]
    params = [p for p in wrapped.parameters() if p.requires_grad]
    return Variant(f"peft@{rank}", wrapped, optimizer_for(params), impl, str(rank))


def build_variants(spec: ModelSpec, device: torch.device, dtype: torch.dtype,
                   growth_every: int) -> tuple[list[Variant], Batch]:
    """The six variants on copies of one model, and the batch they all train on."""
    torch.manual_seed(0)
    original = spec.build(device, dtype)
    config: Any = original.config
    vocab = int(config.vocab_size)
    batch = random_batch(vocab, spec.batch, spec.seq_len, device)
    impose_routing(original, spec.routing)  # hooks are copied along with the modules
    layers = len(find_experts(original))
    experts = find_experts(original)[0].num_experts
    r = spec.ranks
    config = lora_config(spec)

    def probe(m: nn.Module) -> None:
        with torch.no_grad():
            token_loss(m, {k: v[:1, :8] for k, v in batch.items()})

    hetero = r.hetero_ranks(layers, experts)
    variants = [
        make_base(clone_sharing_weights(original), probe),
        make_drlora("dr_lora", clone_sharing_weights(original), config, hetero),
        make_drlora("dr_lora+growth", clone_sharing_weights(original), config, hetero, growth_every),
        make_drlora(f"lora@{r.r_target}", clone_sharing_weights(original), lora_config(spec, "lora"),
                    [[r.r_target] * experts for _ in range(layers)]),
        make_drlora(f"lora@{r.r_max}", clone_sharing_weights(original), lora_config(spec, "lora"),
                    [[r.r_max] * experts for _ in range(layers)]),
        make_peft(clone_sharing_weights(original), r.r_target, probe),
    ]
    return variants, batch


def random_batch(vocab: int, batch: int, seq_len: int, device: torch.device, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": ids.to(device)}


def train_step(v: Variant, batch: Batch) -> bool:
    """One optimizer step: forward, backward, AdamW. Returns whether a growth event ran."""
    v.model.train()
    counting = v.growth.adapter.routing.training_forward(batch["attention_mask"]) if v.growth else nullcontext()
    with counting:
        loss = token_loss(v.model, batch, reduction="sum") / batch["labels"].numel()
    loss.backward()
    if v.growth is not None:
        v.growth.after_backward()
    event = False
    if v.optimizer is not None:
        v.optimizer.step()
        v.optimizer.zero_grad(set_to_none=True)
        if v.growth is not None:
            event = v.growth.after_optimizer(v.optimizer)
    return event


def _mean(ranks: list[list[int]]) -> float:
    flat = [x for row in ranks for x in row]
    return sum(flat) / len(flat)
