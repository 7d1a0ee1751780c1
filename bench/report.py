"""Markdown tables from the benchmarks' JSON results."""

from __future__ import annotations

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
    base = result["before_finetuning"]
    lines = [
        f"Demo target task, {s['steps']} steps x batch {s['batch_size']}, lr {s['lr']}, budget r_target "
        f"{s['r_target']} (r_init {s['r_init']}, r_max {s['r_max']}, growth every {s['growth_interval']}), "
        f"{s['seeds']} seed(s); {result['seconds'] / 60:.1f} min on {result['environment']['device']}",
        "",
        "| method | held-out loss | exact match | rank vs routing (Spearman) | train s/run |",
        "|---|---|---|---|---|",
        f"| base model (no fine-tuning) | {base['val_loss']:.4f} | {base['exact_match']:.1%} | - | - |",
    ]
    for method, m in result["summary"].items():
        lines.append(f"| {method} | {_pm(m['val_loss'], '.4f')} | {_pm(m['exact_match'], '.1%')} | "
                     f"{_pm(m['rank_routing_spearman'], '.2f')} | {m['train_seconds']['mean']:.0f} |")
    lines += ["", "Per run:", "", "| method | seed | held-out loss | exact match | experts grown, summed over events |",
              "|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['method']} | {r['seed']} | {r['val_loss']:.4f} | {r['exact_match']:.1%} | "
                     f"{r['growth_events']} |")
    for name, c in result.get("analysis", {}).items():
        em, loss = c["exact_match"], c["val_loss"]
        lines += ["", f"{name}: exact match {100 * em['diff']:+.1f} ± {100 * em['standard_error']:.1f} points, "
                      f"held-out loss {loss['diff']:+.4f} ± {loss['standard_error']:.4f} (difference ± its standard "
                      f"error over seeds; {_verdict(em, loss)})"]
    if result.get("heatmap"):
        lines += ["", f"rank heatmaps: {result['heatmap']}"]
    return "\n".join(lines)


def _verdict(em: dict[str, Any], loss: dict[str, Any]) -> str:
    if not (em["beyond_two_se"] or loss["beyond_two_se"]):
        return "both within two standard errors: no detectable difference"
    better = (em["beyond_two_se"] and em["diff"] > 0) or (loss["beyond_two_se"] and loss["diff"] < 0)
    worse = (em["beyond_two_se"] and em["diff"] < 0) or (loss["beyond_two_se"] and loss["diff"] > 0)
    return "mixed" if better and worse else ("dr_lora better" if better else "dr_lora worse")


def _pm(stat: dict[str, Any], fmt: str) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{format(stat['mean'], fmt)} ± {format(stat['std'], fmt)}"
