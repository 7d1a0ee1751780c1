"""`drlora export`: rewrite a trained adapter in another layout, dtype or rank cap, or merge it into its base."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from drlora_core.export_options import DTYPES, LAYOUTS

SHOWN = 10


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export a trained adapter: PEFT layout, dtype, rank cap or merged model",
                              description="Write an adapter directory (or a `drlora train` output) as another "
                                          "PEFT layout, dtype or capped rank, or as a merged model.")
    p.add_argument("src", type=Path, help="adapter directory, or a `drlora train --out` directory (its adapter/)")
    p.add_argument("--out", type=Path, required=True, help="directory to write (replaced atomically)")
    p.add_argument("--layout", choices=LAYOUTS, default="fused",
                   help="fused: PEFT target_parameters; per_expert: one LoRA per expert under the checkpoint's "
                        "names; merged: the base model with the LoRA folded in (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: fp32 for adapters, the base "
                                                                  "checkpoint's dtype when merged (default: %(default)s)")
    p.add_argument("--max-rank", type=int, help="cap every expert's rank by truncated SVD; the errors are "
                                                "printed and kept in drlora_ranks.json")
    p.add_argument("--base-model-name", help="base_model_name_or_path to write in adapter_config.json")
    p.add_argument("--base-model-dir", type=Path,
                   help="with --layout merged: the base model's local directory (default: the base the adapter was "
                        "trained on, when it is the demo model or a local directory)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from drlora_core.adapter_files import RANKS_FILE, adapter_dir
    from drlora_core.export_options import ExportOptions
    from drlora_core.exporting import export_stored

    src = adapter_dir(args.src)
    try:
        options = ExportOptions(layout=args.layout, dtype=args.dtype, base_model_name_or_path=args.base_model_name,
                                max_rank=args.max_rank)
        base_dir = args.base_model_dir or (trained_base(src) if options.layout == "merged" else None)
        out = export_stored(src, args.out, options, base_model_dir=base_dir)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {src} -> {out} ({options.layout}, {options.dtype})")
    ranks_file = out / RANKS_FILE
    if options.max_rank is not None and ranks_file.is_file():
        print(cap_table(json.loads(ranks_file.read_text()).get("rank_cap") or {}))
    return 0


def trained_base(src: Path) -> Path:
    """The local directory of the base the adapter names (the demo id or a path), for a merge without
    --base-model-dir."""
    from drlora_core.adapter_files import CONFIG_FILE, RANKS_FILE
    from drlora_core.assets import resolve_model_dir

    recorded: dict[str, Any] = {}
    for name in (RANKS_FILE, CONFIG_FILE):
        if (src / name).is_file():
            recorded = {**json.loads((src / name).read_text()), **recorded}
    model = recorded.get("base_model") or recorded.get("base_model_name_or_path") or ""
    try:
        return resolve_model_dir(str(model))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"the adapter's base model: {err}; pass --base-model-dir") from None


def cap_table(report: dict[str, Any]) -> str:
    """The capped experts, largest error first (top 10, then a count of the rest)."""
    experts = sorted(report.get("experts", []), key=lambda c: -max(c["errors"].values()))
    if not experts:
        return f"rank cap {report.get('max_rank')}: no expert above it, nothing lost"
    errors = [max(c["errors"].values()) for c in experts]
    lines = [f"rank cap {report['max_rank']}: {len(experts)} experts capped; relative Frobenius error "
             f"max {max(errors):.4f}, mean {sum(errors) / len(errors):.4f}",
             f"{'layer':>5} {'expert':>6} {'rank':>4}  {'max error':>9}  per projection"]
    for c in experts[:SHOWN]:
        per = ", ".join(f"{name} {err:.4f}" for name, err in c["errors"].items())
        lines.append(f"{c['layer']:>5} {c['expert']:>6} {c['original_rank']:>4}  {max(c['errors'].values()):>9.4f}"
                     f"  {per}")
    if len(experts) > SHOWN:
        lines.append(f"... and {len(experts) - SHOWN} more (all in drlora_ranks.json)")
    return "\n".join(lines)
