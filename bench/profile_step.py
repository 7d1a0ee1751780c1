"""Where a variant's step time goes: torch.profiler over a few steps, the top operators by self time.

    python -m bench.profile_step --shapes small --routing zipf --variants dr_lora,peft@16 --steps 3
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench.shapes import specs_for
from bench.variants import build_variants, train_step


def profile_variants(shapes: str, routing: str, names: list[str], steps: int, device: str, rows: int,
                     family: str = "qwen3_moe") -> dict[str, str]:
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    spec = specs_for(shapes, True, (family,), (routing,), 8, None)[0]  # type: ignore[arg-type]
    variants, batch = build_variants(spec, dev, dtype, growth_every=2)
    tables = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    for v in (v for v in variants if v.name in names):
        for _ in range(2):
            train_step(v, batch)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                train_step(v, batch)
        tables[v.name] = prof.key_averages().table(sort_by=sort, row_limit=rows)
    return tables


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small", choices=("tiny", "small", "real"))
    p.add_argument("--family", default="qwen3_moe", help="tiny family (with --shapes tiny)")
    p.add_argument("--routing", default="zipf")
    p.add_argument("--variants", default="dr_lora,lora@16,peft@16")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name, table in profile_variants(args.shapes, args.routing, args.variants.split(","), args.steps,
                                        args.device, args.rows, args.family).items():
        print(f"\n=== {name} ===\n{table}")


if __name__ == "__main__":
    main()
