"""Markdown tables from the benchmarks' JSON results."""

from __future__ import annotations

import statistics
from typing import Any

RATIO_LABELS: tuple[tuple[str, str, str], ...] = (
    ("dr_lora_over_lora", "dr_lora step / lora@r_target step", "<= 1.10 (CPU gate)"),
    ("dr_lora_growing_over_frozen", "dr_lora with growth (amortised) / frozen", "<= 1.10"),
    ("flops_dr_lora_over_lora_rmax", "dr_lora executed FLOPs / lora@r_max", "<= 1.01 (gate)"),
    ("dr_lora_over_peft", "dr_lora step / peft@r_target step", "report (GPU: <= 0.80)"),
    ("lora_over_peft", "lora@r_target step / peft@r_target step", "report"),
    ("flops_dr_lora_over_peft", "dr_lora executed FLOPs / peft@r_target", "report"),
    ("dr_lora_over_base", "dr_lora step / base step", "report"),
    ("memory_dr_lora_over_peft", "dr_lora peak memory / peft@r_target", "<= 0.90 (GPU)"),
    ("mfu_dr_lora", "dr_lora model FLOPs utilisation", ">= 0.20 (GPU)"),
)


def speed_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"Device: {env['device']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), ""]
    for model in result["models"]:
        lines += [*_model_table(model), ""]
    lines += ["Ratios, worst over the models above:", "", "| ratio | value | goal |", "|---|---|---|"]
    for key, label, goal in RATIO_LABELS:
        value = result["ratios"].get(key)
        if value is not None:
            lines.append(f"| {label} | {value:.3f} | {goal} |")
    failed = result.get("failed_gates") or []
    lines += ["", f"Gates: {'FAILED ' + ', '.join(failed) if failed else 'passed'}"]
    return "\n".join(lines)


def _model_table(model: dict[str, Any]) -> list[str]:
    r = model["ranks"]
    gpu = "peak_memory_bytes" in model["variants"][0]
    head = (f"**{model['model']}**: {model['layers']} MoE layers x {model['experts']} experts, top-{model['top_k']}; "
            f"batch {model['batch']} x seq {model['seq_len']} = {model['tokens']} tokens; ranks r_init {r['r_init']}, "
            f"r_target {r['r_target']}, r_max {r['r_max']}; growth event every {model['growth_every']} steps"
            + (" (retried: first try was over the gate)" if "retried_after" in model else ""))
    cols = ["variant", "experts impl", "LoRA rank", "step ms (median)", "p25-p75 ms", "tokens/s",
            "executed GFLOP", "analytic experts+LoRA GFLOP"] + (["peak GiB", "MFU"] if gpu else [])
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for v in model["variants"]:
        cells = [v["variant"], v["experts_impl"], v["lora_rank"], f"{v['median_ms']:.2f}",
                 f"{v['p25_ms']:.2f}-{v['p75_ms']:.2f}", f"{v['tokens_per_s']:,.0f}",
                 f"{v['executed_flops'] / 1e9:.4g}", f"{v['analytic_flops'] / 1e9:.4g}"]
        if gpu:
            mfu = v.get("mfu")
            cells += [f"{v['peak_memory_bytes'] / 2**30:.2f}", f"{mfu:.1%}" if mfu is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = model["ratios"]
    lines += ["", "ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items() if v is not None)]
    return lines


def quality_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    demo = s["task"] == "demo"
    metrics = ("b",) if demo else ("b", "a", "macro")
    names = {"b": "exact match" if demo else "B exact match", "a": "A exact match", "macro": "macro"}
    lines = [f"{s['task']} task, {s['steps']} steps x batch {s['batch_size']}, lr {s['lr']}, budget r_target "
             f"{s['r_target']} (r_init {s['r_init']}, r_max {s['r_max']}), {s['seeds']} seeds paired by seed; "
             f"{result['seconds'] / 60:.1f} min on {result['environment']['device']}", ""]
    if result.get("routing"):
        r = result["routing"]
        lines += [f"Routing of the training data by the base model: part B is {r['b_token_share']:.1%} of the routed "
                  "tokens; per layer, the experts taking half of B's assignments ("
                  + "; ".join(f"L{i}: {e}" for i, e in enumerate(r["b_experts"])) + ") receive "
                  + ", ".join(f"{v:.1%}" for v in r["b_experts_traffic_share"]) + " of all assignments.", ""]
    hot = result["routing"]["b_experts"] if result.get("routing") else None
    rank_cols = " | mean rank: B's experts / the others" if hot else ""
    lines += ["| arm | " + " | ".join(names[m] for m in metrics) + f"{rank_cols} | growth events | s/run |",
              "|---|" + "---|" * len(metrics) + ("---|" if hot else "") + "---|---|"]
    for arm, m in result["summary"].items():
        runs = [r for r in result["runs"] if r["arm"] == arm]
        ranks = f" | {_ranks_on(runs, hot)}" if hot else ""
        lines.append(f"| {arm} | " + " | ".join(f"{100 * m[k]['mean']:.1f} ± {100 * m[k]['std']:.1f}" for k in metrics)
                     + f"{ranks} | {runs[0]['growth_events']} | {statistics.fmean(r['seconds'] for r in runs):.0f} |")
    c = result["comparisons"]
    if "primary" in c:
        p = c["primary"]
        lines += ["", f"**Primary (fixed before running): {p['a']} minus {p['b']}, {names[p['metric']]}: "
                      f"{_interval(p)}**"]
    if result.get("premise"):
        lines += ["", "Premise, uniform LoRA (paired differences, points):", ""]
        lines += [f"- {name}: {_interval(iv)}" for name, iv in result["premise"].items()]
    for base, table in ((k, v) for k, v in c.items() if k.startswith("vs_")):
        lines += ["", f"Paired differences {base.replace('vs_', 'minus ')} (points, 95 % t-interval over seeds; "
                      "* = interval excludes 0):", "", "| arm | " + " | ".join(names[m] for m in metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for arm, by_metric in table.items():
            lines.append(f"| {arm} | " + " | ".join(_interval(by_metric[m]) for m in metrics) + " |")
    lines += ["", "Per seed (" + ", ".join(names[m] for m in metrics) + "):", ""]
    for arm in result["summary"]:
        runs = sorted((r for r in result["runs"] if r["arm"] == arm), key=lambda r: r["seed"])
        lines.append(f"- {arm}: " + "; ".join("/".join(f"{100 * r[m]:.1f}" for m in metrics) for r in runs))
    if result.get("heatmap"):
        lines += ["", f"rank heatmaps: {result['heatmap']}"]
    return "\n".join(lines)


def _ranks_on(runs: list[dict[str, Any]], hot: list[list[int]]) -> str:
    """Mean final rank (over seeds) of the experts taking half of part B's assignments, and of every other expert."""
    on = [r["ranks"][layer][e] for r in runs for layer, chosen in enumerate(hot) for e in chosen]
    off = [rank for r in runs for layer, row in enumerate(r["ranks"]) for e, rank in enumerate(row)
           if e not in hot[layer]]
    return f"{statistics.fmean(on):.1f} / {statistics.fmean(off):.1f}"


def _interval(iv: dict[str, Any]) -> str:
    if iv["low"] is None:
        return f"{100 * iv['mean']:+.1f} (one seed: no interval)"
    return (f"{100 * iv['mean']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]"
            + ("*" if iv["significant"] else ""))


def _pm(stat: dict[str, Any], fmt: str) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{format(stat['mean'], fmt)} ± {format(stat['std'], fmt)}"
