"""The speed benchmark: every variant on the same model, batch and sequence, in one process (BENCHMARKS.md).

`run_speed(settings)` returns a JSON-ready dict: the environment, the settings, per model every variant's figures
and the ratios, and top-level `ratios` holding the worst value of each ratio over the models run.
"""

from __future__ import annotations

import gc
import statistics
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from bench.flops import analytic_flops, executed_flops, peft_analytic_flops
from bench.hardware import environment
from bench.shapes import ModelSpec, Routing, ShapeSet, specs_for
from bench.timing import StepTimes, round_robin
from bench.variants import Variant, build_variants, train_step
from drlora_core.families import find_experts

GATES = {"dr_lora_over_lora": 1.10, "flops_dr_lora_over_lora_rmax": 1.01}
TIMING_GATES = ("dr_lora_over_lora",)
# indices into build_variants' list: lora@r_target, dr_lora, dr_lora+growth, peft, lora@r_max, base
TIMING_ORDER = (3, 1, 2, 5, 4, 0)


@dataclass(frozen=True)
class SpeedSettings:
    quick: bool = False
    shapes: ShapeSet = "tiny"
    families: tuple[str, ...] = ("qwen3_moe", "olmoe", "gpt_oss")
    routings: tuple[Routing, ...] = ("balanced", "zipf")
    device: str = "cpu"
    qwen_layers: int = 8
    seq_len: int | None = None
    warmup: int | None = None
    rounds: int | None = None
    growth_every: int | None = None
    threads: int | None = None
    retry_timing_gate: bool = True

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else (3 if self.quick else 5)

    @property
    def timed_rounds(self) -> int:
        return self.rounds if self.rounds is not None else (25 if self.quick else 40)

    @property
    def torch_threads(self) -> int | None:
        """Quick CPU runs use one thread: tiny models gain nothing from more, and one shares a busy machine best."""
        if self.threads is not None:
            return self.threads
        return 1 if self.quick and self.device == "cpu" else None

    @property
    def every(self) -> int:
        return self.growth_every if self.growth_every is not None else (5 if self.quick else 10)


