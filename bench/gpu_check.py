"""The GPU check's training part: a real-width run on one CUDA device, its peak memory against the estimate, and the
PEFT round trip. `scripts/gpu_check.sh` runs it after the real-shape speed benchmark, then `report` writes one JSON
and one markdown table.

  python -m bench.gpu_check train OUT [--layers 2 --batch-size 4 --seq-len 2048 --steps 6]
  python -m bench.gpu_check report OUT
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

GIB = 2**30


def train_check(out: Path, layers: int, batch_size: int, seq_len: int, steps: int, device: str) -> dict[str, Any]:
    import torch

    from bench.realshape import save_olmoe_width, write_long_text
    from drlora_core.config import LoraConfig, RunConfig, TrainConfig
    from drlora_core.estimate import RunShape, estimate
    from drlora_core.model_facts import read_model_facts
    from drlora_core.run import train_run

    model_dir = save_olmoe_width(out / "model", layers=layers, dtype="bfloat16")
    data = write_long_text(out / "train.jsonl", records=batch_size * steps, words=4 * seq_len)
    config = RunConfig(
        LoraConfig(r_init=8, r_target=16, r_max=32, growth_interval=1),
        TrainConfig(max_steps=steps, batch_size=batch_size, lr=2e-5, max_seq_len=seq_len, device=device,
                    dtype="bf16", gradient_checkpointing=True, warmup_ratio=0.0),
    )
    torch.cuda.reset_peak_memory_stats()
    result = train_run(str(model_dir), data, out / "run", config, resume=False, merged=True)
    measured = torch.cuda.max_memory_allocated()
    shape = RunShape(batch_size=batch_size, seq_len=seq_len, r_max=32, dtype="bf16", gradient_checkpointing=True,
                     device="cuda", lora_dropout=config.lora.dropout)
    predicted = estimate(read_model_facts(model_dir), shape)
    return {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
        "model": f"olmoe-1b-7b widths, {layers} layers", "batch_size": batch_size, "seq_len": seq_len,
        "steps": result.step, "status": result.status, "ranks_per_layer": [sum(r) for r in result.ranks],
        "measured_max_allocated_bytes": measured, "estimated_device_bytes": predicted.device_bytes,
        "estimate_error": predicted.device_bytes / measured - 1, "estimate_parts": predicted.parts,
        "peft_round_trip_max_abs_diff": peft_round_trip(model_dir, out / "run"),
    }


def peft_round_trip(model_dir: Path, run_dir: Path) -> float:
    """Largest logit difference between PEFT applying the exported adapter and drlora's merged weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 1000, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    kwargs: dict[str, Any] = {"dtype": torch.float32, "device_map": "cuda", "local_files_only": True}
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged", **kwargs)
        want = merged(input_ids=ids).logits
        del merged
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, **kwargs), run_dir / "adapter")
        got = peft(input_ids=ids).logits
    return float((got - want).abs().max())


def report(out: Path) -> tuple[Path, Path]:
    speed = json.loads((out / "speed.json").read_text()) if (out / "speed.json").exists() else {}
    train = json.loads((out / "train.json").read_text())
    combined = {"train": train, "speed": speed}
    json_path = out / "gpu_check.json"
    json_path.write_text(json.dumps(combined, indent=2))
    lines = [f"# GPU check on {train['device']} (torch {train['torch']})", "",
             "| check | figure |", "|---|---|",
             f"| real-width training ({train['model']}, batch {train['batch_size']} x {train['seq_len']}, "
             f"checkpointing) | {train['status']} at step {train['steps']} |",
             f"| max_memory_allocated | {train['measured_max_allocated_bytes'] / GIB:.2f} GiB |",
             f"| estimate (device part) | {train['estimated_device_bytes'] / GIB:.2f} GiB "
             f"({train['estimate_error']:+.1%}) |",
             f"| PEFT round trip, max abs logit diff vs merged | {train['peft_round_trip_max_abs_diff']:.2e} |"]
    if speed:
        from bench.report import speed_markdown

        lines += ["", speed_markdown(speed)]
    md_path = out / "gpu_check.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("out", type=Path)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--seq-len", type=int, default=2048)
    t.add_argument("--steps", type=int, default=6)
    t.add_argument("--device", default="cuda")
    r = sub.add_parser("report")
    r.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "train":
        figures = train_check(args.out, args.layers, args.batch_size, args.seq_len, args.steps, args.device)
        (args.out / "train.json").write_text(json.dumps(figures, indent=2))
        print(json.dumps({k: v for k, v in figures.items() if k != "estimate_parts"}))
    else:
        for path in report(args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
