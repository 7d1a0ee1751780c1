"""`drlora bench speed|quality`: the benchmarks of docs/benchmarks.md (they live in `bench/` of a source checkout)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="speed and quality benchmarks (docs/benchmarks.md)",
                              description="Run the speed or quality benchmark; print markdown, optionally write JSON.")
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    speed = sub.add_parser("speed", help="step time, tokens/s and FLOPs of dr_lora, lora, peft and the base model")
    speed.add_argument("--quick", action="store_true", help="the CI size: fewer timed steps, small batches")
    speed.add_argument("--json", type=Path, help="write every figure to this JSON file")
    speed.add_argument("--shapes", choices=("tiny", "small", "real"), default="tiny",
                       help="tiny models of several families (default), real expert counts at a quarter of the "
                            "width (CPU), or real shapes with random weights (OLMoE-1B-7B, Qwen3-30B-A3B; GPU)")
    speed.add_argument("--families", default="qwen3_moe,olmoe,gpt_oss", help="tiny families, comma-separated")
    speed.add_argument("--routing", default="balanced,zipf",
                       help="routing imposed on small/real shapes: balanced, zipf, model (comma-separated)")
    speed.add_argument("--device", default="cpu", help="cpu or cuda[:N]; on CUDA the models run in bf16")
    speed.add_argument("--qwen-layers", type=int, default=8, help="layers of the real Qwen3-30B-A3B shape (of 48)")
    speed.add_argument("--seq-len", type=int, help="sequence length of small/real shapes (128 / 2048)")
    speed.add_argument("--rounds", type=int, help="timed steps per variant (15 quick, 40 otherwise)")
    speed.add_argument("--warmup", type=int, help="untimed steps per variant first (3 quick, 5 otherwise)")
    speed.add_argument("--growth-every", type=int, help="steps between growth events (5 quick, 10 otherwise)")
    speed.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for --quick on CPU, else "
                                                   "torch's choice)")
    speed.add_argument("--check", action="store_true", help="exit 1 when a ratio gate fails (CI)")
    speed.set_defaults(handler=run_speed)

    quality = sub.add_parser("quality", help="method arms at one budget on the demand-vs-traffic task (or the demo "
                                             "task), seeds paired, 95%% intervals")
    quality.add_argument("--task", choices=("demand", "demo"), default="demand",
                         help="demand: rare demanding items among frequent easy ones (default); demo: the demo's "
                              "target task with dr_lora, lora and static")
    quality.add_argument("--quick", action="store_true", help="the CI size: checks only that the harness runs")
    quality.add_argument("--json", type=Path, help="write every figure to this JSON file")
    quality.add_argument("--out", type=Path, default=Path("runs/bench-quality"),
                         help="directory for the task files, runs.jsonl and the rank heatmaps (default "
                              "runs/bench-quality); a rerun continues the runs logged there")
    quality.add_argument("--seeds", type=int, help="seeds per arm (default 5)")
    quality.add_argument("--steps", type=int, help="optimizer steps per run (default: the harness's)")
    quality.add_argument("--arms", help="comma-separated arms (default: all of the task's)")
    quality.add_argument("--eval-limit", type=int, help="items to decode per test set (default: all)")
    quality.add_argument("--workers", type=int, help="runs in parallel, one process each (default 2)")
    quality.set_defaults(handler=run_quality)


def _import_bench() -> None:
    """`bench/` sits beside the installed packages in a source checkout but is not one of them."""
    try:
        import bench  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_speed(args: argparse.Namespace) -> int:
    _import_bench()
    from bench.report import speed_markdown
    from bench.speed import SpeedSettings, run_speed

    settings = SpeedSettings(
        quick=args.quick, shapes=args.shapes, families=tuple(_csv(args.families)),
        routings=tuple(_csv(args.routing)), device=args.device, qwen_layers=args.qwen_layers,  # type: ignore[arg-type]
        seq_len=args.seq_len, warmup=args.warmup, rounds=args.rounds, growth_every=args.growth_every,
        threads=args.threads)
    if settings.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda was asked for but no CUDA device is visible", file=sys.stderr)
            return 2
    result = run_speed(settings)
    print(speed_markdown(result))
    _write_json(args.json, result)
    return 1 if args.check and result["failed_gates"] else 0


def run_quality(args: argparse.Namespace) -> int:
    _import_bench()
    from bench.quality import DEMO_ARMS, QualitySettings, run_quality
    from bench.report import quality_markdown

    settings = QualitySettings.quick(args.out, args.task) if args.quick else QualitySettings(
        task=args.task, out_dir=args.out, **({"arms": DEMO_ARMS} if args.task == "demo" else {}))  # type: ignore[arg-type]
    given = {"seeds": args.seeds, "steps": args.steps, "eval_limit": args.eval_limit, "workers": args.workers,
             "arms": tuple(_csv(args.arms)) if args.arms else None}
    settings = replace(settings, **{k: v for k, v in given.items() if v is not None})
    result = run_quality(settings)
    print(quality_markdown(result))
    _write_json(args.json, result)
    return 0


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
