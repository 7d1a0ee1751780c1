"""`drlora estimate`: predicted peak memory by part and FLOPs per token of a `drlora train` run, without torch.

It takes `drlora train`'s flags (registered by `train_cmd.add_run_flags`) and resolves them into the same
`RunConfig`, so the shape it estimates is the one `train` would run; `--json` prints what the API's dry run answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from drlora_cli.train_cmd import add_run_flags, run_config


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("estimate", help="predict a training run's peak memory and FLOPs (no torch needed)",
                              description="Reads the model's config.json; takes the same flags as `train` "
                                          "(--out is not needed). --device auto means cuda when nvidia-smi is on "
                                          "PATH.")
    add_run_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (peak_bytes, parts, flops_per_token)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from drlora_core.assets import DEMO_MODEL_ID, demo_train_file, resolve_model_dir
    from drlora_core.config import ConfigError
    from drlora_core.estimate import device_kind, estimate, format_table, report, run_shape
    from drlora_core.model_facts import ModelFactsError, read_model_facts

    device = device_kind(args.device)
    train_file = args.train or (demo_train_file() if args.model == DEMO_MODEL_ID else None)
    try:
        facts = read_model_facts(resolve_model_dir(args.model))
        config = run_config(args, train_file)
        shape = run_shape(config, device)
    except (ModelFactsError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = estimate(facts, shape)
    if args.json:
        print(json.dumps(report(facts, shape, result)))
    else:
        print(f"{facts.model_type}: {facts.total_params / 1e9:.2f} B parameters, {facts.moe_layers} MoE layers x "
              f"{facts.experts} experts (top-{facts.top_k}); {shape.device}, {shape.dtype}, batch "
              f"{shape.batch_size} x {shape.seq_len}, r_max {shape.r_max}, checkpointing "
              f"{'on' if shape.gradient_checkpointing else 'off'}")
        print(format_table(result))
    return 0

