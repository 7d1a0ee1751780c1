"""The DR-LoRA training loop: read it top to bottom in `train`.

One optimizer step = `grad_accum` micro-batches, each forward counted for routing frequency, then slice importance
from the gradients, clipping, AdamW, the LR schedule, the frequency EMA, and on scheduled steps a growth event.
The loss is the mean over the step's label tokens (token counts come from the host-side batch, so accumulation
needs no device sync); the one sync per step is reading the loss for the metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drlora_core import checkpoint as ckpt
from drlora_core.adapter import Adapter
from drlora_core.callbacks import (
    CallbackList,
    ExpertStats,
    GrowthEvent,
    StepMetrics,
    StopReason,
    TrainingCallback,
)
from drlora_core.config import RunConfig
from drlora_core.data import BatchStream
from drlora_core.device import Batch
from drlora_core.device import autocast as _autocast
from drlora_core.device import to_device as _to_device
from drlora_core.export import export_run_adapter
from drlora_core.growth import Plan, allocate, event_quota, grow, plan_growth, proportional_ranks
from drlora_core.loss import token_loss
from drlora_core.profile import STATIC_PROFILE_BATCHES, profile_batches, routing_counts, static_ranks
from drlora_core.router_balance import balance_loss, model_coefficient
from drlora_core.signals import Signals, saliency
from drlora_core.slice_adamw import SliceAdamW


@dataclass
class TrainResult:
    step: int
    total_steps: int
    stopped: StopReason | None
    growth_events: list[GrowthEvent]
    ranks: list[list[int]]
    stats: ExpertStats


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    index: int = 0
    trained_tokens: int = 0
    growth_events: list[GrowthEvent] = field(default_factory=list)


def total_steps_for(config: RunConfig, steps_per_epoch: int) -> int:
    t = config.train
    if t.max_steps is not None:
        return t.max_steps
    return max(1, math.ceil(t.resolved_epochs * steps_per_epoch / t.grad_accum))


def adamw(params: Any, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """The trainer's optimizer. Fused on CPU and CUDA: over the reserved r_max banks torch's default per-tensor
    AdamW was a third of a CPU step and the fused kernel ~6x faster (docs/benchmarks.md)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda") or None)


