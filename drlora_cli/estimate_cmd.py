"""`drlora estimate`: predicted peak memory by part and FLOPs per token of a `drlora train` run, without torch."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("estimate", help="predict a training run's peak memory and FLOPs (no torch needed)",
                              description="Reads the model's config.json; takes the same shape flags as `train`.")
    p.add_argument("--model", default="drlora-demo-moe", help="local Hugging Face model directory, or the demo id")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--r-max", type=int, default=16)
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="compute dtype; auto: bf16 on CUDA, fp32 on CPU (as `train` chooses)")
    p.add_argument("--device", default="auto", help="auto (cuda when nvidia-smi is on PATH), cpu, cuda or cuda:N")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--train-router", action="store_true")
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--json", action="store_true", help="print one JSON object (peak_bytes, parts, flops_per_token)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from drlora_core.assets import resolve_model_dir
    from drlora_core.estimate import RunShape, estimate, format_table
    from drlora_core.model_facts import ModelFactsError, read_model_facts

    device = args.device
    if device == "auto":
        device = "cuda" if shutil.which("nvidia-smi") else "cpu"
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    try:
        facts = read_model_facts(resolve_model_dir(args.model))
        shape = RunShape(batch_size=args.batch_size, seq_len=args.max_seq_len, r_max=args.r_max, dtype=dtype,
                         gradient_checkpointing=args.gradient_checkpointing, device=device_type,
                         train_router=args.train_router, lora_dropout=args.lora_dropout)
    except (ModelFactsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = estimate(facts, shape)
    if args.json:
        print(json.dumps({**result.to_dict(), "model_type": facts.model_type, "total_params": facts.total_params,
                          "device": device_type, "dtype": dtype}))
    else:
        print(f"{facts.model_type}: {facts.total_params / 1e9:.2f} B parameters, {facts.moe_layers} MoE layers x "
              f"{facts.experts} experts (top-{facts.top_k}); {device_type}, {dtype}, batch {shape.batch_size} x "
              f"{shape.seq_len}, r_max {shape.r_max}, checkpointing {'on' if shape.gradient_checkpointing else 'off'}")
        print(format_table(result))
    return 0
