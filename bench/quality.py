"""The quality benchmark (docs/benchmarks.md, 'Quality'): method arms at one budget, 5 seeds paired by seed.

`task="demand"` (the default) is the demand-vs-traffic task of `bench/demand_task.py`; `task="demo"` is the earlier
comparison on the demo's own target task (dr_lora, lora, static). Every run is set up and trained by the engine's own
`prepare_run` / `train_prepared` and keeps the adapted model in memory to decode its test sets. Runs are appended to
`<out>/runs.jsonl` as they finish, and a rerun with the same settings skips the runs already there, so an interrupted
benchmark continues where it stopped. The primary comparison is fixed here, before any run: dr_lora minus static
(frequency) in exact match on part B.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from bench.decode import exact_match, greedy_completions
from bench.demand_task import TaskFiles, read_rows, routing_by_part, train_rows_with_parts, write_task
from bench.paired import paired_interval
from drlora_core.assets import DEMO_MODEL_ID, demo_train_file, demo_val_file


@dataclass(frozen=True)
class Arm:
    """One method setting: a method and the LoraConfig / TrainConfig fields it changes from the defaults."""

    name: str
    method: str
    lora: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


# The arms, fixed before the first run. Option values are the ones a user would pick without seeing this task:
# the window ends at half the run; the router trains with the model's own balance coefficient.
ARMS = (
    Arm("lora@r_init", "lora", {"r_target": "r_init"}),
    Arm("lora@r_target", "lora"),
    Arm("lora@r_max", "lora", {"r_target": "r_max"}),
    Arm("static", "static"),
    Arm("static_fg", "static", {"static_profile": "saliency"}),
    Arm("dr_lora", "dr_lora"),
    Arm("dr_lora_window", "dr_lora", {"growth_end_ratio": 0.5}),
    Arm("dr_lora_f", "dr_lora", {"saliency_signal": "f"}),
    Arm("dr_lora_g", "dr_lora", {"saliency_signal": "g"}),
    Arm("dr_lora_router", "dr_lora", train={"train_router": True}),
    Arm("dr_lora_per_token", "dr_lora", {"saliency_signal": "g_per_token"}),
)
DEMO_ARMS = ("dr_lora", "lora@r_target", "static")
CORE_ARMS = ("lora@r_init", "lora@r_target", "lora@r_max", "static", "dr_lora")
PRIMARY = {"a": "dr_lora", "b": "static", "metric": "b"}
METRICS = ("b", "a", "macro")
BASELINES = ("lora@r_target", "static", "dr_lora")


@dataclass(frozen=True)
class QualitySettings:
    task: Literal["demand", "demo"] = "demand"
    seeds: int = 5
    arms: tuple[str, ...] = tuple(a.name for a in ARMS)
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    r_init: int = 4
    r_target: int = 8
    r_max: int = 16
    max_seq_len: int = 48
    eval_limit: int | None = None  # decode only the first N items of each test set
    workers: int = 2  # runs in parallel, one process and one thread each
    threads: int = 1
    out_dir: Path = Path("runs/bench-quality")  # /runs/ is git-ignored
    model: str = DEMO_MODEL_ID

    @classmethod
    def quick(cls, out_dir: Path, task: Literal["demand", "demo"] = "demand") -> QualitySettings:
        """The CI size: only checks that the harness runs every arm (two seeds, so intervals exist)."""
        arms = DEMO_ARMS if task == "demo" else tuple(a.name for a in ARMS)
        return cls(task=task, seeds=2, arms=arms, steps=8, eval_limit=16, workers=1, out_dir=out_dir)


def run_quality(settings: QualitySettings) -> dict[str, Any]:
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    files = _task_files(settings)
    profile = routing_profile(settings, files)
    done = _finished_runs(settings)
    # The primary comparison and the premise first, all seeds; then the other arms: a stopped run leaves
    # complete seeds for the arms that matter most.
    order = sorted(settings.arms, key=lambda arm: arm not in CORE_ARMS)
    groups = [[a for a in order if a in CORE_ARMS], [a for a in order if a not in CORE_ARMS]]
    jobs = [(settings, arm, seed, files) for group in groups for seed in range(settings.seeds) for arm in group
            if (arm, seed) not in done]
    log = settings.out_dir / "runs.jsonl"
    with log.open("a") as out:
        for run in _map(jobs, settings.workers):
            out.write(json.dumps(run) + "\n")
            out.flush()
            done[(run["arm"], run["seed"])] = run
            print(f"{run['arm']} seed {run['seed']}: B {run['b']:.1%} A {run['a']:.1%} ({run['seconds']:.0f}s)",
                  file=sys.stderr, flush=True)
    runs = [done[(arm, seed)] for seed in range(settings.seeds) for arm in settings.arms]
    result = {"settings": _jsonable(asdict(settings)), "primary": PRIMARY, "routing": profile, "runs": runs,
              "summary": summarise(runs, settings.arms), "comparisons": compare(runs, settings),
              "premise": premise(runs, settings), "seconds": time.perf_counter() - started,
              "environment": _environment()}
    try:
        from bench.plots import rank_heatmaps

        result["heatmap"] = str(rank_heatmaps(result, settings.out_dir / "rank_heatmaps.png"))
    except ImportError:  # matplotlib is optional: the numbers stand without the picture
        result["heatmap"] = None
    return result


def _task_files(settings: QualitySettings) -> TaskFiles:
    if settings.task == "demo":
        return TaskFiles(demo_train_file(), demo_train_file(), demo_val_file(), demo_val_file())
    return write_task(settings.out_dir / "task")


def _finished_runs(settings: QualitySettings) -> dict[tuple[str, int], dict[str, Any]]:
    """Runs already in runs.jsonl with these settings (a rerun continues an interrupted benchmark)."""
    log = settings.out_dir / "runs.jsonl"
    key = _fingerprint(settings)
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return {(r["arm"], r["seed"]): r for r in runs if r.get("settings") == key}


def _fingerprint(settings: QualitySettings) -> dict[str, Any]:
    keep = ("task", "steps", "batch_size", "lr", "r_init", "r_target", "r_max", "max_seq_len", "eval_limit", "model")
    return {k: _jsonable(getattr(settings, k)) for k in keep}


def _map(jobs: list[tuple[Any, ...]], workers: int) -> Any:
    if workers <= 1 or len(jobs) <= 1:
        return (_job(job) for job in jobs)
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), maxtasksperchild=4)
    return pool.imap_unordered(_job, jobs)


def _job(job: tuple[Any, ...]) -> dict[str, Any]:
    settings, arm, seed, files = job
    torch.set_num_threads(settings.threads)
    return one_run(settings, arm_named(arm), seed, files)


def arm_named(name: str) -> Arm:
    return next(a for a in ARMS if a.name == name)


def run_config(settings: QualitySettings, arm: Arm, seed: int) -> Any:
    from drlora_core.autoconfig import growth_interval
    from drlora_core.config import LoraConfig, RunConfig, TrainConfig

    named = {"r_init": settings.r_init, "r_target": settings.r_target, "r_max": settings.r_max}
    lora: dict[str, Any] = {k: named.get(v, v) if isinstance(v, str) else v for k, v in arm.lora.items()}
    train = TrainConfig(max_steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=seed,
                        device="cpu", max_seq_len=settings.max_seq_len, gradient_checkpointing=False, **arm.train)
    window = lora.get("growth_end_ratio", 1.0)
    if arm.method == "lora":
        config = LoraConfig(method="lora", r_target=lora.pop("r_target", settings.r_target), growth_interval=1, **lora)
    else:
        config = LoraConfig(method=arm.method, r_init=settings.r_init, r_target=settings.r_target,  # type: ignore[arg-type]
                            r_max=settings.r_max, growth_interval=growth_interval(settings.steps, train.warmup_ratio,
                                                                                  window), **lora)
    return RunConfig(config, train)


def one_run(settings: QualitySettings, arm: Arm, seed: int, files: TaskFiles) -> dict[str, Any]:
    from drlora_core.run import prepare_run, train_prepared

    started = time.perf_counter()
    config = run_config(settings, arm, seed)
    run = prepare_run(settings.model, files.train, config)
    result = train_prepared(run, settings.out_dir / "runs" / f"{arm.name}-seed{seed}")
    scores = {part: accuracy(run.model, run.tokenizer, path, settings.eval_limit)
              for part, path in (("a", files.test_a), ("b", files.test_b))}
    return {"arm": arm.name, "seed": seed, **scores, "macro": (scores["a"] + scores["b"]) / 2,
            "ranks": result.ranks, "growth_events": len(result.growth_events),
            "last_growth_step": max((e.step for e in result.growth_events), default=None),
            "growth_interval": config.lora.growth_interval, "seconds": time.perf_counter() - started,
            "settings": _fingerprint(settings)}


def accuracy(model: torch.nn.Module, tokenizer: Any, path: Path, limit: int | None) -> float:
    rows = read_rows(path)[:limit] if limit else read_rows(path)
    longest = max(len(tokenizer(r["completion"])["input_ids"]) for r in rows)
    predictions = greedy_completions(model, tokenizer, [r["prompt"] for r in rows], longest + 1)
    return exact_match(predictions, [r["completion"] for r in rows])


def routing_profile(settings: QualitySettings, files: TaskFiles) -> dict[str, Any] | None:
    """How the base model routes part A and part B of the training data (None for the demo task)."""
    if settings.task == "demo":
        return None
    from drlora_core.run import load_base

    model, tokenizer, _ = load_base(settings.model, torch.device("cpu"))
    rows = train_rows_with_parts(files)
    return routing_by_part(model, tokenizer, rows)


def summarise(runs: list[dict[str, Any]], arms: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        out[arm] = {m: {"mean": statistics.fmean(r[m] for r in mine),
                        "std": statistics.stdev(r[m] for r in mine) if len(mine) > 1 else 0.0} for m in METRICS}
    return out


def compare(runs: list[dict[str, Any]], settings: QualitySettings) -> dict[str, Any]:
    """Every arm minus each baseline arm, paired by seed, per metric; the primary comparison first."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    seeds = range(settings.seeds)

    def diff(a: str, b: str, metric: str) -> dict[str, Any]:
        return paired_interval([by[(a, s)][metric] for s in seeds], [by[(b, s)][metric] for s in seeds])

    out: dict[str, Any] = {}
    if PRIMARY["a"] in settings.arms and PRIMARY["b"] in settings.arms:
        out["primary"] = {"a": PRIMARY["a"], "b": PRIMARY["b"], "metric": PRIMARY["metric"],
                          **diff(PRIMARY["a"], PRIMARY["b"], PRIMARY["metric"])}
    for base in (b for b in BASELINES if b in settings.arms):
        out[f"vs_{base}"] = {arm: {m: diff(arm, base, m) for m in METRICS} for arm in settings.arms if arm != base}
    return out


def premise(runs: list[dict[str, Any]], settings: QualitySettings) -> dict[str, Any]:
    """What uniform LoRA gains from rank on each part: r_max minus r_init, and r_target minus r_init."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    seeds = range(settings.seeds)
    if not {"lora@r_init", "lora@r_target", "lora@r_max"} <= set(settings.arms):
        return {}
    out: dict[str, Any] = {}
    for high in ("lora@r_target", "lora@r_max"):
        for metric in ("b", "a"):
            out[f"{high}_minus_lora@r_init_{metric}"] = paired_interval(
                [by[(high, s)][metric] for s in seeds], [by[("lora@r_init", s)][metric] for s in seeds])
    gain_b = [by[("lora@r_max", s)]["b"] - by[("lora@r_init", s)]["b"] for s in seeds]
    gain_a = [by[("lora@r_max", s)]["a"] - by[("lora@r_init", s)]["a"] for s in seeds]
    out["b_gain_minus_a_gain"] = paired_interval(gain_b, gain_a)
    return out


def _environment() -> dict[str, Any]:
    from bench.hardware import environment

    return environment(torch.device("cpu"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


__all__ = ["ARMS", "Arm", "QualitySettings", "replace", "run_quality"]