def run_speed(settings: SpeedSettings) -> dict[str, Any]:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = torch.device(settings.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = environment(device)
    models = []
    for spec in specs_for(settings.shapes, settings.quick, settings.families, settings.routings,
                          settings.qwen_layers, settings.seq_len):
        result = measure_model(spec, settings, device, dtype, env["peak_flops"])
        if settings.retry_timing_gate and failed_gates(result["ratios"], TIMING_GATES):
            retry = measure_model(spec, settings, device, dtype, env["peak_flops"])
            retry["retried_after"] = {k: result["ratios"][k] for k in TIMING_GATES}
            result = retry
        models.append(result)
    return {"environment": env, "settings": asdict(settings), "gates": GATES, "models": models,
            "ratios": worst_ratios(models), "failed_gates": sorted({g for m in models for g in m["failed_gates"]})}


def measure_model(spec: ModelSpec, settings: SpeedSettings, device: torch.device, dtype: torch.dtype,
                  peak_flops: float | None) -> dict[str, Any]:
    variants, batch = build_variants(spec, device, dtype, settings.every)
    tokens = int(batch["attention_mask"].sum())
    flops = [executed_flops(partial(train_step, v, batch)) for v in variants]
    # timing order puts the pairs the ratios compare next to each other in every round
    order = TIMING_ORDER
    timed = round_robin([partial(train_step, variants[i], batch) for i in order], device,
                        settings.warmup_steps, settings.timed_rounds)
    times = [timed[order.index(i)] for i in range(len(variants))]
    rows = [_row(v, t, f, tokens, peak_flops, device) for v, t, f in zip(variants, times, flops, strict=True)]
    sites = find_experts(variants[0].model)
    top_k = _top_k(variants[0].model)
    for row, v in zip(rows, variants, strict=True):
        row["analytic_flops"] = _analytic(v, sites, tokens, top_k)
    ratios = compute_ratios(rows, variants, times, settings.every)
    result = {"model": spec.name, "routing": spec.routing, "batch": spec.batch, "seq_len": spec.seq_len,
              "tokens": tokens, "layers": len(sites), "experts": sites[0].num_experts, "top_k": top_k,
              "ranks": asdict(spec.ranks), "growth_every": settings.every,
              "growth_events": variants[2].growth.events if variants[2].growth else 0,
              "variants": rows, "ratios": ratios, "failed_gates": failed_gates(ratios, tuple(GATES))}
    del variants
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _row(v: Variant, t: StepTimes, flops: int, tokens: int, peak_flops: float | None,
         device: torch.device) -> dict[str, Any]:
    median = t.median
    row: dict[str, Any] = {
        "variant": v.name, "experts_impl": v.experts_impl, "lora_rank": v.lora_rank,
        "median_ms": 1e3 * median, "p25_ms": 1e3 * t.quantile(0.25), "p75_ms": 1e3 * t.quantile(0.75),
        "min_ms": 1e3 * min(t.seconds), "max_ms": 1e3 * max(t.seconds), "steps": len(t.seconds),
        "tokens_per_s": tokens / median, "executed_flops": flops,
        "trainable_params": sum(p.numel() for p in v.trainable()),
    }
    if v.growth is not None:
        row["median_event_ms"] = _ms(t.median_where(True))
        row["median_no_event_ms"] = _ms(t.median_where(False))
    if device.type == "cuda":
        row["peak_memory_bytes"] = _peak_memory(v, t)
        row["mfu"] = flops / median / peak_flops if peak_flops else None
    return row


def _peak_memory(v: Variant, t: StepTimes) -> int:
    """What this variant alone would hold at its peak: the shared frozen weights, its own trainable parameters
    and optimizer state, and the step's largest allocation above that (activations, gradients)."""
    model_bytes = sum(p.numel() * p.element_size() for p in v.model.parameters() if not p.requires_grad)
    own = sum(p.numel() * p.element_size() for p in v.trainable())
    if v.optimizer is not None:
        own += sum(s.numel() * s.element_size() for state in v.optimizer.state.values()
                   for s in state.values() if isinstance(s, torch.Tensor))
    return model_bytes + own + max(t.peak_bytes)


def _analytic(v: Variant, sites: list[Any], tokens: int, top_k: int) -> int:
    if v.name.startswith("peft@"):
        return peft_analytic_flops(sites, tokens, top_k, int(v.lora_rank)).total
    if v.adapter is None:
        return analytic_flops(sites, tokens, top_k, 0).total
    return analytic_flops(sites, tokens, top_k, [b.compute_rank for b in v.adapter.banks]).total


def compute_ratios(rows: list[dict[str, Any]], variants: list[Variant], times: list[StepTimes],
                   every: int) -> dict[str, float | None]:
    """Time ratios are medians of per-round ratios: the two steps of a round ran within milliseconds of each
    other, so a burst of load from other processes mostly hits both (BENCHMARKS.md's interleaving, paired)."""
    by = {r["variant"]: r for r in rows}
    t = {v.name: tt for v, tt in zip(variants, times, strict=True)}
    names = [v.name for v in variants]
    dr, grow, lora_t, lora_max, peft = "dr_lora", "dr_lora+growth", names[3], names[4], names[5]
    # amortised growth: one event step and (every - 1) bookkeeping-only steps per `every` steps
    events = t[grow].event_steps
    plain = paired_ratio(t[grow], t[dr], [not e for e in events])
    with_event = paired_ratio(t[grow], t[dr], events) if any(events) else plain
    ratios: dict[str, float | None] = {
        "dr_lora_over_lora": paired_ratio(t[dr], t[lora_t]),
        "dr_lora_growing_over_frozen": ((every - 1) * plain + with_event) / every,
        "dr_lora_over_peft": paired_ratio(t[dr], t[peft]),
        "flops_dr_lora_over_lora_rmax": by[dr]["executed_flops"] / by[lora_max]["executed_flops"],
        "dr_lora_over_base": paired_ratio(t[dr], t["base"]),
        "lora_over_peft": paired_ratio(t[lora_t], t[peft]),
        "flops_dr_lora_over_peft": by[dr]["executed_flops"] / by[peft]["executed_flops"],
        "growth_event_step_over_frozen": with_event,
    }
    if "peak_memory_bytes" in by[dr]:
        ratios["memory_dr_lora_over_peft"] = by[dr]["peak_memory_bytes"] / by[peft]["peak_memory_bytes"]
        ratios["mfu_dr_lora"] = by[dr]["mfu"]
    return ratios


def paired_ratio(a: StepTimes, b: StepTimes, rounds: list[bool] | None = None) -> float:
    chosen = rounds or [True] * len(a.seconds)
    return statistics.median(x / y for x, y, keep in zip(a.seconds, b.seconds, chosen, strict=True) if keep)


def worst_ratios(models: list[dict[str, Any]]) -> dict[str, float | None]:
    """Every ratio's largest value over the models (larger is worse for all of them but MFU: its smallest)."""
    keys = dict.fromkeys(k for m in models for k in m["ratios"])
    worst: dict[str, float | None] = {}
    for key in keys:
        values = [m["ratios"][key] for m in models if m["ratios"].get(key) is not None]
        worst[key] = (min(values) if key.startswith("mfu") else max(values)) if values else None
    return worst


def failed_gates(ratios: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if ratios.get(n) is not None and ratios[n] > GATES[n]]


def _top_k(model: torch.nn.Module) -> int:
    config: Any = model.config
    return int(getattr(config, "num_experts_per_tok", None) or config.top_k)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds
