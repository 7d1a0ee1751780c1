"""The quality benchmark (BENCHMARKS.md, 'Quality'): dr_lora, lora and static at the same budget on the demo
model's target task, several seeds each; held-out loss, exact-match accuracy, final rank maps, and how the ranks
line up with the experts the target task routes to.

Each run is set up and trained by the engine's own `prepare_run` / `train_prepared` (what `train_run` does), but
keeps the adapted model in memory so its completions can be decoded without an export and reload.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.decode import exact_match, greedy_completions
from drlora_core.assets import DEMO_MODEL_ID, demo_model_dir, demo_train_file, demo_val_file

ROUTING_PROFILE = "routing_profile.json"


@dataclass(frozen=True)
class QualitySettings:
    seeds: int = 3
    methods: tuple[str, ...] = ("dr_lora", "lora", "static")
    # Sized for a few minutes on one CPU core (9 runs). On the rebuilt demo task a rank-8 LoRA reaches ~90 %
    # exact match in about 300 steps of batch 16 at lr 2e-3, so longer runs would only saturate every method.
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    r_init: int = 4
    r_target: int = 8
    r_max: int = 16
    growth_interval: int = 15  # ~19 events: the paper's T / total steps (200 / 3750) at this length
    max_seq_len: int = 64
    max_new_tokens: int = 8
    eval_limit: int | None = None  # decode only the first N held-out examples
    threads: int | None = 1  # the demo model is too small to gain from more; one thread shares a busy machine best
    out_dir: Path = Path("runs/bench-quality")  # /runs/ is git-ignored
    model: str = DEMO_MODEL_ID
    train_file: Path = field(default_factory=demo_train_file)
    val_file: Path = field(default_factory=demo_val_file)


def run_quality(settings: QualitySettings) -> dict[str, Any]:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    profile = target_routing(settings.model)
    baseline = evaluate_base(settings)
    runs = []
    for seed in range(settings.seeds):
        for method in settings.methods:
            runs.append(one_run(settings, method, seed, profile))
            r = runs[-1]
            print(f"{method} seed {seed}: held-out loss {r['val_loss']:.4f}, exact match {r['exact_match']:.1%} "
                  f"({r['seconds']:.0f}s)", file=sys.stderr, flush=True)
    summary = {m: summarise([r for r in runs if r["method"] == m]) for m in settings.methods}
    result = {"settings": _jsonable(asdict(settings)), "before_finetuning": baseline, "runs": runs,
              "summary": summary, "target_routing_share": profile, "seconds": time.perf_counter() - started,
              "environment": _environment()}
    result["analysis"] = compare(summary)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        from bench.plots import rank_heatmaps

        result["heatmap"] = str(rank_heatmaps(result, settings.out_dir / "rank_heatmaps.png"))
    except ImportError:  # matplotlib is optional: the numbers stand without the picture
        result["heatmap"] = None
    return result


def one_run(settings: QualitySettings, method: str, seed: int, profile: list[list[float]] | None) -> dict[str, Any]:
    from drlora_core.callbacks import Hooks
    from drlora_core.config import LoraConfig, RunConfig, TrainConfig
    from drlora_core.run import prepare_run, train_prepared

    config = RunConfig(
        LoraConfig(method=method, r_init=settings.r_init, r_target=settings.r_target,  # type: ignore[arg-type]
                   r_max=settings.r_max, growth_interval=settings.growth_interval),
        TrainConfig(max_steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=seed,
                    device="cpu", max_seq_len=settings.max_seq_len))
    started = time.perf_counter()
    run = prepare_run(settings.model, settings.train_file, config, settings.val_file)
    val_losses: list[float] = []
    train_losses: list[float] = []
    hooks = Hooks(eval=lambda step, loss: val_losses.append(loss), step=lambda m: train_losses.append(m.train_loss))
    result = train_prepared(run, settings.out_dir / f"{method}-seed{seed}", [hooks])
    train_seconds = time.perf_counter() - started
    accuracy = held_out_accuracy(run.model, run.tokenizer, settings)
    return {"method": method, "seed": seed, "val_loss": val_losses[-1] if val_losses else None,
            "exact_match": accuracy, "final_train_loss": train_losses[-1] if train_losses else None,
            "ranks": result.ranks, "growth_events": len(result.growth_events),
            "rank_routing_spearman": rank_alignment(result.ranks, profile),
            "train_seconds": train_seconds, "seconds": time.perf_counter() - started}


def evaluate_base(settings: QualitySettings) -> dict[str, Any]:
    """The base model on the same held-out set: what fine-tuning starts from."""
    from drlora_core.run import load_base, load_batches
    from drlora_core.trainer import token_loss

    model, tokenizer, _ = load_base(settings.model, torch.device("cpu"))
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in load_batches(settings.val_file, tokenizer, settings.max_seq_len, 64):
            total += float(token_loss(model, batch))
            count += int((batch["labels"][:, 1:] != -100).sum())
    return {"val_loss": total / max(count, 1), "exact_match": held_out_accuracy(model, tokenizer, settings)}


def held_out_accuracy(model: torch.nn.Module, tokenizer: Any, settings: QualitySettings) -> float:
    rows = [json.loads(line) for line in settings.val_file.read_text().splitlines() if line.strip()]
    rows = rows[:settings.eval_limit] if settings.eval_limit else rows
    predictions = greedy_completions(model, tokenizer, [r["prompt"] for r in rows], settings.max_new_tokens)
    return exact_match(predictions, [r["completion"] for r in rows])


def target_routing(model: str) -> list[list[float]] | None:
    """Per layer, the share of the target task's top-k assignments each expert gets (the demo's profile)."""
    path = demo_model_dir() / ROUTING_PROFILE if model == DEMO_MODEL_ID else Path(model) / ROUTING_PROFILE
    if not path.is_file():
        return None
    share = json.loads(path.read_text()).get("share", {})
    return share.get("target_task")


def rank_alignment(ranks: list[list[int]], share: list[list[float]] | None) -> float | None:
    """Mean over layers of the Spearman correlation between an expert's final rank and its target routing share;
    None where ranks are uniform (lora) or no profile exists."""
    if share is None:
        return None
    values = [c for r, s in zip(ranks, share, strict=True) if (c := spearman(r, s)) is not None]
    return statistics.fmean(values) if values else None


def spearman(x: list[int] | list[float], y: list[float]) -> float | None:
    rx, ry = _ranks(x), _ranks(y)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return None
    return statistics.correlation(rx, ry)


def _ranks(values: list[int] | list[float]) -> list[float]:
    """Average ranks (ties share their mean rank)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for key in ("val_loss", "exact_match", "rank_routing_spearman", "train_seconds"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = {"mean": statistics.fmean(values) if values else None,
                    "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)}
    return out


def compare(summary: dict[str, Any]) -> dict[str, Any]:
    """dr_lora minus each baseline, with the standard error of that difference over the seeds: with 3 seeds a
    difference under two standard errors is not evidence of anything."""
    if "dr_lora" not in summary:
        return {}
    dr = summary["dr_lora"]
    out = {}
    for other in (m for m in summary if m != "dr_lora"):
        o = summary[other]
        entry: dict[str, Any] = {}
        for key in ("exact_match", "val_loss"):
            diff = dr[key]["mean"] - o[key]["mean"]
            se = math.sqrt(((dr[key]["std"] or 0.0) ** 2) / dr["runs"] + ((o[key]["std"] or 0.0) ** 2) / o["runs"])
            entry[key] = {"diff": diff, "standard_error": se, "beyond_two_se": abs(diff) > 2 * se}
        out[f"dr_lora_vs_{other}"] = entry
    return out


def _environment() -> dict[str, Any]:
    from bench.hardware import environment

    return environment(torch.device("cpu"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