def train(model: nn.Module, adapter: Adapter, stream: BatchStream, val_batches: Sequence[Batch], config: RunConfig,
          out_dir: Path, *, base_model: str, callbacks: Sequence[TrainingCallback] = (),
          resume: ckpt.CheckpointData | None = None, device: torch.device | None = None,
          dtype: torch.dtype | None = None) -> TrainResult:
    """Train `adapter` on `model`; checkpoints go under `out_dir`, each with its PEFT adapter naming `base_model`.

    `dtype`: the compute dtype (autocast when not fp32); by default the model's own."""
    device = device or next(model.parameters()).device
    dtype = dtype or next(model.parameters()).dtype
    t, lora = config.train, config.lora
    events = CallbackList(callbacks)
    total = total_steps_for(config, stream.steps_per_epoch)
    warmup = math.ceil(t.warmup_ratio * total)
    plan = plan_growth(lora, total, warmup)
    banks = adapter.banks
    signals = Signals.zeros(banks, device)
    routers = _router_params(adapter) if t.train_router else []
    lora_params = list(adapter.lora.parameters())
    optimizer = _optimizer(adapter, routers, config, device)
    balance_coef = model_coefficient(model, t.router_aux_loss_coef)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total))
    state = _State()
    if resume is not None:
        _restore(resume, adapter, routers, signals, optimizer, scheduler, state)
    elif lora.method == "static" and lora.static_profile == "frequency":
        _set_static_ranks(model, adapter, stream, config, device, dtype)
    _set_router_trainable(routers, state.step >= warmup)
    events.on_start(total, adapter.ranks(), state.step)

    stopped: StopReason | None = None
    while state.step < total:
        model.train()
        started = time.perf_counter()
        batches = [_next_batch(stream, state) for _ in range(t.grad_accum)]
        label_counts = [_label_count(b) for b in batches]
        label_tokens = sum(label_counts)
        loss_sum = torch.zeros((), device=device)
        balancing = bool(routers) and state.step >= warmup and balance_coef > 0
        for batch, count in zip(batches, label_counts, strict=True):
            batch = _to_device(batch, device)
            with adapter.routing.training_forward(batch["attention_mask"]), _autocast(device, dtype), \
                    balance_loss(model, balancing) as aux:
                loss = token_loss(model, batch, "sum", count) / max(label_tokens, 1)
            (loss + balance_coef * sum(aux, torch.zeros((), device=device)) / t.grad_accum).backward()
            loss_sum += loss.detach()
        if plan.steps or lora.method == "dr_lora":
            signals.update_importance(banks, lora.beta_g)
        grad_norm = torch.nn.utils.clip_grad_norm_(lora_params + routers, t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        signals.update_frequency(adapter.routing.take_counts(), lora.beta_f)
        state.step += 1
        _set_router_trainable(routers, state.step >= warmup)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        state.trained_tokens += tokens
        if state.step in plan.steps:
            new_events = _growth_event(adapter, signals, plan, state.step, optimizer, config)
            state.growth_events.extend(new_events)
            if new_events:
                events.on_growth(new_events, expert_stats(adapter, signals, state.step, config))
        loss_value, norm_value = torch.stack([loss_sum, grad_norm.to(loss_sum)]).tolist()  # one host sync
        elapsed = max(time.perf_counter() - started, 1e-9)
        events.on_step(StepMetrics(state.step, total, loss_value, float(scheduler.get_last_lr()[0]), tokens / elapsed,
                                  state.trained_tokens, norm_value))
        if val_batches and (state.step == total or (t.eval_every and state.step % t.eval_every == 0)):
            events.on_eval(state.step, evaluate(model, adapter, val_batches, device, dtype))
        if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.step < total:
            _save(out_dir, base_model, adapter, routers, signals, optimizer, scheduler, state, config, events)
        stopped = events.should_stop(state.step)
        if stopped is not None:
            if stopped in ("pause", "shutdown") and state.step < total:
                _save(out_dir, base_model, adapter, routers, signals, optimizer, scheduler, state, config, events)
            break
    stats = expert_stats(adapter, signals, state.step, config)
    events.on_end(state.step, stats, stopped)
    return TrainResult(state.step, total, stopped, state.growth_events, adapter.ranks(), stats)


@torch.no_grad()
def evaluate(model: nn.Module, adapter: Adapter, batches: Sequence[Batch], device: torch.device,
             dtype: torch.dtype = torch.float32) -> float:
    """Mean loss per label token; routing is not counted (the trainer only counts training forwards)."""
    model.eval()
    total = torch.zeros((), device=device)
    count = 0
    for batch in batches:
        labels = _label_count(batch)
        count += labels
        with _autocast(device, dtype):
            total += token_loss(model, _to_device(batch, device), "sum", labels)
    return float(total) / max(count, 1)


def expert_stats(adapter: Adapter, signals: Signals, step: int, config: RunConfig) -> ExpertStats:
    banks = adapter.banks
    importance = signals.expert_importance(banks)
    frequency, sal = [], []
    for layer, bank in enumerate(banks):
        n = bank.num_experts
        f = signals.frequency[layer, :n].tolist()
        total = sum(f)
        frequency.append([v / total if total > 0 else 0.0 for v in f])
        sal.append(saliency(f, importance[layer], bank.rank_list, config.lora.gamma, config.lora.saliency_signal))
    return ExpertStats(step, frequency, importance, sal, adapter.ranks())


def _growth_event(adapter: Adapter, signals: Signals, plan: Plan, step: int, optimizer: torch.optim.Optimizer,
                  config: RunConfig) -> list[GrowthEvent]:
    stats = expert_stats(adapter, signals, step, config)
    events_left = plan.events_left(step - 1)
    grown: list[GrowthEvent] = []
    r_init, r_target, r_max = config.lora.ranks
    for layer, bank in enumerate(adapter.banks):
        old = list(bank.rank_list)
        if config.lora.method == "static":  # static_profile "saliency": the whole budget at once, by f*g
            new = proportional_ranks(stats.saliency[layer], len(old) * r_target, r_init, r_max)
        else:
            quota = event_quota(old, r_target, events_left)
            new = allocate(stats.saliency[layer], old, quota, plan.cap_at(step, r_max), r_max)
        grow(bank, new, optimizer)
        grown.extend(GrowthEvent(step, layer, e, old[e], new[e], stats.saliency[layer][e],
                                 stats.frequency[layer][e], stats.importance[layer][e])
                     for e in range(len(old)) if new[e] > old[e])
    if grown:
        signals.reset_importance()
    return grown


def _set_static_ranks(model: nn.Module, adapter: Adapter, stream: BatchStream, config: RunConfig,
                      device: torch.device, dtype: torch.dtype) -> None:
    """`static`: ranks proportional to routing frequency measured on a pass over the training data."""
    batches = profile_batches(stream, STATIC_PROFILE_BATCHES)
    counts = routing_counts(model, adapter, batches, device, dtype)
    experts = [bank.num_experts for bank in adapter.banks]
    for bank, ranks in zip(adapter.banks, static_ranks(counts, experts, config.lora), strict=True):
        bank.set_ranks(ranks)


def _optimizer(adapter: Adapter, routers: list[nn.Parameter], config: RunConfig,
               device: torch.device) -> torch.optim.Optimizer:
    """Fused AdamW over the banks and routers, or with `per_slice_adam_steps` `SliceAdamW`, whose bias correction
    counts each rank slice's own steps (A's slices along dim 1, B's along dim 2)."""
    t = config.train
    if not config.lora.per_slice_adam_steps:
        return adamw([{"params": list(adapter.lora.parameters())}, {"params": routers}], t.resolved_lr,
                     t.weight_decay, device)
    a_params = [bank.lora_A[n] for bank in adapter.banks for n in bank.projection_names]
    b_params = [bank.lora_B[n] for bank in adapter.banks for n in bank.projection_names]
    sliced = {id(p) for p in a_params + b_params}
    others = [p for p in adapter.lora.parameters() if id(p) not in sliced]
    return SliceAdamW([{"params": a_params, "slice_dim": 1}, {"params": b_params, "slice_dim": 2},
                       {"params": others + routers}], t.resolved_lr, t.weight_decay)


def _router_params(adapter: Adapter) -> list[nn.Parameter]:
    """The routers' weights, made fp32: they are the master copy AdamW updates (at lr 2e-5 most steps are below
    bf16's resolution); autocast still runs the router's matmul in the compute dtype."""
    params: list[nn.Parameter] = []
    for site in adapter.sites:
        if site.router is None:
            raise ValueError(f"train_router is set but no router was found beside {site.path}")
        site.router.float()
        params.extend(site.router.parameters())
    return params


def _set_router_trainable(routers: list[nn.Parameter], trainable: bool) -> None:
    for p in routers:
        p.requires_grad_(trainable)


def _linear_schedule(warmup: int, total: int):  # type: ignore[no-untyped-def]
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _next_batch(stream: BatchStream, state: _State) -> Batch:
    batch = stream.batch_at(state.epoch, state.index)
    state.epoch, state.index = stream.next_position(state.epoch, state.index)
    return batch


def _label_count(batch: Batch) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def _save(out_dir: Path, base_model: str, adapter: Adapter, routers: list[nn.Parameter], signals: Signals,
          optimizer: torch.optim.Optimizer, scheduler: Any, state: _State, config: RunConfig,
          events: TrainingCallback) -> None:
    adapter_tensors = dict(adapter.lora.state_dict())
    adapter_tensors.update({f"router.{i}": p.data for i, p in enumerate(routers)})
    signal_tensors = {"frequency": signals.frequency, "rng.cpu": torch.get_rng_state()}
    signal_tensors.update({f"importance.{i}": imp for i, imp in enumerate(signals.importance)})
    if torch.cuda.is_available():
        signal_tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    opt_tensors, opt_meta = ckpt.optimizer_to_tensors(optimizer)
    meta = {
        "config": config.to_dict(), "step": state.step, "epoch": state.epoch, "index": state.index,
        "trained_tokens": state.trained_tokens, "growth_events": [asdict(e) for e in state.growth_events],
        "ranks": adapter.ranks(), "scheduler": scheduler.state_dict(), "optimizer": opt_meta,
    }
    data = ckpt.CheckpointData({"adapter": adapter_tensors, "signals": signal_tensors, "optimizer": opt_tensors}, meta)
    path = ckpt.save_checkpoint(out_dir, state.step, data, lambda folder: export_run_adapter(
        adapter, folder, base_model=base_model, events=state.growth_events, config=config, step=state.step))
    events.on_checkpoint(state.step, path)


def _restore(data: ckpt.CheckpointData, adapter: Adapter, routers: list[nn.Parameter], signals: Signals,
             optimizer: torch.optim.Optimizer, scheduler: Any, state: _State) -> None:
    meta, tensors = data.meta, data.tensors
    for layer, ranks in enumerate(meta["ranks"]):
        adapter.bank(layer).set_ranks(ranks)
    bank_tensors = {k: v for k, v in tensors["adapter"].items() if not k.startswith("router.")}
    adapter.lora.load_state_dict(bank_tensors)
    with torch.no_grad():
        for i, p in enumerate(routers):
            p.copy_(tensors["adapter"][f"router.{i}"])
    sig = tensors["signals"]
    signals.frequency.copy_(sig["frequency"])
    for i, imp in enumerate(signals.importance):
        imp.copy_(sig[f"importance.{i}"])
    ckpt.optimizer_from_tensors(optimizer, tensors["optimizer"], meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(sig["rng.cpu"])
    if torch.cuda.is_available():
        cuda_states = [sig[k] for k in sorted(k for k in sig if k.startswith("rng.cuda."))]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    state.step, state.epoch, state.index = meta["step"], meta["epoch"], meta["index"]
    state.trained_tokens = meta["trained_tokens"]
    state.growth_events = [GrowthEvent(**e) for e in meta["growth_events"]]


