"""When and where ranks grow (DRLORA.md, 'Growth schedule and budget'), and the growth operation itself.

The allocator is plain arithmetic over host lists; `grow` applies a decision to the banks and the optimizer
without changing the model's function (new B columns are zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from drlora_core.bank import LoraBank, init_a_
from drlora_core.config import ConfigError, LoraConfig
from drlora_core.schedule import growth_start, growth_steps
from drlora_core.slice_adamw import SLICE_STEP


@dataclass(frozen=True)
class Plan:
    """The growth plan of a run: event steps and the per-event cap per expert."""

    steps: tuple[int, ...]
    cap: int

    def events_left(self, after_step: int) -> int:
        return sum(1 for s in self.steps if s > after_step)

    def cap_at(self, step: int, r_max: int) -> int:
        """The per-expert cap of the event at `step`: lifted at the last event, so that every layer can spend what
        is left of its budget (the experts with room may be fewer than the quota needs at `cap` each)."""
        return r_max if step == self.steps[-1] else self.cap


def plan_growth(config: LoraConfig, total_steps: int, warmup_steps: int) -> Plan:
    """Events at start, start + T, ... <= min(total - T, growth_end_ratio * total), with start = end of warmup;
    refuses a plan that cannot reach the budget. `static` with a saliency profile has one event, at start."""
    r_init, r_target, r_max = config.ranks
    start = max(warmup_steps, 1)
    if config.method == "static" and config.static_profile == "saliency":
        return Plan((start,), r_max) if start < total_steps else _too_short(total_steps, start)
    if config.method != "dr_lora" or r_target == r_init:
        return Plan((), 0)
    start = growth_start(warmup_steps)
    window_end = math.floor(config.growth_end_ratio * total_steps)
    steps = tuple(s for s in growth_steps(total_steps, warmup_steps, config.interval) if s <= window_end)
    cap = max(1, math.ceil(config.grow_frac * (r_max - r_init)))
    per_expert = r_target - r_init
    if len(steps) * cap < per_expert:
        needed = math.ceil(per_expert / cap)
        window = f" within growth_end_ratio={config.growth_end_ratio}" if config.growth_end_ratio < 1.0 else ""
        raise ConfigError(
            "growth_interval",
            f"{total_steps} steps with growth every {config.growth_interval} (from step {start}){window} give "
            f"{len(steps)} growth events, but reaching r_target={config.r_target} from r_init={config.r_init} "
            f"at most {cap} slices per expert per event needs at least {needed}; lower growth_interval (to at most "
            f"{max(1, (min(total_steps, window_end) - start) // (needed + 1))}), train more steps, "
            "or raise grow_frac",
        )
    return Plan(steps, cap)


def _too_short(total_steps: int, start: int) -> Plan:
    raise ConfigError("warmup_ratio", f"static_profile 'saliency' sets the ranks when warmup ends (step {start}), "
                                      f"but the run has {total_steps} steps; train longer or shorten the warmup")


def event_quota(ranks: list[int], r_target: int, events_left: int) -> int:
    """Slices this layer may add now: what is left of its budget, spread evenly over the remaining events."""
    remaining = len(ranks) * r_target - sum(ranks)
    return math.ceil(remaining / events_left) if events_left > 0 and remaining > 0 else 0


def allocate(saliency: list[float], ranks: list[int], quota: int, cap: int, r_max: int) -> list[int]:
    """New ranks: visit experts by descending saliency, each gets at most `cap` slices and never exceeds r_max."""
    new = list(ranks)
    order = sorted(range(len(ranks)), key=lambda e: (-saliency[e], e))
    for e in order:
        if quota <= 0:
            break
        add = min(cap, r_max - new[e], quota)
        new[e] += add
        quota -= add
    return new


@torch.no_grad()
def grow(bank: LoraBank, new_ranks: list[int], optimizer: torch.optim.Optimizer | None) -> None:
    """Activate slices [old, new) of each expert: fresh A rows, zero B columns, zero optimizer moments."""
    for e, (old, new) in enumerate(zip(bank.rank_list, new_ranks, strict=True)):
        if new <= old:
            continue
        for name in bank.projection_names:
            a, b = bank.lora_A[name], bank.lora_B[name]
            init_a_(a.data[e, old:new])
            b.data[e, :, old:new] = 0.0
            _zero_moments(optimizer, a, (e, slice(old, new)))
            _zero_moments(optimizer, b, (e, slice(None), slice(old, new)))
    bank.set_ranks(new_ranks)


def _zero_moments(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, index: tuple) -> None:  # type: ignore[type-arg]
    if optimizer is None:
        return
    for name, value in optimizer.state.get(param, {}).items():
        # the moments, and with per-slice steps (slice_adamw.py) the slice's age, broadcast over the other dims
        if isinstance(value, torch.Tensor) and (value.shape == param.shape or name == SLICE_STEP):
            value[index] = 0.0


def proportional_ranks(shares: list[float], total: int, lo: int, hi: int) -> list[int]:
    """Integer ranks proportional to `shares`, clamped to [lo, hi], summing exactly to `total` (static method)."""
    n = len(shares)
    if not n * lo <= total <= n * hi:
        raise ValueError(f"cannot give {n} experts {total} slices within [{lo}, {hi}] each")
    shares = [max(s, 0.0) for s in shares]
    if sum(shares) <= 0:
        shares = [1.0] * n

    def clamped(scale: float) -> list[float]:
        return [min(hi, max(lo, s * scale)) for s in shares]

    low, high = 0.0, total / min(s for s in shares if s > 0) + 1.0
    for _ in range(100):  # bisection on the scale whose clamped sum is the budget
        mid = (low + high) / 2
        if sum(clamped(mid)) < total:
            low = mid
        else:
            high = mid
    ideal = clamped(high)
    ranks = [min(hi, max(lo, math.floor(v))) for v in ideal]
    short = total - sum(ranks)
    by_remainder = sorted(range(n), key=lambda e: (-(ideal[e] - ranks[e]), -shares[e], e))
    for e in by_remainder * 2:
        if short <= 0:
            break
        if ranks[e] < hi:
            ranks[e] += 1
            short -= 1
    return ranks
