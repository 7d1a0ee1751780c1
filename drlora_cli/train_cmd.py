"""`drlora train`: one DR-LoRA run on this machine, without the service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SHADES = " .:-=+*#%@"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="fine-tune a local MoE model (or the bundled demo) with DR-LoRA",
                              description="Train per-expert LoRA with dynamic ranks and write a PEFT adapter.")
    p.add_argument("--model", default="drlora-demo-moe",
                   help="local Hugging Face model directory, or drlora-demo-moe (default)")
    p.add_argument("--train", type=Path, help="training JSONL (chat, prompt/completion or text); "
                                              "default: the demo dataset when --model is the demo")
    p.add_argument("--val", type=Path, help="validation JSONL (default: the demo validation set with the demo)")
    p.add_argument("--out", type=Path, required=True, help="output directory (checkpoints/, adapter/)")
    p.add_argument("--method", choices=("dr_lora", "lora", "static"), default="dr_lora")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int, help="optimizer steps (default 150 unless --epochs is given)")
    steps.add_argument("--epochs", type=int, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--r-init", type=int, default=4)
    p.add_argument("--r-target", type=int, default=8)
    p.add_argument("--r-max", type=int, default=16)
    p.add_argument("--growth-interval", type=int, default=20, help="optimizer steps between growth events")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--checkpoint-every", type=int, default=0, help="optimizer steps between checkpoints (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer's activations in the backward: less memory, ~1/3 more compute")
    p.add_argument("--merged", action="store_true", help="also write --out/merged: the base model with the "
                                                         "adapter merged into its weights")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from drlora_core.assets import DEMO_MODEL_ID, demo_train_file, demo_val_file
    from drlora_core.config import ConfigError, LoraConfig, RunConfig, TrainConfig
    from drlora_core.formats import DatasetError
    from drlora_core.run import train_run

    train_file, val_file = args.train, args.val
    if train_file is None:
        if args.model != DEMO_MODEL_ID:
            print("error: --train is required unless --model is drlora-demo-moe", file=sys.stderr)
            return 2
        train_file, val_file = demo_train_file(), val_file or demo_val_file()
    config = RunConfig(
        LoraConfig(method=args.method, r_init=args.r_init, r_target=args.r_target, r_max=args.r_max,
                   growth_interval=args.growth_interval),
        TrainConfig(max_steps=args.max_steps if args.epochs is None else None,
                    epochs=args.epochs or 1, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    device=args.device, max_seq_len=args.max_seq_len, checkpoint_every=args.checkpoint_every,
                    gradient_checkpointing=args.gradient_checkpointing),
    )
    if args.max_steps is None and args.epochs is None:
        config = RunConfig(config.lora, TrainConfig(**{**config.train.__dict__, "max_steps": 150}))
    progress = ProgressBar()
    try:
        result = train_run(args.model, train_file, args.out, config, val_file, [progress], not args.no_resume,
                           args.merged)
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        progress.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress.close()
    print(f"\n{result.status} at step {result.step}/{result.total_steps}; "
          f"{len(result.growth_events)} growth events")
    print(rank_summary(result.ranks, config.lora.r_max))
    if result.adapter_dir is not None:
        print(f"adapter: {result.adapter_dir}")
    if result.merged_dir is not None:
        print(f"merged model: {result.merged_dir}")
    return 0


class ProgressBar:
    """A tqdm bar fed by the trainer's callbacks."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.valid: float | None = None

    def on_start(self, total_steps: int, ranks: list[list[int]], start_step: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def on_step(self, m: Any) -> None:
        postfix = {"loss": f"{m.train_loss:.3f}", "lr": f"{m.learning_rate:.1e}", "tok/s": f"{m.tokens_per_second:.0f}"}
        if self.valid is not None:
            postfix["val"] = f"{self.valid:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def on_eval(self, step: int, valid_loss: float) -> None:
        self.valid = valid_loss
        if self.bar is not None:
            self.bar.write(f"step {step}: validation loss {valid_loss:.4f}")

    def on_growth(self, events: list[Any], stats: Any) -> None:
        if self.bar is not None:
            self.bar.write(f"step {events[0].step}: grew {len(events)} experts; mean rank per layer "
                           + " ".join(f"{sum(r) / len(r):.1f}" for r in stats.ranks))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def rank_summary(ranks: list[list[int]], r_max: int) -> str:
    """One line per layer: a shade per expert (darker = higher rank), then the ranks and their spread."""
    lines = [f"rank map ({len(ranks)} layers x {len(ranks[0])} experts; shade scale 0..{r_max}):"]
    for layer, row in enumerate(ranks):
        shades = "".join(SHADES[min(len(SHADES) - 1, round(r / r_max * (len(SHADES) - 1)))] for r in row)
        lines.append(f"  L{layer:<3}|{shades}|  {' '.join(map(str, row))}  (min {min(row)}, max {max(row)}, "
                     f"mean {sum(row) / len(row):.1f})")
    return "\n".join(lines)
